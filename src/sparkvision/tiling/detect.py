"""Object detection on huge images: a detector on every tile, an optional cheap screen first,
boxes merged per image in global coordinates.

Data flow (all Spark steps, nothing gathered on the driver but counts)::

    tile rows (sparkvision.tiling.tiles.tile)
      -> detect_tiles: per batch of tiles, in the executors,
           screen   a classifier model directory (ClassifierRunner) scores every tile;
                    a tile passes when its screen score reaches the threshold
           detect   the detector model directory (DetectorRunner, the one decoder)
                    runs on the tiles that pass; boxes go to global coordinates and
                    are flagged when a tile edge cuts them (sparkvision.tiling.merge)
      -> merge_tiles: one row per source image (and page), duplicates across tile
           borders merged (sparkvision.tiling.merge.merge_boxes)
      -> write_tile_detections: Parquet, atomically, every source checked present

**Screen score.** The classifier's probabilities of the *interesting* labels, summed
(the probability that the tile shows any of them; a classifier's labels exclude each
other). Interesting labels are ``ScreenSettings.labels`` when given, else every label
except one named ``background`` (case-insensitive); a classifier with neither is
refused, so a screen never silently passes or drops everything. A tile runs the
detector when its score is at least ``ScreenSettings.threshold``.

**Time saved.** Each model call is timed in the task that makes it (decoding and
preprocessing included) and its time shared among the tiles of the call. The summary
reports the detector's seconds per tile it ran on, times the tiles the screen kept from
it (``detect_seconds_saved``), and that minus what the screen itself cost on every tile
(``net_seconds_saved``). These are seconds of task time summed over tasks (core-seconds
with one thread a task); wall time shrinks by about that over the number of cores.

Output columns (one row per source image, or per page of a multi-page source):

===============  ======  ===============================================================
path             string  the source (``<source>#page=P`` for pages after the first)
source, page     string, the source image and page
                 int
label            string  the source's label (its folder), as in predictions
boxes            array   ``struct<label, score, xmin, ymin, xmax, ymax>`` in full-resolution
                         pixels of the image, most confident first (the ``detect`` schema)
error            string  the source's error; or, when some tiles failed, the first
                         tile error's kind and how many failed (boxes are then from the others)
image_width,     int     full-resolution size
image_height
tiles            int     tile positions (all levels)
background       int     tiles skipped as background by the tiler (no bytes)
screened_out     int     tiles the screen kept from the detector
detected         int     tiles the detector ran on
tile_errors      int     tiles that could not be read, screened or detected
candidates       int     tile boxes before merging
screen_seconds,  double  model time spent on this image's tiles
detect_seconds
===============  ======  ===============================================================
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    BooleanType,
    DoubleType,
    IntegerType,
    StringType,
    StructField,
    StructType,
)

from sparkvision import storage
from sparkvision.detection.postprocess import DecodeSettings
from sparkvision.io.errors import ErrorKind, error_kind
from sparkvision.ml.detector import BOX_TYPE, BOXES_TYPE
from sparkvision.tiling.merge import (
    MergeSettings,
    TileRegion,
    cut_by_tile,
    edge_slack,
    merge_boxes,
    to_global,
)
from sparkvision.tiling.tiler import tile_path

log = logging.getLogger(__name__)

BACKGROUND_LABEL = "background"
#: Written next to the Parquet parts: the counts, timings and settings of the run.
TILING_MARKER = "_sparkvision_tile_detections.json"


@dataclass(frozen=True)
class ScreenSettings:
    """Which tiles the cheap classifier lets through to the detector (see the module docstring)."""

    threshold: float = 0.5
    #: Interesting labels; None: every label but one named "background".
    labels: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"the screen threshold is a probability in [0, 1], got {self.threshold!r}")


def screen_classes(labels: Sequence[str], settings: ScreenSettings) -> list[int]:
    """Indices of the labels whose probabilities make a tile's screen score."""
    labels = list(labels)
    if settings.labels:
        unknown = [name for name in settings.labels if name not in labels]
        if unknown:
            raise ValueError(f"screen label(s) {unknown} are not labels of the screen model {labels}")
        return [labels.index(name) for name in settings.labels]
    interesting = [i for i, name in enumerate(labels) if name.lower() != BACKGROUND_LABEL]
    if len(interesting) == len(labels):
        raise ValueError(f"the screen model has no {BACKGROUND_LABEL!r} label (its labels: {labels}); "
                         "name the labels that mean 'look here' with --screen-label")
    if not interesting:
        raise ValueError(f"the screen model only knows {labels}: nothing would pass it")
    return interesting


