"""DataFrames read by Spark's own ``image`` source (``spark.read.format("image")``) as sparkvision input.

That source decodes each file on the JVM (Java ImageIO) into a column ``image`` of
``struct<origin, height, width, nChannels, mode, data>``: 8-bit grey, BGR or BGRA
bytes and an OpenCV type code (``pyspark.ml.image.ImageSchema``). A file ImageIO
cannot decode becomes a row of mode -1 and no data (or no row at all, with
``dropInvalid``); empty files are never listed.

Two ways in, both through the Spark-free conversion :func:`~sparkvision.io.decode.ocv_to_image`:

* the model stages (``ImageFeaturizer``, ``ImagePredictor``, ``ObjectDetector`` and
  fitted pipelines) take such a struct column as ``inputCol`` where they take encoded
  bytes (:func:`model_inputs`);
* :func:`read_image_frame` (``load_images(spark, frame)``) turns the DataFrame into
  rows of :data:`~sparkvision.io.schema.IMAGE_SCHEMA`, the pixels stored as lossless
  PNG, for everything else (``fit_transfer``, ``write_dataset``, ``predict``, ...).

What ImageIO decided stays decided: EXIF orientation is not applied, grey-with-alpha
PNGs lose their alpha, and 16-bit images keep only their low byte. Read such files
with ``load_images(spark, PATH)`` instead.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from functools import partial

import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import BinaryType, DataType, IntegerType, StringType, StructType

from sparkvision.config import DecodeSettings
from sparkvision.io.decode import OcvImage, ocv_to_image
from sparkvision.io.errors import ErrorKind, ImageError
from sparkvision.io.schema import CONTENT, IMAGE_COLUMNS, IMAGE_SCHEMA, LABEL, PATH

#: The struct fields sparkvision reads, and their types.
_FIELDS: dict[str, type[DataType]] = {
    "height": IntegerType, "width": IntegerType, "nChannels": IntegerType, "mode": IntegerType, "data": BinaryType,
}


def is_image_struct(data_type: DataType) -> bool:
    """Whether a column holds Spark's image struct (``ImageSchema.columnSchema``; ``origin`` optional)."""
    if not isinstance(data_type, StructType):
        return False
    types = {f.name: f.dataType for f in data_type.fields}
    return all(isinstance(types.get(name), kind) for name, kind in _FIELDS.items())


def image_column(frame: DataFrame) -> str | None:
    """The name of ``frame``'s only image-struct column (``image`` as Spark reads it), None if none."""
    found = [f.name for f in frame.schema.fields if is_image_struct(f.dataType)]
    if len(found) > 1:
        raise ValueError(f"columns {found} all hold Spark image structs; choose one")
    return found[0] if found else None


def struct_pixels(column: Column) -> Column:
    """Only the fields a model reads, so ``origin`` strings do not travel to Python workers."""
    return F.struct(*[column.getField(name).alias(name) for name in _FIELDS])


def ocv_images(batch: pd.DataFrame) -> list[OcvImage | None]:
    """Image structs as :class:`OcvImage` values (None where the struct is null), from a batch whose
    columns are the struct's fields (how a pandas UDF receives a struct column).

    Arrow hands a null struct to pandas as a row of nulls, and integer fields with a
    null among them as floats: both are undone here.
    """
    out: list[OcvImage | None] = []
    for height, width, channels, mode, data in zip(*(batch[name] for name in _FIELDS), strict=True):
        ints = [None if pd.isna(v) else int(v) for v in (height, width, channels, mode)]
        if data is None and all(v is None for v in ints):
            out.append(None)
        else:
            out.append(OcvImage(*ints, data))  # type: ignore[arg-type]
    return out


def model_inputs(contents: pd.Series | pd.DataFrame) -> list[object]:
    """What a model stage's UDF hands its runner: bytes as they are, image structs as :class:`OcvImage`."""
    return ocv_images(contents) if isinstance(contents, pd.DataFrame) else contents.tolist()


