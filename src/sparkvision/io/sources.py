"""Image files into Spark rows of :data:`IMAGE_SCHEMA`, one row per file, whatever the file holds.

Two ways in:

* :func:`read_folder` lists a local folder tree in Python on the driver (lossless for
  any file name, dangling links included), and executors read and check the bytes.
  The folder must be visible at the same path to every executor (one machine, NFS).
* :func:`read_binary_files` uses Spark's ``binaryFile`` source, so any Hadoop URI works
  (``hdfs://``, ``s3a://`` with its connector). Files Spark cannot open are skipped by
  its reader (``ignoreCorruptFiles``/``ignoreMissingFiles``) and brought back as error
  rows by joining with the metadata-only listing.

Labels are the first folder level under the root; files directly in the root have none.
"""

from __future__ import annotations

import errno
import fnmatch
import logging
import math
import os
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Literal

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import BinaryType, LongType, StringType, StructField, StructType

from sparkvision import storage
from sparkvision.config import DecodeSettings, IngestSettings
from sparkvision.io.decode import probe_image
from sparkvision.io.errors import ErrorKind, ImageError
from sparkvision.io.schema import IMAGE_COLUMNS, IMAGE_SCHEMA
from sparkvision.session import default_parallelism

log = logging.getLogger(__name__)

ProbeLevel = Literal["full", "header", "none"]

_LISTING_SCHEMA = StructType(
    [
        StructField("path", StringType(), False),
        StructField("label", StringType(), True),
        StructField("fs_path", BinaryType(), False),
        StructField("size", LongType(), False),
    ]
)


@dataclass(frozen=True)
class FolderListing:
    """Files found under a root, and the class folders that held none."""

    files: pd.DataFrame  # path, label, fs_path (raw bytes), size (-1 if unknown)
    empty_class_folders: list[str]


def _display(raw: bytes) -> str:
    """A file name as text; bytes that are not UTF-8 show as ``\\xNN`` instead of failing."""
    return raw.decode("utf-8", "backslashreplace")


def is_hidden(name: str) -> bool:
    """Spark's and Hadoop's rule for names that are not data (``.DS_Store``, ``_SUCCESS``, ``x._COPYING_``).

    Both sources apply it to files and folders, so they list the same files.
    """
    return (name.startswith("_") and "=" not in name) or name.startswith(".") or name.endswith("._COPYING_")


def _wanted(name: bytes, settings: IngestSettings, glob: str | None) -> bool:
    text = _display(name)
    if is_hidden(text):
        return False
    if glob is not None and not fnmatch.fnmatchcase(text, glob):
        return False
    return text.lower().endswith(settings.extensions)


def list_folder(root: str, settings: IngestSettings | None = None, glob: str | None = None) -> FolderListing:
    """Walk ``root`` (a local path or ``file:`` URI) with bytes paths so no name is lost."""
    settings = settings or IngestSettings()
    root_bytes = os.fsencode(os.path.abspath(storage.local_path(root)))
    if not os.path.isdir(root_bytes):
        raise FileNotFoundError(f"image folder {root!r} does not exist or is not a directory")
    rows: list[tuple[str, str | None, bytes, int]] = []
    per_class: dict[bytes, int] = {}
    seen_dirs: set[tuple[int, int]] = set()
    stack: list[tuple[bytes, bytes | None]] = [(root_bytes, None)]
    while stack:
        folder, top = stack.pop()
        try:
            status = os.stat(folder)
            if (status.st_dev, status.st_ino) in seen_dirs:
                continue  # a symlink loop
            seen_dirs.add((status.st_dev, status.st_ino))
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            log.warning("cannot list %s: %s", _display(folder), exc.strerror)
            continue
        for entry in entries:
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                if is_hidden(_display(entry.name)):
                    if top is None:
                        log.warning("skipping folder %r under %s: names starting with '.' or '_' are hidden",
                                    _display(entry.name), root)
                    continue
                class_name = entry.name if top is None else top
                if top is None:
                    per_class.setdefault(class_name, 0)
                if settings.recursive or top is None:
                    stack.append((entry.path, class_name))
                continue
            if not _wanted(entry.name, settings, glob):
                continue
            try:
                size = entry.stat(follow_symlinks=True).st_size
            except OSError:
                size = -1  # dangling link or vanished file: still a row, with its error later
            if top is not None:
                per_class[top] = per_class.get(top, 0) + 1
            rows.append(("file:" + _display(entry.path), None if top is None else _display(top), entry.path, size))
    empty = sorted(_display(name) for name, count in per_class.items() if count == 0)
    files = pd.DataFrame(rows, columns=["path", "label", "fs_path", "size"])
    return FolderListing(files, empty)