# --------------------------------------------------------------------------- executors: one batch of tiles

#: A tile's box in global pixels, whether a tile edge cuts it, and its tile's edge slack (merge.edge_slack).
_CANDIDATE = StructType([*BOX_TYPE.fields, StructField("cut", BooleanType(), False),
                         StructField("slack", DoubleType(), False)])
_INT, _STR, _DBL, _BOOL = IntegerType(), StringType(), DoubleType(), BooleanType()
TILE_DETECTION_SCHEMA = StructType([
    StructField("source", _STR, False),
    StructField("label", _STR, True),
    StructField("page", _INT, True),
    StructField("level", _INT, True),
    StructField("x", _INT, True),
    StructField("y", _INT, True),
    StructField("w", _INT, True),
    StructField("h", _INT, True),
    StructField("image_width", _INT, True),
    StructField("image_height", _INT, True),
    StructField("background", _BOOL, False),
    StructField("screen_score", _DBL, True),
    StructField("screened_out", _BOOL, False),
    StructField("detected", _BOOL, False),
    StructField("candidates", ArrayType(_CANDIDATE, False), True),
    StructField("error", _STR, True),
    StructField("screen_seconds", _DBL, False),
    StructField("detect_seconds", _DBL, False),
])
_TILE_INPUT = ["source", "label", "page", "level", "x", "y", "w", "h", "width", "image_width", "image_height",
               "content", "background", "error"]
_INT_OUT = [f.name for f in TILE_DETECTION_SCHEMA.fields if isinstance(f.dataType, IntegerType)]


class TileBatchDetector:
    """Screen and detect one batch of tile rows (the work of a Spark task, and testable without Spark).

    ``detector`` is a :class:`~sparkvision.detection.runner.DetectorRunner`, ``screen``
    an optional :class:`~sparkvision.models.runner.ClassifierRunner` with the indices
    of its interesting labels.
    """

    def __init__(self, detector: Any, merge: MergeSettings, screen: Any = None,
                 screen_settings: ScreenSettings | None = None, screen_indices: Sequence[int] = ()) -> None:
        self.detector = detector
        self.labels = list(detector.labels or [])
        self.merge = merge
        self.screen = screen
        self.screen_settings = screen_settings or ScreenSettings()
        self.screen_indices = list(screen_indices)

    def __call__(self, tiles: pd.DataFrame) -> pd.DataFrame:
        n = len(tiles)
        out = pd.DataFrame({
            "source": tiles["source"], "label": tiles["label"], "page": tiles["page"], "level": tiles["level"],
            "x": tiles["x"], "y": tiles["y"], "w": tiles["w"], "h": tiles["h"],
            "image_width": tiles["image_width"], "image_height": tiles["image_height"],
        }).reset_index(drop=True)
        background = tiles["background"].fillna(False).astype(bool).to_numpy()
        errors: list[str | None] = [None if e is None or e != e else str(e) for e in tiles["error"]]
        screen_score: list[float | None] = [None] * n
        screened_out = np.zeros(n, dtype=bool)
        detected = np.zeros(n, dtype=bool)
        candidates: list[list[dict] | None] = [None] * n
        screen_seconds = np.zeros(n)
        detect_seconds = np.zeros(n)
        contents = tiles["content"].tolist()
        todo = [i for i in range(n) if errors[i] is None and not background[i] and contents[i] is not None]

        if self.screen is not None and todo:
            started = time.perf_counter()
            rows = self.screen.predict_proba([contents[i] for i in todo])
            screen_seconds[todo] = (time.perf_counter() - started) / len(todo)
            for k, error in enumerate(rows.errors):
                if error is not None:
                    errors[todo[k]] = error
            scores = rows.values[:, self.screen_indices].sum(axis=1) if len(rows.index) else np.zeros(0)
            passing = []
            for position, score in zip(rows.index, scores, strict=True):
                i = todo[int(position)]
                screen_score[i] = float(score)
                if score >= self.screen_settings.threshold:
                    passing.append(i)
                else:
                    screened_out[i] = True
            todo = sorted(passing)

        if todo:
            started = time.perf_counter()
            rows = self.detector.detect([contents[i] for i in todo])
            detect_seconds[todo] = (time.perf_counter() - started) / len(todo)
            for k, error in enumerate(rows.errors):
                if error is not None:
                    errors[todo[k]] = error
            for position, found in zip(rows.index, rows.values, strict=True):
                i = todo[int(position)]
                detected[i] = True
                candidates[i] = self._candidates(tiles.iloc[i], found)

        out["background"] = background
        out["screen_score"] = screen_score
        out["screened_out"] = screened_out
        out["detected"] = detected
        out["candidates"] = candidates
        out["error"] = errors
        out["screen_seconds"] = screen_seconds
        out["detect_seconds"] = detect_seconds
        for column in _INT_OUT:
            out[column] = out[column].astype("Int32")
        return out

    def _candidates(self, tile: pd.Series, found: Any) -> list[dict]:
        region = TileRegion(int(tile["x"]), int(tile["y"]), int(tile["w"]), int(tile["h"]), int(tile["level"]),
                            int(tile["width"]), int(tile["image_width"]), int(tile["image_height"]))
        boxes, kept = to_global(found.boxes, region)
        cut = cut_by_tile(boxes, region, self.merge.edge_margin)
        slack = edge_slack(region, self.merge.edge_margin)
        return [
            {"label": self.labels[int(c)], "score": float(s), "xmin": float(b[0]), "ymin": float(b[1]),
             "xmax": float(b[2]), "ymax": float(b[3]), "cut": bool(k), "slack": slack}
            for b, s, c, k in zip(boxes, found.scores[kept], found.classes[kept], cut, strict=True)
        ]


