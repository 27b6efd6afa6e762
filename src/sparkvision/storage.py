"""Where sparkvision's files live: URIs to local paths, reads, listings and atomic writes.

The one place that knows what a path or URI means. It imports without Spark:

- **URIs.** A plain path is local. A ``file:`` URI follows RFC 8089: ``file:/x``,
  ``file:///x`` and ``file://localhost/x`` all mean ``/x``; percent-escapes are decoded
  (``file:///a%20b`` is ``/a b``). Hadoop prints local paths unencoded (``file:/a b/100%.png``,
  the form of every ``path`` column), so a path that exists exactly as written is taken as
  written. A ``file:`` URI naming another host, or any other scheme where a local path is
  needed, raises :class:`NotLocalError`.
- **Reads and listings** of local paths use the OS; other URIs use pyarrow's filesystems
  (on executors and training ranks) or, given a Spark session, Hadoop's (on the driver,
  with the cluster's configuration).
- **Writes are atomic.** A file is written to a hidden sibling and renamed over the target
  (:func:`atomic_write`, :func:`atomic_file`), so a reader sees the old file or the new one,
  never half of one. A directory (datasets, predictions, models) is staged beside its target
  and renamed into place (:func:`atomic_dir`); replacing one swaps whole directories.

With a Spark session the operations go through Hadoop's FileSystem, so a plain path
means what Spark means by it (the cluster's default filesystem) and ``hdfs://``, ``s3a://``
and the rest work; without one, a plain path is a local path. Over Spark Connect the client
has no Hadoop: plain paths and ``file:`` URIs are local (shared with the server), other URIs
are read through Spark's ``binaryFile`` source, and listing, deleting or writing them fails
with one line saying to use a classic session.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from pyarrow import fs as pafs
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

_LOCAL_HOSTS = ("", "localhost")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


class NotLocalError(ValueError):
    """A URI names a file that is not on this machine's filesystem."""


class OutputExistsError(FileExistsError):
    """An output exists and replacing it was not asked for."""


class FileTooLargeError(ValueError):
    """A file is larger than the caller's limit (found before reading it)."""


# --------------------------------------------------------------------------- URIs


def scheme(uri: str | os.PathLike[str]) -> str:
    """The URI scheme, lower case (``""`` for a plain path; ``a:b/c`` is a plain path)."""
    text = os.fspath(uri)
    match = _SCHEME.match(text)
    if match is None:
        return ""
    name = match.group(1).lower()
    return name if name == "file" or text[match.end():].startswith("//") else ""


def is_local(uri: str | os.PathLike[str]) -> bool:
    """Whether ``uri`` is a plain path or a ``file:`` URI (whose host may still be remote)."""
    return scheme(uri) in ("", "file")


def local_path(uri: str | os.PathLike[str]) -> str:
    """The local path behind a plain path or ``file:`` URI (see the module docstring for the rules).

    A plain path is returned unchanged; a ``file:`` URI gives an absolute path.
    """
    text = os.fspath(uri)
    kind = scheme(text)
    if kind == "":
        return text
    if kind != "file":
        raise NotLocalError(f"{text!r} is not a local path ({kind}:// needs Spark or a filesystem client)")
    rest = text[len("file:"):]
    if rest.startswith("//"):
        host, slash, rest = rest[2:].partition("/")
        if host.lower() not in _LOCAL_HOSTS:
            raise NotLocalError(
                f"{text!r} names host {host!r}; a file: URI must be local "
                "(file:/path, file:///path or file://localhost/path)"
            )
        rest = slash + rest
    if not rest.startswith("/"):
        rest = os.path.abspath(rest)  # 'file:rel/x', as Hadoop reads it: relative to the working directory
    rest = "/" + rest.lstrip("/")
    decoded = unquote(rest, errors="surrogateescape")
    if decoded == rest or os.path.lexists(rest):
        return rest
    return decoded


def local_path_or_none(uri: str | os.PathLike[str]) -> str | None:
    """:func:`local_path`, or None for a URI of another scheme (a ``file:`` URI of another host raises)."""
    return local_path(uri) if is_local(uri) else None


