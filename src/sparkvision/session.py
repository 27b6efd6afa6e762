"""The one place that builds a SparkSession for sparkvision.

Embedded ``local[*]`` by default; a real cluster through ``master`` (CLI ``--master`` or
``SPARKVISION_MASTER``) plus any ``--conf key=value``; a Spark Connect server through
``remote`` (CLI ``--remote sc://host:port`` or ``SPARK_REMOTE``). Python workers are pointed at the
interpreter running the driver, because a venv's packages (pyarrow, onnxruntime, torch)
are not importable from the system Python that Spark would otherwise start.

Over Connect there is no SparkContext on the client: :func:`is_connect` tells the few
places that need one (broadcasts, accumulators, Hadoop's FileSystem, the status tracker)
to take their Connect path, and :func:`default_parallelism` stands in for
``sparkContext.defaultParallelism``.
"""

from __future__ import annotations

import logging
import os
import sys
from importlib import resources

from pyspark.sql import SparkSession

from sparkvision.config import SparkSettings

log = logging.getLogger(__name__)


def _prepare_environment() -> None:
    """Environment that must be set before the JVM starts."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    # Java decodes file names with the locale's charset; under the C locale every
    # non-ASCII name would turn into '?' and could not be opened again.
    if "UTF-8" not in os.environ.get("LC_ALL", "").upper().replace("UTF8", "UTF-8"):
        os.environ["LC_ALL"] = "C.UTF-8"
    os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")


def _log4j_conf() -> str:
    return str(resources.files("sparkvision.resources").joinpath("log4j2.properties"))


def build_conf(settings: SparkSettings) -> dict[str, str]:
    """The Spark configuration sparkvision uses, user ``conf`` entries winning."""
    java_opts = f"-Dlog4j2.configurationFile=file:{_log4j_conf()} -Dfile.encoding=UTF-8 -Dsun.jnu.encoding=UTF-8"
    conf = {
        "spark.driver.memory": settings.driver_memory,
        "spark.executor.memory": settings.executor_memory,
        "spark.driver.extraJavaOptions": java_opts,
        "spark.executor.extraJavaOptions": java_opts,
        "spark.pyspark.python": os.environ.get("PYSPARK_PYTHON", sys.executable),
        "spark.pyspark.driver.python": os.environ.get("PYSPARK_DRIVER_PYTHON", sys.executable),
        "spark.executorEnv.LC_ALL": "C.UTF-8",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.pyspark.fallback.enabled": "false",
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(settings.arrow_batch_rows),
        "spark.sql.execution.pythonUDF.arrow.enabled": "true",
        "spark.sql.files.maxPartitionBytes": str(settings.max_partition_bytes),
        "spark.sql.files.openCostInBytes": str(settings.open_cost_bytes),
        # One Python worker per task slot, kept alive so per-worker model caches survive.
        "spark.python.worker.reuse": "true",
        "spark.ui.enabled": "true" if settings.ui else "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.adaptive.enabled": "true",
        "spark.serializer": "org.apache.spark.serializer.KryoSerializer",
        "spark.kryoserializer.buffer.max": "512m",
        "spark.driver.maxResultSize": "2g",
    }
    if settings.master.startswith("local"):
        # The driver is the executor; a handful of shuffle partitions suits a laptop.
        conf["spark.sql.shuffle.partitions"] = str(max(4, 2 * (os.cpu_count() or 2)))
    conf.update(settings.conf)
    return conf


#: What a Connect session is given of :func:`build_conf`: the session-level SQL settings
#: (the rest are the server's, fixed when it started; Connect always moves rows as Arrow).
_CONNECT_CONF_PREFIXES = ("spark.sql.",)


def is_connect(spark: SparkSession) -> bool:
    """Whether ``spark`` is a Spark Connect client session (no SparkContext, no JVM here)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def master_of(spark: SparkSession) -> str:
    """The master URL the session runs on (over Connect, the server's ``spark.master``)."""
    if is_connect(spark):
        return spark.conf.get("spark.master", None) or ""
    return spark.sparkContext.master


def default_parallelism(spark: SparkSession) -> int:
    """``sparkContext.defaultParallelism``; over Connect ``spark.default.parallelism``, else the
    server's local[N] cores, else 2 (the cluster's cores cannot be asked for without a SparkContext)."""
    if not is_connect(spark):
        return spark.sparkContext.defaultParallelism
    value = spark.conf.get("spark.default.parallelism", None)
    if value:
        return max(1, int(value))
    master = master_of(spark)
    if master.startswith("local[") and master[6:-1].isdigit():
        return int(master[6:-1])
    if master == "local":
        return 1
    return 2


def _connect(settings: SparkSettings) -> SparkSession:
    """A Connect client of ``settings.remote``; the server's Python workers must have sparkvision installed."""
    os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")
    builder = SparkSession.builder.remote(settings.remote).appName(settings.app_name)
    for key, value in build_conf(settings).items():
        if (key.startswith(_CONNECT_CONF_PREFIXES) and ".arrow.pyspark." not in key) or key in settings.conf:
            builder = builder.config(key, value)
    spark = builder.getOrCreate()
    log.info("Spark %s over Spark Connect at %s (server master %s)", spark.version, settings.remote,
             spark.conf.get("spark.master", None))
    return spark


def get_spark(settings: SparkSettings | None = None) -> SparkSession:
    """Return the active session or build one from ``settings``.

    An already running session is reused as it is (Spark cannot change a running
    session's master), so tests and notebooks can create their own first.
    """
    settings = settings or SparkSettings()
    if settings.remote:
        return _connect(settings)
    active = SparkSession.getActiveSession()
    if active is not None:
        if is_connect(active):
            return active
        if settings.master != active.sparkContext.master and settings.master != SparkSettings().master:
            log.warning("a Spark session on %s is already running; it is used instead of %s",
                        active.sparkContext.master, settings.master)
        return active
    _prepare_environment()
    builder = SparkSession.builder.master(settings.master).appName(settings.app_name)
    for key, value in build_conf(settings).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(settings.log_level)
    log.info(
        "Spark %s session on %s (default parallelism %d)",
        spark.version,
        spark.sparkContext.master,
        spark.sparkContext.defaultParallelism,
    )
    for key in settings.conf:  # read back from the running session: what the cluster really got
        log.info("Spark conf %s=%s", key, spark.conf.get(key, None))
    return spark


def parse_conf_pairs(pairs: list[str] | None) -> dict[str, str]:
    """``["k=v", ...]`` from the command line into a dict, rejecting malformed entries."""
    conf: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--conf expects key=value, got {pair!r}")
        conf[key.strip()] = value.strip()
    return conf


def task_cpus(spark: SparkSession | None = None) -> int:
    """CPU cores Spark gives each task; ONNX Runtime sessions use this many threads."""
    if spark is not None:
        return int(spark.conf.get("spark.task.cpus", "1") or 1)
    return int(os.environ.get("SPARKVISION_TASK_CPUS", "1"))