def _read_local(fs_path: bytes, size: int, max_bytes: int) -> bytes:
    if size > max_bytes:
        raise ImageError(ErrorKind.TOO_LARGE, f"{size:,} bytes exceeds the limit of {max_bytes:,}")
    try:
        with open(fs_path, "rb", opener=_open_regular) as handle:
            return handle.read(max_bytes + 1)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ImageError(ErrorKind.UNREADABLE, f"cannot read file ({reason})") from None


def _open_regular(path: bytes, flags: int) -> int:
    """Open without blocking, and refuse anything but a regular file (a FIFO would hang the task)."""
    fd = os.open(path, flags | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file")
    return fd


def describe_rows(
    paths: list[str],
    labels: list[str | None],
    contents: list[bytes | None],
    read_errors: list[str | None],
    decode: DecodeSettings,
    probe: ProbeLevel,
) -> pd.DataFrame:
    """Rows of IMAGE_SCHEMA from raw bytes: format, mode, size, and the first error met."""
    out = {name: [] for name in IMAGE_COLUMNS}
    for path, label, data, error in zip(paths, labels, contents, read_errors, strict=True):
        info = None
        if error is None and probe != "none":
            try:
                info = probe_image(data, decode, full=probe == "full")
            except ImageError as exc:
                error = exc.message
            except Exception as exc:  # noqa: BLE001 - one odd file must not fail the Spark task
                error = ImageError(ErrorKind.CORRUPT, f"decoding failed ({type(exc).__name__}: {exc})").message
        elif error is None and not data:
            error = ImageError(ErrorKind.EMPTY_FILE, "the file has 0 bytes").message
        out["path"].append(path)
        out["label"].append(label)
        out["content"].append(data)
        out["format"].append(info.format if info else None)
        out["mode"].append(info.mode if info else None)
        out["width"].append(info.width if info else None)
        out["height"].append(info.height if info else None)
        out["channels"].append(info.channels if info else None)
        out["error"].append(error)
    frame = pd.DataFrame(out, columns=IMAGE_COLUMNS)
    for column in ("width", "height", "channels"):
        frame[column] = frame[column].astype("Int32")
    return frame


def _read_listed_batches(
    batches: Iterator[pd.DataFrame], max_bytes: int, decode: DecodeSettings, probe: ProbeLevel
) -> Iterator[pd.DataFrame]:
    for batch in batches:
        contents: list[bytes | None] = []
        errors: list[str | None] = []
        for fs_path, size in zip(batch["fs_path"], batch["size"], strict=True):
            try:
                contents.append(_read_local(fs_path, int(size), max_bytes))
                errors.append(None)
            except ImageError as exc:
                contents.append(None)
                errors.append(exc.message)
        yield describe_rows(list(batch["path"]), list(batch["label"]), contents, errors, decode, probe)


def read_folder(
    spark: SparkSession,
    root: str,
    ingest: IngestSettings | None = None,
    decode: DecodeSettings | None = None,
    glob: str | None = None,
    probe: ProbeLevel = "full",
) -> DataFrame:
    """A local folder tree (class = first sub-folder) as IMAGE_SCHEMA rows."""
    ingest = ingest or IngestSettings()
    decode = decode or DecodeSettings()
    listing = list_folder(root, ingest, glob)
    for folder in listing.empty_class_folders:
        log.warning("class folder %r under %s holds no image files", folder, root)
    log.info("listed %d files under %s", len(listing.files), root)
    return _read_listing(spark, listing.files, ingest, decode, probe)


def _read_listing(
    spark: SparkSession, files: pd.DataFrame, ingest: IngestSettings, decode: DecodeSettings, probe: ProbeLevel
) -> DataFrame:
    """Executors read and check listed local files, in partitions of about maxPartitionBytes."""
    max_partition = _conf_bytes(spark, "spark.sql.files.maxPartitionBytes", "128m")
    total = int(files["size"].clip(lower=0).sum()) if len(files) else 0
    parallelism = default_parallelism(spark)
    partitions = max(1, min(len(files), max(parallelism, math.ceil(total / max_partition))))
    frame = spark.createDataFrame(files, schema=_LISTING_SCHEMA).repartition(partitions)
    reader = partial(_read_listed_batches, max_bytes=ingest.max_file_bytes, decode=decode, probe=probe)
    return frame.mapInPandas(reader, IMAGE_SCHEMA)


_BYTE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "g": 1 << 30,
               "gb": 1 << 30, "t": 1 << 40, "tb": 1 << 40, "p": 1 << 50, "pb": 1 << 50}