def file_uri(path: str | os.PathLike[str]) -> str:
    """A local path as the ``file:`` URI Hadoop prints (``file:/abs/a b``, unencoded)."""
    return "file:" + os.path.abspath(local_path(path))


def spark_path(uri: str) -> str:
    """A Java URI string (``file:///a%20b``, from ``inputFiles()``) as Spark's scans print paths (``file:/a b``)."""
    parts = urlsplit(uri)
    authority = f"//{parts.netloc}" if parts.netloc else ""
    return f"{parts.scheme}:{authority}{unquote(parts.path)}" if parts.scheme else unquote(parts.path)


# --------------------------------------------------------------------------- reading


def arrow_filesystem(uri: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path within it, for a local path or any URI pyarrow knows."""
    from pyarrow import fs as pafs

    if is_local(uri):
        return pafs.LocalFileSystem(), os.path.abspath(local_path(uri))
    return pafs.FileSystem.from_uri(os.fspath(uri))


def open_input(uri: str | os.PathLike[str]) -> BinaryIO:
    """A seekable binary file for a local path, ``file:`` URI or any URI pyarrow's filesystems know."""
    if is_local(uri):
        return open(local_path(uri), "rb")  # noqa: SIM115 - the caller owns and closes it
    filesystem, inner = arrow_filesystem(uri)
    return filesystem.open_input_file(inner)


def _through_hadoop(uri: str | os.PathLike[str], spark: SparkSession | None) -> bool:
    """With a classic session, everything but ``file:`` URIs (the driver's own disk either way) goes
    through Hadoop. Over Spark Connect there is no Hadoop client here: local paths use the OS, and
    other URIs are read through Spark's ``binaryFile`` source or refused (:func:`_connect_only_local`)."""
    return spark is not None and scheme(uri) != "file" and not _is_connect(spark)


def _is_connect(spark: SparkSession | None) -> bool:
    if spark is None:
        return False
    from sparkvision.session import is_connect

    return is_connect(spark)


def _connect_only_local(uri: str | os.PathLike[str], spark: SparkSession | None, what: str) -> None:
    """Over Spark Connect, refuse in one line what needs Hadoop's FileSystem on a non-local URI."""
    if _is_connect(spark) and not is_local(uri):
        raise NotLocalError(f"{what} {os.fspath(uri)!r}: over Spark Connect only local paths can be {what}d "
                            "from the client (no Hadoop FileSystem); use a classic session (--master) for "
                            f"{scheme(uri)}:// outputs")


def _read_through_spark(uri: str | os.PathLike[str], spark: SparkSession, max_bytes: int | None) -> bytes:
    """A non-local file's bytes over Spark Connect, through Spark's own ``binaryFile`` source."""
    from pyspark.sql import functions as F

    content = F.col("content") if max_bytes is None else F.when(F.col("length") <= max_bytes, F.col("content"))
    rows = spark.read.format("binaryFile").load(os.fspath(uri)).select("length", content.alias("content")).limit(2).collect()
    if len(rows) != 1:
        raise FileNotFoundError(f"{os.fspath(uri)} is not one file ({len(rows)} found by Spark's binaryFile source)")
    _check_size(uri, int(rows[0]["length"]), max_bytes)
    return bytes(rows[0]["content"])


def read_bytes(uri: str | os.PathLike[str], spark: SparkSession | None = None, max_bytes: int | None = None) -> bytes:
    """A whole file's bytes; :class:`FileTooLargeError` (before reading) when it exceeds ``max_bytes``."""
    if _is_connect(spark) and not is_local(uri):
        return _read_through_spark(uri, spark, max_bytes)
    if not _through_hadoop(uri, spark):
        with open_input(uri) as handle:
            size = handle.seek(0, os.SEEK_END)
            _check_size(uri, size, max_bytes)
            handle.seek(0)
            return handle.read()
    fs, path = _hadoop(spark, os.fspath(uri))
    _check_size(uri, fs.getFileStatus(path).getLen(), max_bytes)
    stream = fs.open(path)
    try:
        return bytes(spark.sparkContext._jvm.org.apache.commons.io.IOUtils.toByteArray(stream))
    finally:
        stream.close()


def _check_size(uri: Any, size: int, max_bytes: int | None) -> None:
    if max_bytes is not None and size > max_bytes:
        raise FileTooLargeError(f"{os.fspath(uri)}: {size:,} bytes exceeds the limit of {max_bytes:,}")


def read_text(uri: str | os.PathLike[str], spark: SparkSession | None = None) -> str:
    """A whole file as UTF-8 text."""
    return read_bytes(uri, spark).decode("utf-8")


def exists(uri: str | os.PathLike[str], spark: SparkSession | None = None) -> bool:
    _connect_only_local(uri, spark, "check")
    if _through_hadoop(uri, spark):
        fs, path = _hadoop(spark, os.fspath(uri))
        return bool(fs.exists(path))
    if is_local(uri):
        return os.path.exists(local_path(uri))
    from pyarrow import fs as pafs

    filesystem, inner = arrow_filesystem(uri)
    return filesystem.get_file_info(inner).type != pafs.FileType.NotFound


def list_dir(uri: str | os.PathLike[str], spark: SparkSession | None = None) -> list[str]:
    """The names in a directory, sorted (:class:`FileNotFoundError` when it is missing)."""
    _connect_only_local(uri, spark, "list")
    if _through_hadoop(uri, spark):
        fs, path = _hadoop(spark, os.fspath(uri))
        if not fs.exists(path):
            raise FileNotFoundError(f"{os.fspath(uri)} does not exist")
        return sorted(str(status.getPath().getName()) for status in fs.listStatus(path))
    if is_local(uri):
        return sorted(os.listdir(local_path(uri)))
    from pyarrow import fs as pafs

    filesystem, inner = arrow_filesystem(uri)
    if filesystem.get_file_info(inner).type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{os.fspath(uri)} does not exist")
    return sorted(info.base_name for info in filesystem.get_file_info(pafs.FileSelector(inner)))


def delete(uri: str | os.PathLike[str], spark: SparkSession | None = None) -> None:
    """Remove a file or a whole directory; a missing one is not an error."""
    _connect_only_local(uri, spark, "delete")
    if _through_hadoop(uri, spark):
        fs, path = _hadoop(spark, os.fspath(uri))
        fs.delete(path, True)
        return
    path = local_path(uri)
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


# --------------------------------------------------------------------------- atomic writes


def _temp_sibling(path: str, kind: str) -> str:
    head, name = os.path.split(path)
    return os.path.join(head, f".{name}.{kind}-{uuid.uuid4().hex[:12]}")


@contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[str]:
    """Yield a temporary path beside ``path`` to write; on success it replaces ``path`` in one rename.

    For writers that want a file name (``torch.onnx.export``, ``onnx.save``). The parent
    directory is created. On failure the temporary file is removed and ``path`` is untouched.
    """
    target = os.path.abspath(local_path(path))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = _temp_sibling(target, "tmp")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically, flushed to disk before the rename."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_file(path) as tmp, open(tmp, "xb") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    return Path(os.path.abspath(local_path(path)))


@contextmanager
def atomic_dir(
    uri: str | os.PathLike[str], spark: SparkSession | None = None, overwrite: bool = False
) -> Iterator[str]:
    """Yield a staging location to fill; on success it becomes ``uri`` in one rename.

    With a Spark session the staging location is a qualified Hadoop URI (``file:/...``,
    ``hdfs://...``) not yet created, as Spark's writers want it; without one it is an
    empty local directory. An
    existing output raises :class:`OutputExistsError` unless ``overwrite``; then the old
    output is moved aside, the new one renamed in, and only then the old one deleted. On
    failure the staging output is removed and the existing output is left untouched.
    """
    if _is_connect(spark):
        _connect_only_local(uri, spark, "write")
        ops: _LocalOps | _HadoopOps = _ConnectOps()
    else:
        ops = _HadoopOps(spark) if spark is not None else _LocalOps()
    target = ops.qualify(os.fspath(uri)).rstrip("/")
    if ops.exists(target) and not overwrite:
        raise OutputExistsError(f"{os.fspath(uri)} already exists; pass overwrite (--overwrite) to replace it")
    parent, _, name = target.rpartition("/")
    ops.mkdirs(parent)
    token = uuid.uuid4().hex[:12]
    # The staging output sits in a hidden folder (a leading dot), so readers of the parent,
    # such as Spark reading a table of parts, skip what a killed job left; its own name is
    # not hidden, so Spark reads it back without complaint before the rename.
    container = f"{parent}/.{name}.staging-{token}"
    staging = f"{container}/{name}"
    try:
        ops.mkdirs(container)
        if spark is None:
            os.mkdir(staging)
        yield staging
    except BaseException:
        if ops.exists(container):
            ops.delete(container)
        raise
    retired = f"{parent}/.{name}.retired-{token}"
    had_old = ops.exists(target)
    if had_old:
        ops.rename(target, retired)
    try:
        ops.rename(staging, target)
    except BaseException:
        if had_old:
            ops.rename(retired, target)
        raise
    ops.delete(container)
    if had_old:
        ops.delete(retired)
    log.info("wrote %s", target)


class _LocalOps:
    def qualify(self, uri: str) -> str:
        return os.path.abspath(local_path(uri))

    def exists(self, path: str) -> bool:
        return os.path.lexists(path)

    def mkdirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def delete(self, path: str) -> None:
        delete(path)

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)