# --------------------------------------------------------------------------- driver: the Spark steps


def _runner_factory(spark: SparkSession, model_dir: str | Path, kind: str, batch_size: int,
                    settings: DecodeSettings | None = None):
    """A picklable zero-argument factory of a runner on this model's shipped bytes, and its labels."""
    from sparkvision.ml.onnx_stage import ship_model
    from sparkvision.models.runner import from_model_dir
    from sparkvision.session import task_cpus

    source = from_model_dir(model_dir)
    model = ship_model(spark, source)
    meta = dict(preprocess=source.preprocess, outputs=dict(source.outputs), labels=source.labels,
                name=source.name, key=source.digest, threads=task_cpus(spark), batch_size=batch_size)

    def make() -> Any:
        if kind == "detector":
            from sparkvision.detection.runner import DetectorRunner

            return DetectorRunner(model, meta["preprocess"], settings=settings,
                                  **{k: v for k, v in meta.items() if k != "preprocess"})
        from sparkvision.models.runner import ClassifierRunner

        return ClassifierRunner(model, meta["preprocess"],
                                **{k: v for k, v in meta.items() if k != "preprocess"})

    return make, list(source.labels or ())


def check_models(detector_dir: str | Path, screen_dir: str | Path | None, screen: ScreenSettings | None) -> None:
    """Refuse a wrong model before any Spark job starts: a detector, and a classifier screen."""
    from sparkvision.models.model_dir import load_card

    card = load_card(detector_dir)
    if card.kind != "detector":
        raise ValueError(f"{detector_dir} is a {card.kind!r} model, not a detector; tile classifiers make heat maps "
                         "with 'sparkvision heatmap', or screen tiles with --screen")
    if screen_dir is not None:
        screen_card = load_card(screen_dir)
        if screen_card.kind == "detector":
            raise ValueError(f"the screen {screen_dir} is a detector; it must be a classifier (kind onnx)")
        screen_classes(screen_card.labels, screen or ScreenSettings())


def detect_tiles(
    tiles: DataFrame,
    detector_dir: str | Path,
    decode: DecodeSettings | None = None,
    merge: MergeSettings | None = None,
    screen_dir: str | Path | None = None,
    screen: ScreenSettings | None = None,
    batch_size: int = 16,
) -> DataFrame:
    """One row per tile (:data:`TILE_DETECTION_SCHEMA`): screened, detected, boxes in global pixels."""
    check_models(detector_dir, screen_dir, screen)
    spark = tiles.sparkSession
    merge = merge or MergeSettings()
    screen = screen or ScreenSettings()
    make_detector, _ = _runner_factory(spark, detector_dir, "detector", batch_size, decode or DecodeSettings())
    make_screen, screen_labels = (_runner_factory(spark, screen_dir, "classifier", batch_size)
                                  if screen_dir is not None else (None, []))
    indices = screen_classes(screen_labels, screen) if screen_dir is not None else []

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        work = TileBatchDetector(make_detector(), merge, make_screen() if make_screen else None, screen, indices)
        for batch in batches:
            yield work(batch)

    missing = [c for c in _TILE_INPUT if c not in tiles.columns]
    if missing:
        raise ValueError(f"tile rows need columns {missing} (from sparkvision.tiling.tiles.tile)")
    return tiles.select(*_TILE_INPUT).mapInPandas(run, TILE_DETECTION_SCHEMA)