_BYTE_STRING = re.compile(r"([0-9]+)([a-z]*)")


def byte_string_bytes(text: str) -> int:
    """A Spark size string (``64m``, ``1g``, ``134217728``) in bytes, by the rules of Spark's
    ``JavaUtils.byteStringAsBytes`` (case-insensitive binary units, no fractions), without a JVM."""
    match = _BYTE_STRING.fullmatch(text.strip().lower())
    if match is None or match.group(2) not in _BYTE_UNITS:
        raise ValueError(f"{text!r} is not a Spark size (a whole number with an optional unit b, k, m, g, t or p)")
    return int(match.group(1)) * _BYTE_UNITS[match.group(2)]


def _conf_bytes(spark: SparkSession, key: str, default: str) -> int:
    """A size setting (``64m``, ``134217728``) parsed as Spark itself parses it (classic or Connect)."""
    return byte_string_bytes(spark.conf.get(key, default) or default)


def _case_insensitive_glob(extensions: tuple[str, ...]) -> str:
    """``*.{[jJ][pP][gG],...}``: Hadoop globs are case-sensitive, file extensions are not."""
    def letters(ext: str) -> str:
        return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in ext.lstrip("."))

    return "*.{" + ",".join(letters(ext) for ext in extensions) + "}"


def _label_of(path: str, root: str) -> str | None:
    if not path.startswith(root + "/"):
        return None
    parts = path[len(root) + 1:].split("/")
    return parts[0] if len(parts) > 1 else None


def glob_base(uri: str) -> str:
    """The folder above the first glob component of a Hadoop path (``s3a://b/photos/*/2024`` -> ``s3a://b/photos``)."""
    parts = uri.rstrip("/").split("/")
    for i, part in enumerate(parts):
        if any(c in part for c in "*?[{"):
            return "/".join(parts[:i])
    return uri


def _depth_ok(path: str, root: str, recursive: bool) -> bool:
    """Without recursion only ``root/file`` and ``root/class/file`` are read, as the folder source does."""
    return recursive or path[len(root) + 1:].count("/") <= 1


def _unscanned_error(path: str) -> str:
    if storage.scheme(path) == "file":
        try:
            status = os.stat(storage.local_path(path))
        except OSError as exc:
            return ImageError(ErrorKind.UNREADABLE, f"cannot read file ({exc.strerror})").message
        if not stat.S_ISREG(status.st_mode):
            return ImageError(ErrorKind.UNREADABLE, "cannot read file (not a regular file)").message
    return ImageError(ErrorKind.EMPTY_FILE, "the file has 0 bytes").message


def describe_binary_batches(
    batches: Iterator[pd.DataFrame], root: str, max_bytes: int, decode: DecodeSettings, probe: ProbeLevel
) -> Iterator[pd.DataFrame]:
    for batch in batches:
        paths = list(batch["path"])
        contents: list[bytes | None] = list(batch["content"])
        errors: list[str | None] = []
        for i, (data, length) in enumerate(zip(contents, batch["length"], strict=True)):
            if data is not None:
                errors.append(None)
            elif pd.isna(length):
                # Listed, but absent from the scan: Spark's scans never produce zero-length
                # files; on a local disk we can also tell a vanished file or a FIFO apart.
                errors.append(_unscanned_error(paths[i]))
            elif int(length) > max_bytes:
                contents[i] = None
                errors.append(ImageError(
                    ErrorKind.TOO_LARGE, f"{int(length):,} bytes exceeds the limit of {max_bytes:,}").message)
            else:
                errors.append(ImageError(
                    ErrorKind.UNREADABLE, "Spark's binaryFile reader could not read this file (see executor logs)"
                ).message)
        labels = [_label_of(p, root) for p in paths]
        yield describe_rows(paths, labels, contents, errors, decode, probe)


