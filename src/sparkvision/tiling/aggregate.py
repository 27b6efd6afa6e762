"""Tile predictions per source image: labels, heat maps and boxes, computed in Spark.

Input: scored tile rows (:func:`sparkvision.tiling.classify.classify_tiles`, or any
predictions joined to the tile geometry). Tiles are grouped by ``(source, page)``; each
group becomes one image row in the predictions schema (``path``, ``label``,
``prediction``, ``probability`` = the image's class scores, ``error``) plus counts, boxes,
the heat rasters and, when asked, PNG overlays blended over a downscaled original that
the executor reads itself (region by region, like tiling).

An image with no classified tile gets ``prediction`` = the background class if one is
set, else null with error ``no_tiles: ...``; a source that failed to tile keeps its
error. Every source in the input is one image row.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    BinaryType,
    DoubleType,
    IntegerType,
    StringType,
    StructField,
    StructType,
)

from sparkvision import storage
from sparkvision.config import HeatmapSettings, TilingSettings
from sparkvision.io.errors import ImageError
from sparkvision.tiling.heatmap import (
    Box,
    classes_to_draw,
    default_cell,
    find_boxes,
    heat_raster,
    image_label,
    image_scores,
    overlay_png,
)
from sparkvision.tiling.readers import open_scene, thumbnail
from sparkvision.tiling.tiler import tile_path

log = logging.getLogger(__name__)

NO_TILES = "no_tiles"
_INT, _STR, _DBL = IntegerType(), StringType(), DoubleType()
BOX_STRUCT = StructType(
    [
        StructField("class_name", _STR, False),
        StructField("x", _INT, False),
        StructField("y", _INT, False),
        StructField("w", _INT, False),
        StructField("h", _INT, False),
        StructField("score", _DBL, False),
        StructField("mean_score", _DBL, False),
        StructField("cells", _INT, False),
    ]
)
IMAGE_RESULT_SCHEMA = StructType(
    [
        StructField("path", _STR, False),
        StructField("source", _STR, False),
        StructField("page", _INT, True),
        StructField("label", _STR, True),
        StructField("prediction", _STR, True),
        StructField("probability", ArrayType(_DBL), True),
        StructField("error", _STR, True),
        StructField("method", _STR, False),
        StructField("level", _INT, True),
        StructField("cell", _INT, True),
        StructField("tiles", _INT, False),
        StructField("scored", _INT, False),
        StructField("background", _INT, False),
        StructField("tile_errors", _INT, False),
        StructField("image_width", _INT, True),
        StructField("image_height", _INT, True),
        StructField("boxes", ArrayType(BOX_STRUCT), False),
        StructField("heat", BinaryType(), True),
        StructField("overlays", ArrayType(StructType([
            StructField("label", _STR, False), StructField("png", BinaryType(), False),
        ])), False),
    ]
)
_NEEDED = ["source", "label", "page", "level", "x", "y", "w", "h", "image_width", "image_height",
           "background", "error", "probability"]


def _first(values: pd.Series) -> Any:
    present = values.dropna()
    return present.iloc[0] if len(present) else None


def aggregate_image(
    group: pd.DataFrame,
    labels: Sequence[str],
    settings: HeatmapSettings,
    render: bool = False,
) -> dict[str, Any]:
    """One image's result from its tile rows (the body of the Spark group function)."""
    source = str(group["source"].iloc[0])
    page_value = _first(group["page"])
    page = None if page_value is None else int(page_value)
    tiles = group[group["x"].notna()]
    level = settings.level
    if level is None and len(tiles):
        level = int(tiles["level"].min())
    if level is not None:
        tiles = tiles[tiles["level"] == level]
    scored = tiles[tiles["probability"].notna() & tiles["error"].isna()]
    width, height = _first(group["image_width"]), _first(group["image_height"])
    row: dict[str, Any] = {
        "path": source if not page else tile_path(source, page), "source": source, "page": page,
        "label": _first(group["label"]), "prediction": None, "probability": None, "error": None,
        "method": settings.method, "level": level, "cell": None, "tiles": int(len(tiles)),
        "scored": int(len(scored)), "background": int(tiles["background"].fillna(False).astype(bool).sum()),
        "tile_errors": int(tiles["error"].notna().sum()),
        "image_width": None if width is None else int(width), "image_height": None if height is None else int(height),
        "boxes": [], "heat": None, "overlays": [],
    }
    untiled = group[group["x"].isna() & group["error"].notna()]
    if len(tiles) == 0 and len(untiled):
        row["error"] = str(untiled["error"].iloc[0])
        return row
    if len(scored) == 0:
        if settings.background_class is not None and row["tile_errors"] == 0:
            row["prediction"] = settings.background_class
            row["probability"] = [1.0 if name == settings.background_class else 0.0 for name in labels]
        else:
            row["error"] = (f"{NO_TILES}: no tile of this image was classified "
                            f"({row['background']} background, {row['tile_errors']} with errors)")
        return row
    probabilities = np.stack([np.asarray(p, dtype=np.float64) for p in scored["probability"]])
    if probabilities.shape[1] != len(labels):
        raise ValueError(f"probability vectors have {probabilities.shape[1]} entries but the model has {len(labels)} labels")
    scores = image_scores(probabilities, settings.method)
    row["probability"] = scores.tolist()
    row["prediction"] = image_label(scores, labels, settings)
    width, height = int(width), int(height)
    # Default: a quarter of the widest tile footprint (size * 2**level, or the image if smaller).
    cell = settings.cell if settings.cell is not None else default_cell(int(tiles["w"].max()), 0)
    row["cell"] = int(cell)
    heat, count = heat_raster(scored[["x", "y", "w", "h"]].to_numpy(np.int64), probabilities, width, height, cell)
    drawn = classes_to_draw(labels, scores, settings)
    boxes: list[Box] = []
    for index in drawn:
        boxes.extend(find_boxes(heat[index], labels[index], cell, width, height, settings.threshold, settings.min_cells))
    row["boxes"] = [b.to_dict() for b in boxes]
    buffer = io.BytesIO()
    np.savez_compressed(buffer, heat=heat[drawn].astype(np.float32), count=count.astype(np.int32),
                        classes=np.array([labels[i] for i in drawn]), cell=np.int64(cell))
    row["heat"] = buffer.getvalue()
    if render:
        base = _thumbnail(source, page or 0, settings.overlay_max_side)
        row["overlays"] = [
            {"label": labels[i], "png": overlay_png(
                base, heat[i], cell, [b for b in boxes if b.class_name == labels[i]], width, height, settings,
                title=f"{labels[i]}: {settings.method} {scores[i]:.2f}",
            )}
            for i in drawn
        ]
    return row