class _ConnectOps(_LocalOps):
    """Spark Connect: local paths (the server's disk too: client and server share it), handed to
    Spark's writers as ``file:`` URIs, like the qualified URIs of a classic session."""

    def qualify(self, uri: str) -> str:
        return file_uri(uri)

    def exists(self, path: str) -> bool:
        return super().exists(local_path(path))

    def mkdirs(self, path: str) -> None:
        super().mkdirs(local_path(path))

    def delete(self, path: str) -> None:
        super().delete(local_path(path))

    def rename(self, src: str, dst: str) -> None:
        super().rename(local_path(src), local_path(dst))


class _HadoopOps:
    def __init__(self, spark: SparkSession) -> None:
        self.spark = spark

    def qualify(self, uri: str) -> str:
        return qualify(self.spark, uri)

    def exists(self, uri: str) -> bool:
        return exists(uri, self.spark)

    def mkdirs(self, uri: str) -> None:
        fs, path = _hadoop(self.spark, uri)
        fs.mkdirs(path)

    def delete(self, uri: str) -> None:
        delete(uri, self.spark)

    def rename(self, src: str, dst: str) -> None:
        fs, src_path = _hadoop(self.spark, src)
        _, dst_path = _hadoop(self.spark, dst)
        if not fs.rename(src_path, dst_path):
            raise OSError(f"could not rename {src} to {dst}")