IMAGE_DETECTION_SCHEMA = StructType([
    StructField("path", _STR, False),
    StructField("source", _STR, False),
    StructField("page", _INT, True),
    StructField("label", _STR, True),
    StructField("boxes", BOXES_TYPE, True),
    StructField("error", _STR, True),
    StructField("image_width", _INT, True),
    StructField("image_height", _INT, True),
    StructField("tiles", _INT, False),
    StructField("background", _INT, False),
    StructField("screened_out", _INT, False),
    StructField("detected", _INT, False),
    StructField("tile_errors", _INT, False),
    StructField("candidates", _INT, False),
    StructField("screen_seconds", _DBL, False),
    StructField("detect_seconds", _DBL, False),
])


def _first(values: pd.Series) -> Any:
    present = values.dropna()
    return present.iloc[0] if len(present) else None


def merge_image(group: pd.DataFrame, merge: MergeSettings) -> dict[str, Any]:
    """One image's row from its tile rows (the body of the per-image Spark group function)."""
    source = str(group["source"].iloc[0])
    page_value = _first(group["page"])
    page = None if page_value is None else int(page_value)
    tiles = group[group["x"].notna()]
    failed = tiles[tiles["error"].notna()]
    width, height = _first(group["image_width"]), _first(group["image_height"])
    found = [c for boxes in tiles["candidates"] if boxes is not None for c in boxes]
    row: dict[str, Any] = {
        "path": source if not page else tile_path(source, page), "source": source, "page": page,
        "label": _first(group["label"]), "boxes": None, "error": None,
        "image_width": None if width is None else int(width), "image_height": None if height is None else int(height),
        "tiles": int(len(tiles)), "background": int(tiles["background"].sum()),
        "screened_out": int(tiles["screened_out"].sum()), "detected": int(tiles["detected"].sum()),
        "tile_errors": int(len(failed)), "candidates": len(found),
        "screen_seconds": float(group["screen_seconds"].sum()), "detect_seconds": float(group["detect_seconds"].sum()),
    }
    untiled = group[group["x"].isna() & group["error"].notna()]
    if len(tiles) == 0:
        row["error"] = str(untiled["error"].iloc[0]) if len(untiled) else f"{ErrorKind.CORRUPT.value}: no tiles"
        return row
    if len(failed) or len(untiled):
        first = str(failed["error"].iloc[0] if len(failed) else untiled["error"].iloc[0])
        row["error"] = (f"{error_kind(first)}: {len(failed)} of {len(tiles)} tiles failed"
                        f"{' and part of the image was not read' if len(untiled) else ''}; "
                        f"boxes are from the others (first: {first})")
    if found:
        boxes = np.array([[c["xmin"], c["ymin"], c["xmax"], c["ymax"]] for c in found])
        scores = np.array([c["score"] for c in found])
        labels = np.array([c["label"] for c in found], dtype=object)
        cut = np.array([c["cut"] for c in found], dtype=bool)
        slack = np.array([c["slack"] for c in found])
        merged, merged_scores, merged_labels = merge_boxes(boxes, scores, labels, cut, merge, slack)
        row["boxes"] = [{"label": str(c), "score": float(s), "xmin": float(b[0]), "ymin": float(b[1]),
                         "xmax": float(b[2]), "ymax": float(b[3])}
                        for b, s, c in zip(merged, merged_scores, merged_labels, strict=True)]
    else:
        row["boxes"] = []
    return row


def merge_tiles(per_tile: DataFrame, merge: MergeSettings | None = None) -> DataFrame:
    """One row per source image (and page): :data:`IMAGE_DETECTION_SCHEMA`."""
    merge = merge or MergeSettings()
    columns = [f.name for f in IMAGE_DETECTION_SCHEMA.fields]

    def one_image(group: pd.DataFrame) -> pd.DataFrame:
        frame = pd.DataFrame([merge_image(group.drop(columns=["page_key"]), merge)], columns=columns)
        for column in ("page", "image_width", "image_height"):
            frame[column] = frame[column].astype("Int32")
        return frame

    keyed = per_tile.withColumn("page_key", F.coalesce(F.col("page"), F.lit(-1)))
    return keyed.groupBy("source", "page_key").applyInPandas(one_image, IMAGE_DETECTION_SCHEMA)