def _thumbnail(source: str, page: int, max_side: int) -> np.ndarray | None:
    """A downscaled original to draw on, or None when the source cannot be read here."""
    try:
        with open_scene(source, None, TilingSettings(levels=(0,))) as scene:
            arr = thumbnail(scene, page, max_side)
    except (ImageError, OSError, ValueError) as exc:
        log.info("no background image for %s (%s); drawing on grey", source, exc)
        return None
    if arr.dtype == np.uint16:
        arr = np.rint(arr / 257.0).astype(np.uint8)
    return arr


def _aggregate_groups(group: pd.DataFrame, labels: list[str], settings: HeatmapSettings, render: bool) -> pd.DataFrame:
    row = aggregate_image(group, labels, settings, render)
    frame = pd.DataFrame([row], columns=[f.name for f in IMAGE_RESULT_SCHEMA.fields])
    for column in ("page", "level", "cell", "image_width", "image_height"):
        frame[column] = frame[column].astype("Int32")
    return frame


def aggregate_tiles(
    scored: DataFrame, labels: Sequence[str], settings: HeatmapSettings | None = None, render: bool = False
) -> DataFrame:
    """One row per source image (and page) from scored tile rows; see the module docstring."""
    settings = settings or HeatmapSettings()
    missing = [c for c in _NEEDED if c not in scored.columns]
    if missing:
        raise ValueError(f"scored tiles need columns {missing} (tile geometry joined to predictions)")
    narrow = scored.select(*_NEEDED).withColumn("page_key", F.coalesce(F.col("page"), F.lit(-1)))
    return narrow.groupBy("source", "page_key").applyInPandas(
        lambda pdf: _aggregate_groups(pdf.drop(columns=["page_key"]), list(labels), settings, render),
        IMAGE_RESULT_SCHEMA,
    )