# --------------------------------------------------------------------------- Hadoop (driver only)


def _hadoop(spark: SparkSession, uri: str):
    """Hadoop's FileSystem and Path for ``uri``; ``file:`` URIs read by this module's rules first."""
    if scheme(uri) == "file":
        uri = file_uri(uri)
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri)
    fs = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    return fs, path


def qualify(spark: SparkSession, uri: str) -> str:
    """The fully qualified URI Spark will use (``/tmp/x`` becomes ``file:/tmp/x`` or ``hdfs://nn/tmp/x``).

    Over Spark Connect a plain path is a local one (the client cannot ask for the cluster's default
    filesystem) and a URI is taken as written.
    """
    if _is_connect(spark):
        return file_uri(uri) if is_local(uri) else uri
    fs, path = _hadoop(spark, uri)
    return str(fs.makeQualified(path).toString())


def write_text(uri: str | os.PathLike[str], text: str, spark: SparkSession | None = None) -> None:
    """Write a small text file (UTF-8): atomically on local disk, else through Hadoop.

    Through Hadoop it is meant for a file inside a staging directory of :func:`atomic_dir`.
    """
    _connect_only_local(uri, spark, "write")
    if not _through_hadoop(uri, spark):
        atomic_write(uri, text)
        return
    fs, path = _hadoop(spark, os.fspath(uri))
    stream = fs.create(path, True)
    try:
        stream.write(bytearray(text.encode("utf-8")))
    finally:
        stream.close()
