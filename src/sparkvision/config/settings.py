"""Settings of ingestion, Spark, transfer learning, evaluation, tiling and deployment.

Other modules take these dataclasses instead of loose literals, so a default
changes here and nowhere else. Environment variables (``SPARKVISION_*``) are
read only in this package.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from sparkvision.config.validation import Validated

#: Pixels above which a decode is refused unless a caller raises the limit.
#: Pillow's own guard (89.5 MP) is the reference; tiling passes a higher limit explicitly.
DEFAULT_MAX_PIXELS = 89_478_485
#: The higher limit that tiling uses for very large scenes (e.g. 20k x 20k = 400 MP).
TILING_MAX_PIXELS = 1_000_000_000

ResizeMode = Literal["resize", "center_crop", "letterbox"]
Interpolation = Literal["nearest", "bilinear", "bicubic", "lanczos", "box"]

#: Normalisation presets, (mean, std) per channel in [0, 1] units.
NORMALIZATION_PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # EfficientNet-Lite and Inception-style models: (x/255 - 0.5) / 0.5, i.e. [-1, 1].
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    # Plain x/255.
    "unit": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"SPARKVISION_{name}", default)


def cache_dir() -> Path:
    """Where derived artefacts (ONNX exports of registered models) are cached."""
    root = _env("CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "sparkvision"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class SparkSettings(Validated):
    """How the SparkSession is built: embedded by default, any cluster by ``master``."""

    master: str = field(default_factory=lambda: _env("MASTER", "local[*]") or "local[*]")
    #: A Spark Connect URL (``sc://host:port``, else ``$SPARK_REMOTE``): the session is a Connect
    #: client of that server and ``master`` is not used.
    remote: str | None = field(default_factory=lambda: os.environ.get("SPARK_REMOTE") or None)
    app_name: str = "sparkvision"
    conf: dict[str, str] = field(default_factory=dict)
    driver_memory: str = "4g"
    executor_memory: str = "4g"
    log_level: str = "WARN"
    #: Rows per Arrow batch handed to Python UDFs: small enough that a batch of
    #: decoded 224 px images stays well below 100 MB.
    arrow_batch_rows: int = 256
    #: Target bytes per input partition of image files, and the per-file open cost
    #: Spark charges. Images are small, so the 4 MB default open cost would make
    #: partition counts depend on file counts in surprising ways.
    max_partition_bytes: int = 64 * 1024 * 1024
    open_cost_bytes: int = 256 * 1024
    ui: bool = False

    def with_conf(self, **extra: str) -> SparkSettings:
        return replace(self, conf={**self.conf, **extra})


@dataclass(frozen=True)
class DecodeSettings(Validated):
    """Rules for turning stored bytes into pixels safely."""

    max_pixels: int = field(
        default_factory=lambda: int(_env("MAX_PIXELS", str(DEFAULT_MAX_PIXELS)) or DEFAULT_MAX_PIXELS)
    )
    #: Transparent pixels are composited over this colour (RGB, 0-255) before alpha is dropped.
    alpha_background: tuple[int, int, int] = (255, 255, 255)
    #: Let Pillow decode JPEGs at a reduced DCT scale when the target is much smaller.
    jpeg_draft: bool = True


@dataclass(frozen=True)
class PreprocessConfig(Validated):
    """How pixels become a model's input tensor; one per model, shared by training,
    batch inference and serving so they can never disagree."""

    size: tuple[int, int] = (224, 224)  # (height, width)
    channels: Literal[1, 3] = 3
    resize_mode: ResizeMode = "resize"
    interpolation: Interpolation = "bilinear"
    #: For center_crop: the shorter side is first resized to size / crop_pct.
    crop_pct: float = 0.875
    mean: tuple[float, ...] = NORMALIZATION_PRESETS["inception"][0]
    std: tuple[float, ...] = NORMALIZATION_PRESETS["inception"][1]
    #: Fill value (0-255) of letterbox borders.
    pad_value: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(
                f"mean/std need {self.channels} values for {self.channels} channels, "
                f"got mean={self.mean!r} std={self.std!r}"
            )
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct!r}")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> PreprocessConfig:
        """A config with a named normalisation (``imagenet``, ``inception``, ``unit``)."""
        if name not in NORMALIZATION_PRESETS:
            raise ValueError(f"unknown normalisation preset {name!r}; known: {sorted(NORMALIZATION_PRESETS)}")
        mean, std = NORMALIZATION_PRESETS[name]
        channels = overrides.get("channels", 3)
        if channels == 1:
            mean, std = (sum(mean) / 3,), (sum(std) / 3,)
        return cls(mean=mean, std=std, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessConfig:
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        for key in ("size", "mean", "std"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)


@dataclass(frozen=True)
class IngestSettings(Validated):
    """What counts as an image file when a folder is listed."""

    extensions: tuple[str, ...] = (
        ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm", ".pnm",
    )
    recursive: bool = True
    #: Files larger than this are reported as ``too_large`` instead of being read
    #: (a row's bytes must fit comfortably in one Arrow batch).
    max_file_bytes: int = 256 * 1024 * 1024
    #: Target compressed bytes per Parquet file written by ``ingest``.
    target_file_bytes: int = 128 * 1024 * 1024


@dataclass(frozen=True)
class EvaluationSettings(Validated):
    """How ``evaluate`` judges predictions and what its report shows."""

    #: The k of top-k accuracy (top-1 from the probabilities is always reported too).
    top_k: int = 5
    #: Equal-width confidence bins over [0, 1] for expected calibration error and the
    #: reliability diagram (15, as in Guo et al. 2017, "On Calibration of Modern Neural Networks").
    calibration_bins: int = 15
    #: Most confidently wrong predictions shown as thumbnails.
    gallery_size: int = 24
    #: Longest side of a gallery thumbnail, in pixels.
    thumbnail_px: int = 160
    #: Images larger than this are not read for a thumbnail (the row shows why instead).
    max_thumbnail_bytes: int = 64 * 1024 * 1024
    #: The heat map shows at most this many classes (those with the most errors) so it stays readable.
    max_heatmap_classes: int = 40


@dataclass(frozen=True)
class DetectionEvaluationSettings(Validated):
    """How ``evaluate --task detect`` matches boxes and what its report shows."""

    #: The operating point: precision, recall and F1 "at threshold", each image's F1 that
    #: orders the gallery, and the predicted boxes drawn there use boxes with score >= this.
    score_threshold: float = 0.5
    #: At most this many boxes per image and class, the highest scored first (pycocotools'
    #: ``maxDets=100``); None keeps every box.
    max_detections: int | None = 100
    #: Scores are rounded to this step before counting, so the counts that reach the driver
    #: stay bounded (at most 1/step + 1 score values per class); boxes whose scores round
    #: to the same value count as a tie.
    score_resolution: float = 1e-6
    #: Points kept of each class's precision-recall curve (metrics.json and the plot).
    curve_points: int = 200
    #: Images in the gallery, worst first.
    gallery_size: int = 24
    #: Longest side of a gallery image with its boxes drawn, in pixels.
    thumbnail_px: int = 480


@dataclass(frozen=True)
class ClusterSettings(Validated):
    """A Spark standalone cluster on loopback (``sparkvision.testing.cluster``): tests, benchmarks, trying a cluster."""

    workers: int = 2
    cores_per_worker: int = 1
    #: What each worker offers its executors; at least ``SparkSettings.executor_memory``,
    #: or an application asking for the default would never get an executor.
    worker_memory: str = "4g"
    #: Heap of the master and worker daemons themselves (Spark's default is 1g each).
    daemon_memory: str = "512m"
    host: str = "127.0.0.1"
    #: Seconds to wait for the master, and then for every worker, to report ALIVE.
    start_timeout_s: float = 120.0
    #: Seconds a stopped daemon gets after SIGTERM before its process group is killed.
    stop_timeout_s: float = 15.0


@dataclass(frozen=True)
class TilingSettings(Validated):
    """How huge images are cut into overlapping model-sized tiles (``sparkvision.tiling``)."""

    #: Tile side in pixels of its pyramid level (square tiles, what a CNN takes).
    size: int = 224
    #: Fraction of ``size`` shared by neighbouring tiles, in [0, 1).
    overlap: float = 0.1
    #: Pyramid levels to tile: level L is the image box-averaged by 2**L.
    levels: tuple[int, ...] = (0,)
    #: Image edges: ``shift`` moves the last tile of a row/column inward so every tile lies
    #: inside the image (more overlap there); ``pad`` keeps the regular stride and fills
    #: what lies beyond the edge with ``pad_value``. Images smaller than a tile are padded either way.
    edge: Literal["shift", "pad"] = "shift"
    pad_value: int = 0
    #: Tiles whose largest per-channel pixel standard deviation (0-255 units) is below this are background:
    #: kept as counted rows without bytes. None keeps every tile.
    background_std: float | None = None
    #: How tile bytes are encoded: PNG (lossless, keeps 16-bit grey) or JPEG.
    tile_format: Literal["PNG", "JPEG"] = "PNG"
    jpeg_quality: int = 95
    #: zlib level of PNG tiles; 1 is several times faster than 6 and barely larger for photos.
    png_compress_level: int = 1
    #: Decompression-bomb guard for tiling: pixels of one page at full resolution.
    max_pixels: int = TILING_MAX_PIXELS
    #: Formats without region access (JPEG at full resolution, WebP, BMP, interlaced PNG)
    #: are decoded whole; above this many decoded bytes such a source is refused.
    max_decode_bytes: int = 512 * 1024 * 1024
    #: Largest file read whole into memory (formats that need their bytes in memory).
    max_file_bytes: int = 1024 * 1024 * 1024
    #: (center, width) of a linear window mapping 16-bit, signed, float and DICOM values to
    #: 8 bits. None: 16-bit grey is kept as 16-bit tiles; DICOM uses the file's window.
    window: tuple[float, float] | None = None
    #: Tile rows (at a level) per Spark work unit; units of one big scene spread over tasks.
    rows_per_unit: int = 4
    #: Decoded TIFF tiles/strips kept per reader, so overlapping tiles decode each segment once.
    segment_cache_bytes: int = 32 * 1024 * 1024
    #: Spark partitions of the work units; None: 2 x default parallelism.
    partitions: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.size < 1:
            raise ValueError(f"tile size must be >= 1, got {self.size!r}")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"overlap is a fraction of the tile size in [0, 1), got {self.overlap!r}")
        if not self.levels or any(level < 0 for level in self.levels):
            raise ValueError(f"levels must be non-negative pyramid levels, got {self.levels!r}")
        if self.window is not None and (len(self.window) != 2 or self.window[1] <= 0):
            raise ValueError(f"window is (center, width) with width > 0, got {self.window!r}")

    @property
    def overlap_pixels(self) -> int:
        return round(self.size * self.overlap)

    @property
    def stride(self) -> int:
        return self.size - self.overlap_pixels


@dataclass(frozen=True)
class HeatmapSettings(Validated):
    """How tile predictions go back onto their source image (``sparkvision.tiling.heatmap``)."""

    #: Per-image label from tile probabilities: ``max`` or ``mean`` of each class over
    #: tiles, or ``vote`` (most frequent tile prediction).
    method: Literal["max", "mean", "vote"] = "max"
    #: A class meaning "nothing here": no heat map or boxes for it, and the image gets it
    #: only when no other class reaches ``threshold``.
    background_class: str | None = None
    #: Heat-map value above which cells form regions (boxes); also the image-label threshold.
    threshold: float = 0.5
    #: Heat-map cell side in full-resolution pixels; None: a quarter of a tile's footprint.
    cell: int | None = None
    #: Pyramid level whose tiles make the heat map; None: the finest level present.
    level: int | None = None
    #: Regions of fewer cells are dropped (isolated false alarms).
    min_cells: int = 1
    #: Classes drawn at most (the highest-scoring per image) when a model has many.
    max_classes: int = 5
    #: Longest side of the downscaled original the heat map is blended over.
    overlay_max_side: int = 1024
    #: Opacity of the heat colours over the original.
    alpha: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.threshold <= 1:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold!r}")
        if self.cell is not None and self.cell < 1:
            raise ValueError(f"cell must be >= 1 pixel, got {self.cell!r}")


@dataclass(frozen=True)
class FeaturizeSettings(Validated):
    """How Spark tasks run an ONNX image model (featurizer, predictor, batch prediction)."""

    model_name: str = "efficientnet_lite0"
    #: Images per ONNX Runtime call. Measured on 2 cores with 1 ORT thread per task,
    #: batches of 8-16 beat 32-64 (the activations of small batches stay in cache).
    batch_size: int = 16


@dataclass(frozen=True)
class PlanSettings(Validated):
    """``sparkvision plan``: how much it measures, and what the cluster it sizes looks like."""

    #: Images read from the source (or made, without one) and measured.
    sample: int = 64
    #: The second warm run predicts the sample this many times over: the difference between
    #: the two runs is the cost of more images, free of a job's fixed cost.
    scale: int = 8
    #: Each warm run is repeated and the fastest kept, as a benchmark would.
    repeats: int = 2
    cores_per_node: int = 16
    #: Read bandwidth of the storage the images come from, in GB/s, to say when it limits.
    read_gb_s: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("sample", "scale", "repeats", "cores_per_node"):
            if getattr(self, name) < 1:
                raise ValueError(f"PlanSettings.{name} must be at least 1, got {getattr(self, name)}")
        if self.scale < 2:
            raise ValueError(f"PlanSettings.scale must be at least 2, got {self.scale}")
        if self.read_gb_s <= 0:
            raise ValueError(f"PlanSettings.read_gb_s must be positive, got {self.read_gb_s}")


ClassifierName = Literal["logreg", "rf", "gbt", "mlp"]


@dataclass(frozen=True)
class TransferSettings(Validated):
    """Transfer learning: a frozen backbone's features + an MLlib classifier (``sparkvision fit``)."""

    model_name: str = "efficientnet_lite0"
    #: Backbone output the classifier is trained on: "features" (pooled) or "logits".
    output: Literal["features", "logits"] = "features"
    #: Test-time augmentation of the features, in fitting and in every later prediction:
    #: "flip" averages each image's features with its mirror image's (twice the CNN work).
    tta: Literal["none", "flip"] = "none"
    classifier: ClassifierName = "logreg"
    #: Principal components the classifier learns from (an MLlib PCA stage fitted on the training
    #: features, kept in the saved pipeline); None: the backbone's features as they are.
    pca: int | None = None
    #: Keep the backbone quantised to int8 (calibrated on training images) when the validation accuracy of
    #: the int8 model is within ``int8_max_drop`` points of fp32's; otherwise keep fp32 and say why.
    int8: bool = False
    int8_max_drop: float = 0.5
    batch_size: int = FeaturizeSettings.batch_size
    seed: int = 42
    #: Share of each class held out for validation when no --val source is given.
    val_fraction: float = 0.2
    #: Grid search over the classifier's parameters (features computed once and cached).
    grid: bool = False
    grid_folds: int = 3
    # logreg: multinomial logistic regression. regParam and standardization left at None are
    # chosen by grid_folds-fold cross-validation on the cached features (sparkvision.ml.selection)
    # over logreg_grid_reg x {True, False}; the grid grows past an end when the best value is there.
    # MLlib's fixed regParam 0.01 on standardised features lost 0.5-3 points to a cross-validated
    # scikit-learn probe on the same features (issue 13); standardising amplifies the pooled
    # features' low-variance dimensions.
    logreg_reg_param: float | None = None
    logreg_standardization: bool | None = None
    logreg_elastic_net: float = 0.0
    #: MLlib's L-BFGS steps. Without standardization it converges slowly (it works in standardised
    #: space, where the penalty is then badly conditioned): on Fashion-MNIST's 4,000 vectors, 200 steps
    #: gave 0.871 val accuracy and 1,000 gave 0.887.
    logreg_max_iter: int = 1000
    #: scikit-learn L-BFGS steps per candidate of the selection (warm-started along the path).
    logreg_select_max_iter: int = 200
    #: Half-decades over MLlib's scale (mean log loss + regParam * ||w||^2 / 2).
    logreg_grid_reg: tuple[float, ...] = (1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001, 0.0003, 0.0001)
    #: Rows (a stratified seeded sample) the selection cross-validates on, at most; the final fit uses all.
    logreg_select_max_rows: int = 20_000
    # rf
    rf_num_trees: int = 200
    rf_max_depth: int = 10
    rf_grid_trees: tuple[int, ...] = (100, 200)
    rf_grid_depth: tuple[int, ...] = (6, 12)
    # gbt, one binary GBT per class through OneVsRest
    gbt_max_iter: int = 30
    gbt_max_depth: int = 4
    gbt_grid_iter: tuple[int, ...] = (20, 40)
    gbt_grid_depth: tuple[int, ...] = (3, 5)
    # mlp: hidden layers between the features and the classes.
    mlp_hidden: tuple[int, ...] = (256,)
    mlp_max_iter: int = 300
    mlp_grid_hidden: tuple[tuple[int, ...], ...] = ((128,), (256,), (512,))
    mlp_grid_step: tuple[float, ...] = (0.03,)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction!r}")
        if self.grid_folds < 2:
            raise ValueError(f"grid_folds must be >= 2, got {self.grid_folds!r}")
        if self.logreg_reg_param is not None and self.logreg_reg_param < 0:
            raise ValueError(f"logreg_reg_param must be >= 0, got {self.logreg_reg_param!r}")
        if not self.logreg_grid_reg or min(self.logreg_grid_reg) <= 0:
            raise ValueError(f"logreg_grid_reg must hold positive values, got {self.logreg_grid_reg!r}")
        if self.pca is not None and (isinstance(self.pca, bool) or not isinstance(self.pca, int) or self.pca < 1):
            raise ValueError(f"pca (--pca K) must be a positive number of components, got {self.pca!r}")
        if self.int8_max_drop < 0:
            raise ValueError(f"int8_max_drop (--int8-max-drop) must be >= 0 points, got {self.int8_max_drop!r}")

    def check_feature_count(self, num_features: int) -> None:
        """``pca`` must be at most the backbone's feature count, known once the backbone is resolved."""
        if self.pca is not None and self.pca > num_features:
            raise ValueError(f"pca (--pca K) must be at most the {num_features} {self.output} of {self.model_name}, "
                             f"got {self.pca}")


