"""Detection as a training task: FCOS-Lite on box-labelled datasets, through the shared epoch loop.

The loop (:mod:`.engine`) brings ranks, DDP, checkpoints, resuming, early stopping,
TensorBoard and ``curves.csv``; this task brings what is particular to boxes:

* **data**: rows of an ingested VOC/COCO dataset (``objects`` column); each image is
  letterboxed to the model size once, its boxes mapped into those input pixels by the
  same geometry the decoder inverts (:func:`sparkvision.detection.runner.letterbox_of`).
  Boxes marked ``difficult`` are not trained on, and are "ignore" in validation.
* **batches**: box-aware augmentation (scale jitter with random placement, flips,
  colour), then the FCOS loss;
* **validation**: mAP@0.5 (``val_map50``, pycocotools' 101-point AP at IoU 0.5) from
  counts that add up across ranks: true and false positives per class and score bin,
  and positives per class. It picks the best epoch;
* **export**: an ONNX graph with outputs ``boxes`` and ``scores`` and a card of kind
  ``detector``, checked against the torch network on validation images.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from torch import nn

from sparkvision.config import PreprocessConfig
from sparkvision.detection.augment import DetectionAugment, DetectionAugmenter
from sparkvision.detection.postprocess import DecodeSettings, decode
from sparkvision.training.tasks import TASKS, Batch, Task

log = logging.getLogger("sparkvision.training")

#: Score bins of the validation counts (AP is computed on scores rounded to 1/SCORE_BINS).
SCORE_BINS = 1000
#: Validation decodes like evaluation does: low threshold, at most 100 boxes per image.
VALIDATION_DECODE = DecodeSettings(score_threshold=0.05, iou_threshold=0.5, max_boxes=100)


@dataclass
class DetectionShard:
    """One rank's decoded rows: letterboxed uint8 images and, per image, boxes in input pixels."""

    images: np.ndarray
    boxes: list[np.ndarray]  # (M, 4) float64, input pixels
    labels: list[np.ndarray]  # (M,) int64 class indices
    difficult: list[np.ndarray]  # (M,) bool
    paths: list[str]
    decode_errors: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)


def object_counts(uri: str) -> dict[str, int]:
    """Boxes per class in a dataset's usable rows (what the class list and order come from)."""
    from sparkvision.training.data import read_column, read_index

    index = read_index(uri)
    rows = np.flatnonzero(np.fromiter((e is None for e in index.errors), dtype=bool, count=index.rows))
    counts: Counter[str] = Counter()
    for objects in read_column(index, rows, "objects"):
        counts.update(o["label"] for o in objects or ())
    return dict(sorted(counts.items()))


def load_detection_shard(uri: str, classes: list[str], preprocess: PreprocessConfig, rank: int, world: int,
                         decode_settings, progress: TextIO | None = None, desc: str = "decode") -> DetectionShard:
    from sparkvision.detection.postprocess import letterbox_of
    from sparkvision.preprocess import ImagePreprocessor
    from sparkvision.training.data import DECODE_CHUNK, read_column, read_contents, read_index, shard_rows

    index = read_index(uri)
    usable = np.flatnonzero(np.fromiter((e is None for e in index.errors), dtype=bool, count=index.rows))
    usable = usable[np.argsort(index.paths[usable].astype(str), kind="stable")]
    skipped = Counter(str(e).split(":", 1)[0] for e in index.errors if e is not None)
    rows = shard_rows(usable, rank, world)
    class_index = {c: i for i, c in enumerate(classes)}
    preprocessor = ImagePreprocessor(preprocess, decode_settings)
    height, width = preprocess.size
    images = np.empty((len(rows), height, width, preprocess.channels), dtype=np.uint8)
    boxes: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    difficult: list[np.ndarray] = []
    paths: list[str] = []
    errors: Counter[str] = Counter()
    filled = 0
    for start in range(0, len(rows), DECODE_CHUNK):
        part = rows[start:start + DECODE_CHUNK]
        pixels, ok, row_errors, sizes = preprocessor.load_uint8_sized(read_contents(index, part))
        objects = read_column(index, part[ok], "objects")
        images[filled:filled + len(ok)] = pixels
        filled += len(ok)
        errors.update(str(e).split(":", 1)[0] for e in row_errors if e is not None)
        for row, objs, (w, h) in zip(part[ok], objects, sizes, strict=True):
            kept = [o for o in objs or () if o["label"] in class_index]
            raw = np.array([[o["xmin"], o["ymin"], o["xmax"], o["ymax"]] for o in kept], dtype=np.float64)
            boxes.append(letterbox_of(int(w), int(h), preprocess).to_input(raw.reshape(-1, 4)))
            labels.append(np.array([class_index[o["label"]] for o in kept], dtype=np.int64))
            difficult.append(np.array([bool(o.get("difficult")) for o in kept], dtype=bool))
            paths.append(index.paths[row])
    if errors:
        log.warning("rank %d: %d rows of %s did not decode (%s); they are left out", rank, sum(errors.values()), uri,
                    dict(errors))
    return DetectionShard(images[:filled], boxes, labels, difficult, paths, dict(errors), dict(skipped))


