"""Small real detector and screen model directories for tests, built in seconds on the CPU.

* :func:`detector_model_dir` trains a narrow, randomly initialised FCOS-Lite on two scenes of
  coloured rectangles, one landscape and one portrait, so the letterbox pads on both axes
  (the serving tests). It is trained on exactly what it will be shown, through the model's
  own preprocessing. Built once per process.
* :func:`scene_detector` fits FCOS-Lite (frozen pretrained EfficientNet-Lite0, a small
  pyramid and head) on windows of synthetic training scenes: tinted Fashion-MNIST items,
  classes ``cool`` and ``warm`` (:mod:`sparkvision.testing.synthetic_scenes`).
* :func:`small_detector` does the same on any same-sized images and boxes you give it.
* :func:`colour_screen` writes a cheap tile classifier (labels background, object) as a
  real ONNX graph that passes tiles showing part of an item.

Each is exported exactly like ``sparkvision train --task detect`` exports a detector: ONNX
with outputs ``boxes`` and ``scores`` and a card of kind ``detector``.
"""

from __future__ import annotations

import functools
import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from run_cache import built_once

from sparkvision.testing.synthetic_scenes import fit_small_detector, train_scene_detector, write_colour_screen

CLASSES = ["red", "green"]
COLOURS = {"red": (230, 30, 30), "green": (30, 210, 60)}
INPUT = 96

#: (width, height, [(label, (xmin, ymin, xmax, ymax))]) in pixels of the image.
SCENES = [
    (240, 160, [("red", (30, 25, 110, 95)), ("green", (150, 60, 215, 140))]),
    (120, 200, [("green", (15, 20, 95, 85)), ("red", (25, 115, 100, 185))]),
]


def scene_png(index: int, scale: int = 1) -> bytes:
    """One scene as PNG bytes, ``scale`` times its size: dark background, solid rectangles."""
    width, height, objects = SCENES[index]
    pixels = np.full((height * scale, width * scale, 3), 20, np.uint8)
    for label, (x0, y0, x1, y1) in objects:
        pixels[y0 * scale:y1 * scale, x0 * scale:x1 * scale] = COLOURS[label]
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def truth(index: int, scale: int = 1) -> dict[str, np.ndarray]:
    """Label -> its box in pixels of ``scene_png(index, scale)``."""
    return {label: np.array(box, dtype=float) * scale for label, box in SCENES[index][2]}


@functools.cache
def detector_model_dir(steps: int = 150) -> Path:
    """The tiny scene detector's model directory, trained once per test run (shared by xdist workers)."""
    return built_once(f"tiny-detector-{steps}", lambda out: _train_detector(out, steps))[0]


def _train_detector(out: Path, steps: int) -> None:
    """About 30 s of one core: ``steps`` Adam steps at lr 1e-3 (150 reach IoU > 0.9 on every box).

    (At lr 2e-3 and above a box side's ReLU output can die early and never learn.)
    """
    import torch

    from sparkvision.config import PreprocessConfig
    from sparkvision.detection.loss import FCOSLoss
    from sparkvision.detection.postprocess import letterbox_of
    from sparkvision.models.efficientnet import EfficientNetLite
    from sparkvision.models.fcos import DetectorExport, FCOSLite
    from sparkvision.models.model_dir import ONNX_FILE, ModelCard, save_card
    from sparkvision.models.onnx_export import export_onnx
    from sparkvision.preprocess import ImagePreprocessor

    config = PreprocessConfig.preset("inception", size=(INPUT, INPUT), resize_mode="letterbox")
    batch = ImagePreprocessor(config)([scene_png(i) for i in range(len(SCENES))])
    assert batch.sizes is not None and len(batch.index) == len(SCENES)
    boxes, labels = [], []
    for (width, height, objects), size in zip(SCENES, batch.sizes, strict=True):
        assert tuple(size) == (width, height)
        placed = letterbox_of(width, height, config).to_input(np.array([b for _, b in objects], dtype=float))
        boxes.append(torch.tensor(placed, dtype=torch.float32))
        labels.append(torch.tensor([CLASSES.index(label) for label, _ in objects]))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # reproducible, and no threads spinning on a busy machine
    torch.manual_seed(0)
    model = FCOSLite(EfficientNetLite.from_name("efficientnet-lite0", num_classes=10), num_classes=len(CLASSES),
                     fpn_channels=32, head_convs=1)
    x = torch.from_numpy(batch.tensor)
    loss_fn = FCOSLoss(len(CLASSES), model.strides, model.size_ranges)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for module in model.backbone.modules():  # as training does: batch norms keep their statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    try:
        for _ in range(steps):
            loss, _ = loss_fn(model(x), boxes, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)

    export_onnx(DetectorExport(model.eval(), INPUT, INPUT).eval(), out / ONNX_FILE, (3, INPUT, INPUT),
                with_features=False, output_names=["boxes", "scores"])
    save_card(out, ModelCard(name="tiny-detector", kind="detector", labels=list(CLASSES), preprocess=config,
                             architecture="fcos_lite0", provenance={"note": "tests/detection_helpers.py"}))


def _one_thread() -> None:
    # On a busy shared machine, torch's spinning worker threads cost more than they give.
    import torch

    torch.set_num_threads(1)


def scene_detector(model_dir: str | Path, size: int = 128, **options: Any) -> dict[str, Any]:
    """A detector of detection-scene items on ``size`` px tiles; returns its training metrics."""
    _one_thread()
    return train_scene_detector(model_dir, size=size, **options)


def small_detector(model_dir: str | Path, images: np.ndarray, boxes: list[np.ndarray], classes: list[np.ndarray],
                   labels: list[str], **options: Any) -> dict[str, Any]:
    """A detector fitted on uint8 (N, H, W, 3) ``images`` with (x1, y1, x2, y2) ``boxes`` and class indices."""
    _one_thread()
    return fit_small_detector(model_dir, images, boxes, classes, labels, **options)


def colour_screen(model_dir: str | Path, size: int = 128) -> Path:
    return write_colour_screen(model_dir, size)