QuantMethod = Literal["static", "dynamic"]
QuantType8 = Literal["uint8", "int8"]


@dataclass(frozen=True)
class QuantizeSettings(Validated):
    """int8 quantisation with ONNX Runtime (see README "Deployment" for the measurements
    behind these defaults: static QDQ with per-channel weights kept accuracy within a
    point and ran >2x faster; dynamic ran at a few images/s on this CNN, per-tensor
    weights lost more accuracy)."""

    method: QuantMethod = "static"
    per_channel: bool = True
    #: Activations uint8 (asymmetric) and weights int8: ONNX Runtime's recommendation for
    #: x86 CPUs, whose VNNI kernels take u8 x s8 products.
    activation_type: QuantType8 = "uint8"
    weight_type: QuantType8 = "int8"
    #: Images read through the ingestion layer for calibration (a few hundred suffice).
    calibration_images: int = 300
    calibration_batch: int = 16
    calibrate_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    #: Run ONNX Runtime's pre-processing (shape inference, Conv+BN fusion) first.
    preprocess_graph: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.calibration_images < 1 or self.calibration_batch < 1:
            raise ValueError("calibration_images and calibration_batch must be >= 1")


@dataclass(frozen=True)
class PruneSettings(Validated):
    """Structured pruning: whole output channels of convolutions, smallest L-n norm first."""

    amount: float = 0.3
    #: Norm used to rank channels (torch.nn.utils.prune.ln_structured's ``n``).
    norm: int = 2
    #: Depthwise convolutions have one filter per channel; pruning them too zeroes the
    #: same channels twice over, so they are left alone by default.
    include_depthwise: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.amount < 1:
            raise ValueError(f"prune amount must be in (0, 1), got {self.amount!r}")
        if self.norm < 1:
            raise ValueError(f"norm must be >= 1, got {self.norm!r}")


