"""A real Spark Connect server on loopback, started from the installed pyspark, for tests and benchmarks.

``SparkConnectServer`` runs through ``spark-submit`` (its jar ships in pyspark's ``jars/``)
on ``local[N]``. Its Python workers run this interpreter with this sparkvision importable
(``PYTHONPATH`` names the package's source folder), as a cluster's would have it installed.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from sparkvision.testing.cluster import free_port, spark_home

log = logging.getLogger(__name__)

SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"


class ConnectServer:
    """``with ConnectServer(log_dir) as server: ... server.url ...`` (``sc://127.0.0.1:PORT``)."""

    def __init__(self, log_dir: str | os.PathLike[str], cores: int = 2, driver_memory: str = "2g",
                 conf: dict[str, str] | None = None, start_timeout: float = 180.0) -> None:
        self.log_dir = Path(log_dir)
        self.cores = cores
        self.driver_memory = driver_memory
        self.conf = conf or {}
        self.start_timeout = start_timeout
        self.port = 0
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"sc://127.0.0.1:{self.port}"

    def _environment(self) -> dict[str, str]:
        import sparkvision

        env = dict(os.environ)
        env["SPARK_HOME"] = str(spark_home())
        env["SPARK_LOCAL_IP"] = "127.0.0.1"
        env["PYSPARK_PYTHON"] = sys.executable
        source = str(Path(sparkvision.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (source, env.get("PYTHONPATH")) if p)
        env.pop("SPARK_REMOTE", None)
        env.pop("SPARK_CONNECT_MODE_ENABLED", None)
        if "UTF-8" not in env.get("LC_ALL", "").upper().replace("UTF8", "UTF-8"):
            env["LC_ALL"] = "C.UTF-8"
        return env

    def start(self) -> ConnectServer:
        from sparkvision.session import _log4j_conf

        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        java_opts = f"-Dlog4j2.configurationFile=file:{_log4j_conf()} -Dfile.encoding=UTF-8 -Dsun.jnu.encoding=UTF-8"
        conf = {
            "spark.connect.grpc.binding.address": "127.0.0.1",
            "spark.connect.grpc.binding.port": str(self.port),
            "spark.ui.enabled": "false",
            "spark.python.worker.reuse": "true",
            "spark.driver.extraJavaOptions": java_opts,
            "spark.executorEnv.LC_ALL": "C.UTF-8",
            **self.conf,
        }
        command = [str(spark_home() / "bin" / "spark-submit"), "--class", SERVER_CLASS,
                   "--master", f"local[{self.cores}]", "--driver-memory", self.driver_memory]
        for key, value in conf.items():
            command += ["--conf", f"{key}={value}"]
        with open(self.log_dir / "connect-server.log", "ab") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=self._environment(), start_new_session=True)
        try:
            self._wait()
        except BaseException:
            self.stop()
            raise
        log.info("Spark Connect server %s (pid %d)", self.url, self.process.pid)
        return self

    def _wait(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"the Spark Connect server exited ({self.process.returncode}); see "
                                   f"{self.log_dir / 'connect-server.log'}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"the Spark Connect server did not listen on {self.port} within {self.start_timeout:.0f} s")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def __enter__(self) -> ConnectServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