def detect_large_images(
    sources: DataFrame,
    detector_dir: str | Path,
    tiling: Any = None,
    decode: DecodeSettings | None = None,
    merge: MergeSettings | None = None,
    screen_dir: str | Path | None = None,
    screen: ScreenSettings | None = None,
    batch_size: int = 16,
) -> DataFrame:
    """Sources (a ``path`` column, e.g. :func:`sparkvision.tiling.tiles.list_sources`) to one
    detection row per image: tile, screen, detect, merge. Lazy, like any Spark step."""
    from sparkvision.tiling.tiles import tile

    tiles = tile(sources, tiling)
    merge = merge or MergeSettings(iou_threshold=(decode or DecodeSettings()).iou_threshold)
    per_tile = detect_tiles(tiles, detector_dir, decode, merge, screen_dir, screen, batch_size)
    return merge_tiles(per_tile, merge)


# --------------------------------------------------------------------------- writing


def _check_sources(sources: DataFrame, written: DataFrame) -> None:
    """Every source is in the output, and no image row twice: a job-level guarantee, not a row error."""
    missing = sources.select(F.col("path").alias("source")).distinct().join(
        written.select("source").distinct(), "source", "left_anti")
    lost = [r["source"] for r in missing.limit(5).collect()]
    doubled = [r["path"] for r in written.groupBy("path").count().where(F.col("count") > 1).limit(5).collect()]
    if lost or doubled:
        raise RuntimeError(f"tile detection lost sources {lost} or wrote images twice {doubled}; output not written")


def summarize(written: DataFrame) -> dict[str, Any]:
    """Counts, boxes per class and model time of a written tile-detection output."""
    sums = written.agg(
        F.count("*").alias("images"),
        F.sum(F.col("error").isNotNull().cast("int")).alias("images_with_errors"),
        *[F.sum(c).alias(c) for c in ("tiles", "background", "screened_out", "detected", "tile_errors", "candidates",
                                      "screen_seconds", "detect_seconds")],
    ).first().asDict()
    counts = {k: int(v or 0) for k, v in sums.items() if not k.endswith("seconds")}
    kinds = {r["kind"]: int(r["count"]) for r in written.where(F.col("error").isNotNull())
             .groupBy(F.split(F.col("error"), ":").getItem(0).alias("kind")).count().collect()}
    per_class = {r["label"]: int(r["count"]) for r in
                 written.select(F.explode("boxes").alias("box")).groupBy("box.label").count().collect()}
    screen_seconds, detect_seconds = float(sums["screen_seconds"] or 0.0), float(sums["detect_seconds"] or 0.0)
    per_tile = detect_seconds / counts["detected"] if counts["detected"] else 0.0
    saved = per_tile * counts["screened_out"]
    return {
        **counts, "error_kinds": dict(sorted(kinds.items())), "boxes": sum(per_class.values()),
        "boxes_per_class": dict(sorted(per_class.items())),
        "screen_seconds": screen_seconds, "detect_seconds": detect_seconds,
        "detect_seconds_per_tile": per_tile, "detect_seconds_saved": saved,
        "net_seconds_saved": saved - screen_seconds,
    }


def write_tile_detections(
    spark: SparkSession,
    images: DataFrame,
    sources: DataFrame,
    out: str,
    detector_dir: str | Path,
    overwrite: bool = False,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write image rows (Parquet) to ``out``, all or nothing, with the run's summary beside them.

    Staged, checked (every source present, no image twice), then moved into place. The
    predictions marker makes the output readable by ``evaluate --task detect`` like
    ``detect``'s.
    """
    from sparkvision.inference.predict import PREDICTIONS_MARKER
    from sparkvision.models.model_dir import load_card
    from sparkvision.progress import spark_progress

    card = load_card(detector_dir)
    with storage.atomic_dir(out, spark, overwrite=overwrite) as staging:
        with spark_progress(spark, "tile-detect"):
            images.write.mode("error").parquet(staging)
        written = spark.read.parquet(staging)
        _check_sources(sources, written)
        summary = {"out": out, **summarize(written), **(extra or {})}
        root = staging.rstrip("/")
        storage.write_text(root + "/" + PREDICTIONS_MARKER, json.dumps(
            {"model": str(detector_dir), "kind": card.kind, "labels": list(card.labels)}, indent=2), spark)
        storage.write_text(root + "/" + TILING_MARKER, json.dumps(summary, indent=2, default=str) + "\n", spark)
    return summary