@dataclass(frozen=True)
class MeasureSettings(Validated):
    """How an optimisation is judged against the model it came from."""

    #: Refuse to write an optimised model whose accuracy drops more than this (points).
    max_accuracy_drop: float = 1.0
    #: Validation images read (all of the source when it has fewer).
    val_images: int = 1000
    #: Throughput: images per ONNX Runtime call, images timed per round, rounds.
    batch_size: int = 32
    bench_images: int = 128
    rounds: int = 3
    #: ONNX Runtime threads (None: every core), the same for both models compared.
    threads: int | None = None
    seed: int = 0


@dataclass(frozen=True)
class ServeSettings(Validated):
    """The HTTP service: limits that turn bad requests into 4xx answers, and micro-batching."""

    host: str = "127.0.0.1"
    port: int = 8000
    #: Group concurrent requests into one ONNX Runtime call (off: one call per request).
    batching: bool = True
    max_batch: int = 32
    #: How long the first request of a batch waits for company when the model is idle. 0 =
    #: batch only what queued up while the model was busy: on CPU a wait bought no
    #: throughput at 8 or 32 clients and cost a third of it at 1 (bench_serve).
    batch_window_ms: float = 0.0
    max_body_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_files: int = 16
    top_k: int = 5
    #: A classifier's test-time augmentation; None: what its card records (what it was fitted with).
    tta: Literal["none", "flip"] | None = None
    #: A detector's defaults per request: boxes scoring at least ``score_threshold`` (0.3: boxes
    #: worth looking at; evaluation keeps 0.05 for mAP), per-class NMS, at most ``max_boxes``.
    score_threshold: float = 0.3
    iou_threshold: float = 0.5
    max_boxes: int = 100
    #: ONNX Runtime threads (None: every core) and threads decoding uploads.
    threads: int | None = None
    decode_workers: int = 2
    log_level: str = "info"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_batch < 1 or self.max_files < 1 or self.top_k < 1:
            raise ValueError("max_batch, max_files and top_k must be >= 1")
        if self.batch_window_ms < 0:
            raise ValueError(f"batch_window_ms must be >= 0, got {self.batch_window_ms!r}")
        if self.max_body_bytes < 1 or self.max_pixels < 1:
            raise ValueError("max_body_bytes and max_pixels must be >= 1")
        if not (0.0 <= self.score_threshold <= 1.0 and 0.0 < self.iou_threshold <= 1.0 and self.max_boxes >= 1):
            raise ValueError(f"need score_threshold in [0, 1] (got {self.score_threshold!r}), iou_threshold in "
                             f"(0, 1] (got {self.iou_threshold!r}) and max_boxes >= 1 (got {self.max_boxes!r})")

    def detection(self, **overrides: float | int | None):
        """The box decoding of a detector (``overrides`` that are not None replace the defaults)."""
        from sparkvision.detection.postprocess import DecodeSettings as BoxDecoding

        values = {"score_threshold": self.score_threshold, "iou_threshold": self.iou_threshold,
                  "max_boxes": self.max_boxes}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return BoxDecoding(**values)