def _png(image: OcvImage, decode: DecodeSettings) -> tuple[bytes, str, int]:
    img = ocv_to_image(*image, settings=decode)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", compress_level=1)  # lossless: the same pixels decode back
    return buffer.getvalue(), img.mode, image.n_channels


def _describe(batches: Iterator[pd.DataFrame], decode: DecodeSettings) -> Iterator[pd.DataFrame]:
    for batch in batches:
        out: dict[str, list] = {name: [] for name in IMAGE_COLUMNS}
        for path, label, image in zip(batch[PATH], batch[LABEL], ocv_images(batch), strict=True):
            content = mode = channels = error = None
            try:
                if image is None:
                    raise ImageError(ErrorKind.UNREADABLE, "the image column is null on this row")
                content, mode, channels = _png(image, decode)
            except ImageError as exc:
                error = exc.message
            except Exception as exc:  # noqa: BLE001 - one odd row must not fail the Spark task
                error = ImageError(ErrorKind.CORRUPT, f"converting failed ({type(exc).__name__}: {exc})").message
            ok = error is None
            out[PATH].append(path)
            out[LABEL].append(label)
            out[CONTENT].append(content)
            out["format"].append("PNG" if ok else None)
            out["mode"].append(mode)
            out["width"].append(image.width if ok else None)
            out["height"].append(image.height if ok else None)
            out["channels"].append(channels)
            out["error"].append(error)
        frame = pd.DataFrame(out, columns=IMAGE_COLUMNS)
        for column in ("width", "height", "channels"):
            frame[column] = frame[column].astype("Int32")
        yield frame


def read_image_frame(frame: DataFrame, decode: DecodeSettings | None = None) -> DataFrame:
    """Rows of IMAGE_SCHEMA from a DataFrame read by ``spark.read.format("image")``, one per input row.

    ``path`` is the image's ``origin`` (``image-source:<id>`` on a row without one),
    ``label`` the frame's own ``label`` column when it has one, else null. ``content`` holds the pixels as PNG
    (lossless, so they decode to exactly what Spark's source produced), ``format`` is
    ``PNG`` and ``mode`` ``L``, ``RGB`` or ``RGBA``. Rows Spark could not decode, and
    structs that do not hold 8-bit 1, 3 or 4 channel pixels of the size they claim,
    keep their path with an ``error``.
    """
    decode = decode or DecodeSettings()
    column = image_column(frame)
    if column is None:
        raise ValueError(
            f"no column of Spark's image struct (origin, height, width, nChannels, mode, data) in {frame.columns}; "
            "read the files with spark.read.format('image')"
        )
    origin = F.col(column).getField("origin") if "origin" in frame.schema[column].dataType.fieldNames() else None
    fallback = F.concat(F.lit("image-source:"), F.monotonically_increasing_id().cast(StringType()))
    path = F.coalesce(origin, fallback) if origin is not None else fallback
    label = F.col(LABEL).cast(StringType()) if LABEL in frame.columns else F.lit(None).cast(StringType())
    pixels = [F.col(column).getField(name).alias(name) for name in _FIELDS]
    rows = frame.select(path.alias(PATH), label.alias(LABEL), *pixels)
    return rows.mapInPandas(partial(_describe, decode=decode), IMAGE_SCHEMA)


def as_model_frame(frame: DataFrame) -> DataFrame:
    """A frame of Spark's image source as the columns a model directory reads; any other frame as it is.

    Without a ``content`` column, the image struct becomes ``content`` (the stages read it
    directly, no PNG in between) and its ``origin`` the ``path``, unless the frame has one.
    """
    column = image_column(frame) if CONTENT not in frame.columns else None
    if column is None:
        return frame
    columns = [F.col(c) for c in frame.columns if c != column]
    if PATH not in frame.columns:
        columns.insert(0, F.col(column).getField("origin").alias(PATH))
    return frame.select(*columns, F.col(column).alias(CONTENT))
