"""Tiling as a Spark step: image rows (or paths) in, one row per tile out.

:func:`tile` (and the :class:`Tiler` transformer, the same step as a Spark ML stage) take
any DataFrame with a ``path`` column: IMAGE_SCHEMA rows from :func:`sparkvision.io.load_images`
(bytes in the row) or bare paths from :func:`list_sources` (each task opens the file and
reads only its region, which is what keeps huge scenes out of any one process's memory).

The output, :data:`TILE_SCHEMA`, holds IMAGE_SCHEMA's columns, so tiles go straight into
any sparkvision model step (featurize, predict, evaluate), plus where each tile came from:

============  ======  =================================================================
column        type    meaning
============  ======  =================================================================
path          string  ``<source>#page=P&level=L&x=X&y=Y``: unique per tile; the source
                      path alone on a source's error row
source        string  the source image's path
label         string  the source's label
page          int     TIFF page / DICOM frame (0 for single images); null on source errors
level, scale  int,    pyramid level and its scale (1 / 2**level)
              double
row, col      int     grid position at its level
x, y, w, h    int     region of the full-resolution image the tile covers (no padding)
image_width,  int     full-resolution size of the page
image_height
content       binary  the tile, ``size x size`` at its level, PNG (or JPEG); null for
                      background and error rows
format, mode  string  tile encoding and mode (L, RGB, I;16 for 16-bit grey)
width, height int     tile size in pixels (= ``size``)
channels      int     1 or 3
std           double  largest per-channel pixel std (0-255 units), the background statistic
background    bool    skipped by the background filter (counted, no bytes)
error         string  ``"<kind>: <detail>"`` or null
metadata      string  JSON of the page: format, compression, GeoTIFF tags as stored, DICOM
                      window and geometry
============  ======  =================================================================
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import Any

import pandas as pd
from pyspark import keyword_only
from pyspark.ml import Transformer
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    BinaryType,
    BooleanType,
    DoubleType,
    IntegerType,
    StringType,
    StructField,
    StructType,
)

from sparkvision import storage
from sparkvision.config import DecodeSettings, IngestSettings, TilingSettings
from sparkvision.io.load import load_images, resolve_kind
from sparkvision.io.sources import list_folder
from sparkvision.session import default_parallelism
from sparkvision.tiling.readers import TILE_EXTENSIONS
from sparkvision.tiling.tiler import TILE_COLUMNS, Unit, plan_source, run_unit

log = logging.getLogger(__name__)

_INT, _STR, _DBL = IntegerType(), StringType(), DoubleType()
TILE_SCHEMA = StructType(
    [
        StructField("path", _STR, False),
        StructField("source", _STR, False),
        StructField("label", _STR, True),
        StructField("page", _INT, True),
        StructField("level", _INT, True),
        StructField("scale", _DBL, True),
        StructField("row", _INT, True),
        StructField("col", _INT, True),
        StructField("x", _INT, True),
        StructField("y", _INT, True),
        StructField("w", _INT, True),
        StructField("h", _INT, True),
        StructField("image_width", _INT, True),
        StructField("image_height", _INT, True),
        StructField("content", BinaryType(), True),
        StructField("format", _STR, True),
        StructField("mode", _STR, True),
        StructField("width", _INT, True),
        StructField("height", _INT, True),
        StructField("channels", _INT, True),
        StructField("std", _DBL, True),
        StructField("background", BooleanType(), False),
        StructField("error", _STR, True),
        StructField("metadata", _STR, True),
    ]
)
assert [f.name for f in TILE_SCHEMA.fields] == TILE_COLUMNS

_PLAN_SCHEMA = StructType(
    [
        StructField("source", _STR, False),
        StructField("label", _STR, True),
        StructField("content", BinaryType(), True),
        StructField("page", _INT, False),
        StructField("level", _INT, False),
        StructField("row_start", _INT, False),
        StructField("row_end", _INT, False),
        StructField("error", _STR, True),
    ]
)
_INT_COLUMNS = [f.name for f in TILE_SCHEMA.fields if isinstance(f.dataType, IntegerType)]
#: Tile rows per Arrow batch a task yields: bounded memory whatever a scene's size.
_BATCH_ROWS = 64
MARKER = "_sparkvision_tiles.json"


def _plan_batches(
    batches: Iterator[pd.DataFrame], settings: TilingSettings, decode: DecodeSettings
) -> Iterator[pd.DataFrame]:
    for batch in batches:
        rows: list[dict[str, Any]] = []
        for path, label, content in zip(batch["path"], batch["label"], batch["content"], strict=True):
            for unit in plan_source(path, label, content is not None, settings, decode):
                rows.append({
                    "source": unit.source, "label": unit.label, "content": content, "page": unit.page,
                    "level": unit.level, "row_start": unit.row_start, "row_end": unit.row_end, "error": unit.error,
                })
        yield pd.DataFrame(rows, columns=[f.name for f in _PLAN_SCHEMA.fields])


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=TILE_COLUMNS)
    for column in _INT_COLUMNS:
        frame[column] = frame[column].astype("Int32")
    frame["background"] = frame["background"].astype(bool)
    return frame


def _tile_batches(
    batches: Iterator[pd.DataFrame], settings: TilingSettings, decode: DecodeSettings
) -> Iterator[pd.DataFrame]:
    for batch in batches:
        for record in batch.itertuples(index=False):
            unit = Unit(record.source, record.label, int(record.page), int(record.level),
                        int(record.row_start), int(record.row_end), record.error)
            rows: list[dict[str, Any]] = []
            for row in run_unit(unit, record.content, settings, decode):
                rows.append(row)
                if len(rows) >= _BATCH_ROWS:
                    yield _frame(rows)
                    rows = []
            if rows:
                yield _frame(rows)


def tile(
    frame: DataFrame,
    settings: TilingSettings | None = None,
    decode: DecodeSettings | None = None,
    **overrides: Any,
) -> DataFrame:
    """Tiles of every image in ``frame`` (a ``path`` column; ``content``/``label`` used if present).

    ``overrides`` are :class:`TilingSettings` fields (``size=224, overlap=0.1, levels=(0, 1)``).
    Rows with bytes are tiled from their bytes; rows without are opened by path on the
    executors (local paths, ``file:``, or URIs pyarrow can open). Lazy, like any Spark step.
    """
    settings = replace(settings or TilingSettings(), **overrides) if overrides else (settings or TilingSettings())
    decode = decode or DecodeSettings()
    if "path" not in frame.columns:
        raise ValueError(f"tile() needs a 'path' column; got columns {frame.columns}")
    sources = frame.select(
        F.col("path"),
        (F.col("label") if "label" in frame.columns else F.lit(None)).cast("string").alias("label"),
        (F.col("content") if "content" in frame.columns else F.lit(None)).cast("binary").alias("content"),
    )
    spark = frame.sparkSession
    partitions = settings.partitions or 2 * default_parallelism(spark)
    plan = sources.mapInPandas(partial(_plan_batches, settings=settings, decode=decode), _PLAN_SCHEMA)
    # Round-robin over tasks: the units of one huge scene land in different tasks.
    return plan.repartition(partitions).mapInPandas(
        partial(_tile_batches, settings=settings, decode=decode), TILE_SCHEMA
    )


class Tiler(Transformer, DefaultParamsReadable, DefaultParamsWritable):
    """:func:`tile` as a Spark ML stage, so tiling can sit at the head of a Pipeline and be saved."""

    size = Param(Params._dummy(), "size", "tile side in pixels of its pyramid level", TypeConverters.toInt)
    overlap = Param(Params._dummy(), "overlap", "fraction of the tile shared with neighbours, [0, 1)",
                    TypeConverters.toFloat)
    levels = Param(Params._dummy(), "levels", "pyramid levels to tile (level L = image / 2**L)",
                   TypeConverters.toListInt)
    edge = Param(Params._dummy(), "edge", "edge rule: shift (last tile moved inward) or pad", TypeConverters.toString)
    backgroundStd = Param(Params._dummy(), "backgroundStd",
                          "tiles with pixel std below this are counted as background, without bytes; "
                          "negative keeps every tile", TypeConverters.toFloat)
    tileFormat = Param(Params._dummy(), "tileFormat", "tile encoding: PNG or JPEG", TypeConverters.toString)
    window = Param(Params._dummy(), "window", "(center, width) mapping 16-bit/DICOM values to 8 bits; empty: none",
                   TypeConverters.toListFloat)
    maxPixels = Param(Params._dummy(), "maxPixels", "refuse pages with more pixels than this", TypeConverters.toInt)

    @keyword_only
    def __init__(
        self, *, size: int = 224, overlap: float = 0.1, levels: list[int] | None = None, edge: str = "shift",
        backgroundStd: float = -1.0, tileFormat: str = "PNG", window: list[float] | None = None,
        maxPixels: int | None = None,
    ) -> None:
        super().__init__()
        defaults = TilingSettings()
        self._setDefault(size=defaults.size, overlap=defaults.overlap, levels=list(defaults.levels),
                         edge=defaults.edge, backgroundStd=-1.0, tileFormat=defaults.tile_format, window=[],
                         maxPixels=defaults.max_pixels)
        kwargs = {k: v for k, v in self._input_kwargs.items() if v is not None}
        self._set(**kwargs)

    @keyword_only
    def setParams(self, **kwargs: Any) -> Tiler:
        return self._set(**{k: v for k, v in self._input_kwargs.items() if v is not None})

    def settings(self) -> TilingSettings:
        background = self.getOrDefault(self.backgroundStd)
        window = self.getOrDefault(self.window)
        return TilingSettings(
            size=self.getOrDefault(self.size), overlap=self.getOrDefault(self.overlap),
            levels=tuple(self.getOrDefault(self.levels)), edge=self.getOrDefault(self.edge),
            background_std=background if background >= 0 else None, tile_format=self.getOrDefault(self.tileFormat),
            window=(window[0], window[1]) if window else None, max_pixels=self.getOrDefault(self.maxPixels),
        )

    def _transform(self, dataset: DataFrame) -> DataFrame:
        return tile(dataset, self.settings())


# --------------------------------------------------------------------------- sources


_PATHS_SCHEMA = StructType([StructField("path", _STR, False), StructField("label", _STR, True)])


def list_sources(spark: SparkSession, src: str, glob: str | None = None, recursive: bool = True) -> DataFrame:
    """SRC for tiling: a built-in name or dataset gives image rows with bytes; a file,
    folder or URI gives paths only (no bytes are read on the driver or shuffled)."""
    local = storage.local_path_or_none(src)
    if local is not None and os.path.isfile(local):
        path = src if storage.scheme(src) == "file" else storage.file_uri(local)
        return spark.createDataFrame(pd.DataFrame({"path": [path], "label": [None]}), schema=_PATHS_SCHEMA)
    kind = resolve_kind(spark, src)
    if kind in ("builtin", "dataset"):
        return load_images(spark, src, kind=kind, probe="none")
    settings = IngestSettings(extensions=TILE_EXTENSIONS, recursive=recursive)
    if kind == "folder":
        listing = list_folder(src, settings, glob)
        files = listing.files[["path", "label"]]
        log.info("listed %d files to tile under %s", len(files), src)
        return spark.createDataFrame(files if len(files) else pd.DataFrame(columns=["path", "label"]),
                                     schema=_PATHS_SCHEMA)
    from sparkvision.io.sources import _case_insensitive_glob, _label_of

    root = storage.qualify(spark, src).rstrip("/")
    listing = (
        spark.read.format("binaryFile").option("recursiveFileLookup", str(recursive).lower())
        .option("pathGlobFilter", glob or _case_insensitive_glob(TILE_EXTENSIONS)).load(src).select("path")
    )
    label = F.udf(lambda p: _label_of(p, root), "string")
    return listing.select("path", label("path").alias("label"))


# --------------------------------------------------------------------------- datasets


@dataclass
class TileManifest:
    """Counts of a written tile dataset: nothing skipped goes uncounted."""

    sources: int
    source_errors: int  # sources or pages that produced no tiles, one error row each
    tiles: int  # tile positions, whatever became of them
    kept: int  # tiles with bytes
    background: int  # tiles skipped by the background filter (rows without bytes)
    tile_errors: int  # tiles whose pixels could not be read
    per_level: dict[str, dict[str, int]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize_tiles(frame: DataFrame) -> TileManifest:
    """Counts of a tile DataFrame (reads only the small columns: ``format`` is set exactly when bytes are)."""
    is_tile = F.col("x").isNotNull()
    summary = frame.select("source", "level", "x", "background", "error", F.col("format").isNotNull().alias("has")).agg(
        F.countDistinct("source").alias("sources"),
        F.count(F.when(~is_tile & F.col("error").isNotNull(), 1)).alias("source_errors"),
        F.count(F.when(is_tile, 1)).alias("tiles"),
        F.count(F.when(F.col("has"), 1)).alias("kept"),
        F.count(F.when(F.col("background"), 1)).alias("background"),
        F.count(F.when(is_tile & F.col("error").isNotNull(), 1)).alias("tile_errors"),
    ).first()
    per_level = {
        str(r["level"]): {"tiles": int(r["tiles"]), "kept": int(r["kept"]), "background": int(r["background"])}
        for r in frame.where(is_tile).groupBy("level").agg(
            F.count(F.lit(1)).alias("tiles"),
            F.count(F.when(F.col("format").isNotNull(), 1)).alias("kept"),
            F.count(F.when(F.col("background"), 1)).alias("background"),
        ).collect()
    }
    return TileManifest(**{k: int(summary[k]) for k in summary.asDict()}, per_level=per_level)


def write_tiles(
    spark: SparkSession,
    frame: DataFrame,
    uri: str,
    overwrite: bool = False,
    source: str = "",
    settings: TilingSettings | None = None,
) -> TileManifest:
    """Write tile rows atomically, with a manifest of counts (``_sparkvision_tiles.json``)."""
    with storage.atomic_dir(uri, spark, overwrite=overwrite) as staging:
        frame.select(*TILE_COLUMNS).write.mode("error").parquet(staging)
        manifest = summarize_tiles(spark.read.parquet(staging))
        manifest.source = source
        manifest.settings = asdict(settings) if settings else {}
        storage.write_text(staging + "/" + MARKER, json.dumps(manifest.to_dict(), indent=2) + "\n", spark)
    return manifest


def read_tiles(spark: SparkSession, uri: str) -> DataFrame:
    return spark.read.schema(TILE_SCHEMA).parquet(uri).select(*TILE_COLUMNS)