@dataclass
class DetectionBatch(Batch):
    boxes: list[torch.Tensor] = field(default_factory=list)
    labels: list[torch.Tensor] = field(default_factory=list)


class DetectionTask(Task):
    """Boxes and classes per image: FCOS loss, mAP@0.5 validation, an ONNX detector."""

    name = "detect"
    train_metric_names = ("loss_cls", "loss_box", "loss_ctr")
    eval_metric_names = ("map50",)
    maximize = frozenset({"val_map50"})
    min_classes = 1

    @classmethod
    def data_classes(cls, uri: str) -> dict[str, int]:
        return object_counts(uri)

    def load(self, uri: str, part: str, rank: int, world: int, progress: TextIO | None) -> DetectionShard:
        return load_detection_shard(uri, self.job.classes, self.job.preprocess, rank, world, self.job.decode, progress,
                                    f"decode {part}")

    def prepare(self, preprocess: PreprocessConfig) -> None:
        from sparkvision.detection.loss import FCOSLoss
        from sparkvision.models.fcos import SIZE_RANGES, STRIDES

        super().prepare(preprocess)
        self.loss_fn = FCOSLoss(len(self.job.classes), STRIDES, SIZE_RANGES)
        augment = self.config.augment
        # The classification augment settings name what a user asked for; geometry always
        # moves boxes here, so flips and scale jitter are on unless switched off.
        self.augmenter = DetectionAugmenter(DetectionAugment(
            hflip_prob=augment.hflip_prob if augment.any else 0.5,
            scale_prob=augment.crop_prob if augment.any else 0.8,
            brightness=augment.brightness if augment.any else 0.2,
            contrast=augment.contrast if augment.any else 0.2,
            saturation=augment.saturation if augment.any else 0.2,
        ))
        self._last_parts: dict[str, float] = {}

    def build_model(self) -> tuple[nn.Module, list[dict], list[nn.Module]]:
        from sparkvision.models import create_model

        model_cfg = self.config.model
        pretrained = True if model_cfg.pretrained is None else model_cfg.pretrained
        model = create_model(model_cfg.arch, pretrained=pretrained, num_classes=len(self.job.classes))
        if not hasattr(model, "backbone") or not hasattr(model, "stages"):
            raise ValueError(f"{model_cfg.arch!r} is not a detector; --task detect needs one such as fcos_lite0")
        frozen: list[nn.Module] = []
        # Batch norms keep their ImageNet statistics (detection batches are small), and the
        # backbone's first stages stay as pretrained: most of the compute, little to gain.
        for module in model.backbone.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.requires_grad_(False)
                frozen.append(module)
        stages = model.stages()  # stem, backbone blocks, then neck + head (always trained)
        trainable = len(stages) if model_cfg.unfreeze_stages is None else max(1, model_cfg.unfreeze_stages)
        for stage in stages[: len(stages) - trainable]:
            stage.requires_grad_(False)
            frozen.append(stage)
        model.to(self.device)
        head = {id(p) for p in stages[-1].parameters()}
        backbone = [p for p in model.parameters() if p.requires_grad and id(p) not in head]
        groups = [{"params": [p for p in stages[-1].parameters() if p.requires_grad], "lr_mult": 1.0}]
        if backbone:
            groups.append({"params": backbone, "lr_mult": model_cfg.backbone_lr_mult})
        return model, groups, frozen

    def train_batch(self, shard: DetectionShard, rows: np.ndarray, rng: np.random.Generator) -> Batch:
        x = self.to_unit(shard.images[rows])
        boxes = [shard.boxes[i][~shard.difficult[i]] for i in rows]
        labels = [shard.labels[i][~shard.difficult[i]] for i in rows]
        x, boxes, labels = self.augmenter(x, boxes, labels, rng)
        x = self.normalized(x)
        return DetectionBatch(x, None, [torch.as_tensor(b, dtype=torch.float32, device=self.device) for b in boxes],
                              [torch.as_tensor(lab, device=self.device) for lab in labels])

    def loss(self, outputs: Any, batch: DetectionBatch) -> torch.Tensor:  # type: ignore[override]
        total, parts = self.loss_fn(outputs, batch.boxes, batch.labels)
        self._last_parts = parts
        return total

    def train_counts(self, outputs: Any, batch: Batch) -> torch.Tensor:
        n = len(batch.inputs)
        p = self._last_parts
        return torch.tensor([p.get("cls", 0.0) * n, p.get("box", 0.0) * n, p.get("ctr", 0.0) * n], dtype=torch.float64)

    def evaluate(self, model: nn.Module, shard: DetectionShard) -> torch.Tensor:
        """[tp (C x bins), fp (C x bins), positives (C), images] at IoU 0.5, summable over ranks."""
        from sparkvision.evaluation.detection_metrics import COCO50, FP, TP, match_image
        from sparkvision.models.fcos import DetectorExport

        classes = len(self.job.classes)
        tp = np.zeros((classes, SCORE_BINS + 1))
        fp = np.zeros((classes, SCORE_BINS + 1))
        positives = np.zeros(classes)
        height, width = self.preprocess.size
        was_training = model.training
        exported = DetectorExport(model, height, width).to(self.device).eval()
        names = self.job.classes
        with torch.no_grad():
            for start in range(0, len(shard), self.config.data.eval_batch_size):
                x = self.normalized(self.to_unit(shard.images[start:start + self.config.data.eval_batch_size]))
                boxes, scores = exported(x)
                for k in range(len(x)):
                    i = start + k
                    dets = decode(boxes[k].cpu().numpy(), scores[k].cpu().numpy(), VALIDATION_DECODE)
                    truths = [{"label": names[c], "xmin": b[0], "ymin": b[1], "xmax": b[2], "ymax": b[3],
                               "difficult": bool(d)}
                              for b, c, d in zip(shard.boxes[i], shard.labels[i], shard.difficult[i], strict=True)]
                    match = match_image(truths, dets.records(names), VALIDATION_DECODE.max_boxes)
                    bins = np.clip(np.rint(match.scores * SCORE_BINS), 0, SCORE_BINS).astype(np.int64)
                    cls = np.array([names.index(lab) for lab in match.labels], dtype=np.int64)
                    outcome = match.outcome[:, COCO50] if len(match.labels) else np.zeros(0)
                    np.add.at(tp, (cls[outcome == TP], bins[outcome == TP]), 1)
                    np.add.at(fp, (cls[outcome == FP], bins[outcome == FP]), 1)
                    np.add.at(positives, shard.labels[i][~shard.difficult[i]], 1)
        model.train(was_training)
        return torch.from_numpy(np.concatenate([tp.ravel(), fp.ravel(), positives, [len(shard)]]))

    def metrics(self, counts: torch.Tensor, prefix: str) -> dict[str, float]:
        return detection_metrics(counts.numpy(), self.job.classes, prefix)

    def export(self, model: nn.Module, metrics: dict[str, Any], check_images: np.ndarray | None) -> dict[str, Any]:
        return write_detector(self.job, self.preprocess, model, check_images, metrics)


