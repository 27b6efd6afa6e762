"""A handful of images by their ``path``, as small JPEG data URIs for a self-contained report.

Paths in predictions are whatever the image source wrote: ``file:`` URIs and local
paths (read directly), other Hadoop URIs (``hdfs://``, ``s3a://``: read through the
Hadoop FileSystem of the Spark session, see :mod:`sparkvision.storage`), and built-in dataset paths
``<dataset>/<part>/<index>.png`` (re-encoded from the installed arrays). When the
predictions came from a sparkvision dataset whose files are gone, pass that dataset
(``images``) and the bytes are looked up in it by path instead.

Only the gallery's few paths are read; nothing here scans a dataset on the driver.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from sparkvision import storage
from sparkvision.config import DecodeSettings, EvaluationSettings
from sparkvision.io.builtin import encode_png, is_builtin, load_arrays
from sparkvision.io.decode import decode_image
from sparkvision.io.errors import ImageError
from sparkvision.preprocess.color import to_model_mode

log = logging.getLogger(__name__)

_BUILTIN_PATH = re.compile(r"^(?P<name>[a-z0-9-]+)/(?P<part>[a-z0-9]+)/(?P<index>\d+)\.png$")


@dataclass
class Thumbnail:
    path: str
    #: ``data:image/jpeg;base64,...``, or None when the image could not be read.
    data_uri: str | None
    error: str | None = None


def _builtin_key(path: str) -> tuple[str, int] | None:
    match = _BUILTIN_PATH.match(path)
    if not match:
        return None
    name, part = match["name"], match["part"]
    key = name if part == "all" else f"{name}:{part}"
    return (key, int(match["index"])) if is_builtin(key) else None


def read_image_bytes(
    spark: SparkSession | None,
    paths: Sequence[str],
    images: str | None = None,
    settings: EvaluationSettings | None = None,
) -> dict[str, bytes | Exception]:
    """Encoded bytes for each path (or the exception that stopped it)."""
    settings = settings or EvaluationSettings()
    out: dict[str, bytes | Exception] = {}
    if images and paths:
        if spark is None:
            raise ValueError("reading thumbnails from an image source needs a Spark session")
        from sparkvision.io import load_images

        wanted = spark.createDataFrame([(p,) for p in dict.fromkeys(paths)], "path string")
        found = (
            load_images(spark, images, probe="none")
            .join(F.broadcast(wanted), "path", "left_semi")
            .select("path", "content")
            .collect()
        )
        for row in found:
            if row["content"] is not None:
                out[row["path"]] = bytes(row["content"])
    arrays: dict[str, object] = {}
    for path in paths:
        if path in out:
            continue
        try:
            builtin = _builtin_key(path)
            local = storage.local_path_or_none(path)
            if builtin is not None and not (local and os.path.isfile(local)):
                key, index = builtin
                if key not in arrays:
                    arrays[key] = load_arrays(key)[0].images
                out[path] = encode_png(arrays[key][index])  # type: ignore[index]
            elif local is not None:
                out[path] = storage.read_bytes(local, max_bytes=settings.max_thumbnail_bytes)
            else:  # through Hadoop with a session, else pyarrow's filesystems
                out[path] = storage.read_bytes(path, spark, settings.max_thumbnail_bytes)
        except Exception as exc:  # noqa: BLE001 - a missing thumbnail must not cost the report
            log.debug("no thumbnail for %s: %s", path, exc)
            out[path] = exc
    failed = [p for p in paths if isinstance(out.get(p), Exception)]
    if failed:
        log.warning("%d of %d gallery images could not be read (first: %s: %s); pass the image source "
                    "(--images) if the files moved", len(failed), len(paths), failed[0], out[failed[0]])
    return out


def to_data_uri(data: bytes, size: int, decode: DecodeSettings | None = None) -> str:
    """A JPEG thumbnail (longest side ``size``) of encoded image bytes, EXIF orientation applied."""
    decode = decode or DecodeSettings()
    img = decode_image(data, decode, draft=lambda w, h: ("RGB", (size, size)))
    img = to_model_mode(img, 3, decode.alpha_background)
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    if min(img.size) < 48:  # tiny images (28 px digits) would be unreadable at 1:1
        scale = 96 / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def thumbnails(
    spark: SparkSession | None,
    paths: Sequence[str],
    images: str | None = None,
    settings: EvaluationSettings | None = None,
) -> list[Thumbnail]:
    settings = settings or EvaluationSettings()
    found = read_image_bytes(spark, paths, images, settings)
    out = []
    for path in paths:
        data = found.get(path)
        if isinstance(data, bytes):
            try:
                out.append(Thumbnail(path, to_data_uri(data, settings.thumbnail_px)))
                continue
            except ImageError as exc:
                out.append(Thumbnail(path, None, exc.message))
                continue
        out.append(Thumbnail(path, None, str(data) if data is not None else "not found"))
    return out