# --------------------------------------------------------------------------- writing


def _safe_name(source: str, page: int | None) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(source.rstrip("/")) or "image")[:80]
    digest = hashlib.sha1(source.encode("utf-8")).hexdigest()[:8]
    return f"{base}-{digest}" + (f"-p{page}" if page else "")


def write_results(
    spark: SparkSession,
    images: DataFrame,
    out: str,
    overwrite: bool = False,
    extra: dict[str, Any] | None = None,
    tile_predictions: DataFrame | None = None,
) -> dict[str, Any]:
    """Write image results (Parquet), boxes (Parquet + JSON), heat maps (PNG + NPZ) and a summary.

    ``out`` must be a local directory: PNG files are written by the driver.
    """
    if not storage.is_local(out):
        raise ValueError(f"heat-map output must be a local directory, got {out}")
    local = os.path.abspath(storage.local_path(out))
    summary: dict[str, Any] = {"out": local}
    # Written as Parquet, then iterated for the files: computed (tiled, classified) once.
    images = images.persist(StorageLevel.MEMORY_AND_DISK)
    with storage.atomic_dir(storage.file_uri(local), spark, overwrite=overwrite) as staging:
        stage_dir = Path(storage.local_path(staging))
        if tile_predictions is not None:
            tile_predictions.write.parquet(str(stage_dir / "tile_predictions"))
        images.select(*[f.name for f in IMAGE_RESULT_SCHEMA.fields if f.name not in ("overlays", "heat")]).write.parquet(
            str(stage_dir / "images")
        )
        heat_dir = stage_dir / "heatmaps"
        heat_dir.mkdir(parents=True, exist_ok=True)
        boxes: list[dict[str, Any]] = []
        counts = {"images": 0, "images_with_errors": 0, "tiles": 0, "scored": 0, "background": 0, "tile_errors": 0}
        predictions: dict[str, int] = {}
        heatmaps = 0
        for row in images.toLocalIterator():
            counts["images"] += 1
            counts["images_with_errors"] += int(row["error"] is not None)
            for key in ("tiles", "scored", "background", "tile_errors"):
                counts[key] += int(row[key])
            if row["prediction"] is not None:
                predictions[row["prediction"]] = predictions.get(row["prediction"], 0) + 1
            name = _safe_name(row["source"], row["page"])
            for box in row["boxes"]:
                boxes.append({"path": row["path"], "source": row["source"], "page": row["page"], **box.asDict()})
            if row["heat"] is not None:
                (heat_dir / f"{name}.npz").write_bytes(row["heat"])
            for overlay in row["overlays"]:
                label = re.sub(r"[^A-Za-z0-9._-]+", "_", overlay["label"])
                (heat_dir / f"{name}__{label}.png").write_bytes(overlay["png"])
                heatmaps += 1
        (stage_dir / "boxes.json").write_text(json.dumps(boxes, indent=1) + "\n", encoding="utf-8")
        box_frame = pd.DataFrame(boxes, columns=["path", "source", "page", *[f.name for f in BOX_STRUCT.fields]])
        box_frame.to_parquet(stage_dir / "boxes.parquet", index=False)
        summary.update(counts, predictions=predictions, boxes=len(boxes), heatmaps=heatmaps, **(extra or {}))
        (stage_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    images.unpersist()
    return summary