def read_binary_files(
    spark: SparkSession,
    uri: str,
    ingest: IngestSettings | None = None,
    decode: DecodeSettings | None = None,
    glob: str | None = None,
    probe: ProbeLevel = "full",
) -> DataFrame:
    """Any Hadoop URI through Spark's ``binaryFile`` source, unreadable files kept as error rows.

    Spark's scans silently drop three kinds of file: zero-length ones (never split into
    a partition), ones it cannot read (``ignoreCorruptFiles``, needed so one bad file
    does not fail the job) and, on local disks, names Java cannot represent and
    dangling links. So the rows come from the listing (``inputFiles()``), left-joined
    with a metadata scan (lengths; no file opened) and with the content scan; on
    ``file:`` URIs a Python walk adds the files Hadoop cannot see at all (not for
    globbed URIs, whose labels come from the folder above the first glob).
    """
    ingest = ingest or IngestSettings()
    decode = decode or DecodeSettings()
    base = glob_base(uri)
    root = storage.qualify(spark, base).rstrip("/")  # labels are the first folder below it
    if not storage.exists(root, spark):
        raise FileNotFoundError(f"{base!r} does not exist")
    files = binary_file_reader(spark.read, root, ingest, glob).load(uri)
    listed = wanted_paths((storage.spark_path(u) for u in files.inputFiles()), root, ingest)
    log.info("Spark listed %d files under %s", len(listed), root)
    frame = describe_scan(spark, listed, files, root, ingest, decode, probe)
    if storage.scheme(root) == "file" and base == uri:
        unseen = _unseen_local_files(root, set(listed), ingest, glob)
        if len(unseen):
            log.warning("%d files under %s are invisible to Hadoop (dangling links, names that are not UTF-8); "
                        "reading them in Python", len(unseen), root)
            frame = frame.unionByName(_read_listing(spark, unseen, ingest, decode, probe))
    return frame


def binary_file_reader(reader, root: str, ingest: IngestSettings, glob: str | None = None):
    """``reader`` (``spark.read`` or ``spark.readStream``) set up for the ``binaryFile`` format as sparkvision reads it."""
    reader = (
        reader.format("binaryFile")
        # Always recursive: without it Spark infers partition columns from 'key=value' folders.
        .option("recursiveFileLookup", "true")
        .option("pathGlobFilter", glob or _case_insensitive_glob(ingest.extensions))
        .option("ignoreCorruptFiles", "true")
        .option("ignoreMissingFiles", "true")
    )
    if storage.scheme(root) == "file":
        # Hadoop's checksumming local FS opens a '.name.crc' sibling, and cannot build that
        # path for names with ':' (Relative path in absolute URI); the raw FS reads them.
        reader = reader.option("fs.file.impl", "org.apache.hadoop.fs.RawLocalFileSystem").option(
            "fs.file.impl.disable.cache", "true"
        )
    return reader


def wanted_paths(paths: Iterable[str], root: str, ingest: IngestSettings) -> list[str]:
    """Listed paths (as Spark's scans print them) that ``ingest`` reads: its extensions, and depth."""
    pattern = re.compile("(" + "|".join(re.escape(e) for e in ingest.extensions) + ")$", re.IGNORECASE)
    return sorted({p for p in paths if pattern.search(p) and _depth_ok(p, root, ingest.recursive)})


def describe_scan(
    spark: SparkSession, listed: list[str], files: DataFrame, root: str, ingest: IngestSettings,
    decode: DecodeSettings, probe: ProbeLevel,
) -> DataFrame:
    """IMAGE_SCHEMA rows for every ``listed`` path, from a ``binaryFile`` scan ``files`` (batch or micro-batch).

    The listing drives: a listed file the scan skipped (empty, unreadable, too large)
    is still a row, with its error.
    """
    listing = spark.createDataFrame(pd.DataFrame({"path": listed}, dtype=object), "path string")
    lengths = files.select("path", "length")  # file status only: nothing is opened
    contents = files.where(F.col("length") <= ingest.max_file_bytes).select("path", "content")
    joined = listing.join(lengths, "path", "left").join(contents, "path", "left")
    return joined.mapInPandas(
        partial(describe_binary_batches, root=root, max_bytes=ingest.max_file_bytes, decode=decode, probe=probe),
        IMAGE_SCHEMA,
    )


def _unseen_local_files(root: str, listed: set[str], ingest: IngestSettings, glob: str | None) -> pd.DataFrame:
    files = list_folder(root, ingest, glob).files
    return files[~files["path"].isin(listed)].reset_index(drop=True)