def detection_metrics(counts: np.ndarray, classes: list[str], prefix: str) -> dict[str, float]:
    """mAP@0.5 (and per-class AP) from :meth:`DetectionTask.evaluate`'s summed counts."""
    from sparkvision.evaluation.detection_metrics import coco_ap

    c, b = len(classes), SCORE_BINS + 1
    tp = counts[: c * b].reshape(c, b)[:, ::-1].cumsum(axis=1)
    fp = counts[c * b: 2 * c * b].reshape(c, b)[:, ::-1].cumsum(axis=1)
    positives = counts[2 * c * b: 2 * c * b + c]
    out: dict[str, float] = {}
    aps = []
    for k, name in enumerate(classes):
        if positives[k] <= 0:
            continue
        seen = (tp[k] + fp[k]) > 0
        step = np.flatnonzero(np.diff(np.concatenate([[0.0], tp[k] + fp[k]])) > 0)
        recall = tp[k][step] / positives[k]
        precision = tp[k][step] / np.maximum(tp[k][step] + fp[k][step], 1)
        ap = coco_ap(recall, precision) if seen.any() else 0.0
        out[f"{prefix}_ap50_{name}"] = ap
        aps.append(ap)
    out[f"{prefix}_map50"] = float(np.mean(aps)) if aps else 0.0
    out[f"{prefix}_count"] = int(counts[-1])
    return out


class _ScoresOnly(nn.Module):
    """The graph's ``scores`` alone, for the ONNX-vs-torch self-check."""

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.graph = graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)[1]


def write_detector(job, preprocess: PreprocessConfig, model: nn.Module, check_images: np.ndarray | None,
                   metrics: dict[str, Any]) -> dict[str, Any]:
    """Write ``model.onnx`` (outputs ``boxes``, ``scores``) and a card of kind ``detector``."""
    from sparkvision.models.fcos import DetectorExport
    from sparkvision.models.model_dir import ONNX_FILE, ModelCard, save_card
    from sparkvision.models.onnx_export import export_onnx
    from sparkvision.training.export import onnx_agreement, provenance

    out_dir = Path(job.out_dir)
    cpu_model = copy.deepcopy(model).cpu().eval().to(memory_format=torch.contiguous_format)
    height, width = preprocess.size
    graph = DetectorExport(cpu_model, height, width).eval()
    onnx_file = export_onnx(graph, out_dir / ONNX_FILE, (preprocess.channels, height, width), with_features=False,
                            output_names=["boxes", "scores"])
    metrics = {**metrics, "onnx_max_abs_diff": onnx_agreement(_ScoresOnly(graph), onnx_file, check_images,
                                                              preprocess, output="scores")}
    card = ModelCard(
        name=job.name, kind="detector", labels=list(job.classes), preprocess=preprocess,
        architecture=job.config.model.arch,
        provenance=provenance(job, boxes_per_class=dict(zip(job.classes, job.class_counts, strict=True)),
                              decode=VALIDATION_DECODE.__dict__),
        metrics=metrics,
    )
    save_card(out_dir, card)
    log.info("detector written to %s", out_dir)
    return metrics


TASKS[DetectionTask.name] = DetectionTask
