"""Synthetic scenes anyone can rebuild: real objects pasted at known places on a large terrain.

The objects are real Fashion-MNIST items (the Debian ``dataset-fashion-mnist`` package
the README installs), scaled up to tile size, tinted, and alpha-blended onto a terrain of
sinusoid octaves plus per-pixel grain. Every region renders independently from the
scene's seed, so a 20,000 x 20,000 scene is written as a tiled TIFF one TIFF tile at a
time, never held whole. Ground truth is each object's tight box.

:func:`train_object_classifier` fits a *real* "object vs background" tile classifier
(logistic regression on EfficientNet-Lite0 features of windows cut from a separate
training scene, with training-split items) and saves it as an ``onnx`` model directory:
the backbone's graph with the regression appended as the ``logits`` layer.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sparkvision.io.builtin import FASHION_MNIST_DIR, read_idx
from sparkvision.storage import atomic_file

log = logging.getLogger(__name__)

OBJECT, BACKGROUND = "object", "background"


@dataclass(frozen=True)
class PlacedObject:
    x: int  # top-left of the pasted square in scene pixels
    y: int
    item: np.ndarray = field(repr=False)  # uint8 (s, s): the item scaled up (1 byte a pixel: big scenes stay small)
    tint: tuple[float, float, float]
    box: tuple[int, int, int, int]  # tight (x, y, w, h) of the visible item
    label: str = "object"

    @property
    def size(self) -> int:
        return self.item.shape[0]

    def alpha(self, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
        """Opacity in [0, 1]: opaque items, only the faint outline blends."""
        return np.clip(self.item[rows, cols].astype(np.float32) / 48.0, 0.0, 1.0)

    def colour(self, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
        shade = 0.45 + 0.55 * self.item[rows, cols].astype(np.float32)[..., None] / 255.0
        return np.asarray(self.tint, dtype=np.float32)[None, None, :] * shade


@dataclass(frozen=True)
class SceneSpec:
    width: int
    height: int
    seed: int
    objects: list[PlacedObject]

    @property
    def boxes(self) -> list[tuple[int, int, int, int]]:
        return [o.box for o in self.objects]

    @property
    def labels(self) -> list[str]:
        return [o.label for o in self.objects]


#: Fashion-MNIST classes with solid silhouettes (t-shirt, pullover, dress, coat, shirt, bag,
#: ankle boot): an object's box is then mostly object, not the terrain between sandal straps.
SOLID_CLASSES = (0, 2, 3, 4, 6, 8, 9)


def fashion_items(part: str = "test", classes: tuple[int, ...] = SOLID_CLASSES) -> np.ndarray:
    """Fashion-MNIST images (N, 28, 28) uint8 of the ``train`` or ``test`` part, of ``classes``."""
    prefix = {"train": "train", "test": "t10k"}[part]
    images = read_idx(os.path.join(FASHION_MNIST_DIR, f"{prefix}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(FASHION_MNIST_DIR, f"{prefix}-labels-idx1-ubyte.gz"))
    return images[np.isin(labels, classes)]


def _object(item: np.ndarray, size: int, rng: np.random.Generator) -> tuple[np.ndarray, tuple, tuple]:
    big = np.asarray(Image.fromarray(item).resize((size, size), Image.Resampling.BICUBIC), dtype=np.uint8)
    tint = tuple(float(v) for v in rng.uniform(120, 255, size=3))
    visible = np.argwhere(big / 48.0 > 0.1)
    (y0, x0), (y1, x1) = visible.min(axis=0), visible.max(axis=0) + 1
    return big, tint, (int(x0), int(y0), int(x1 - x0), int(y1 - y0))


def make_scene(
    width: int,
    height: int,
    n_objects: int,
    seed: int = 0,
    part: str = "test",
    object_size: tuple[int, int] = (440, 640),
    gap: int = 448,
) -> SceneSpec:
    """Place ``n_objects`` items without overlap (``gap`` pixels apart) at random positions.

    Objects span two or three 224 px tiles and stand two tiles apart: the regime where
    tile classification localizes. A heat map at tile resolution cannot part objects
    whose tiles touch (their regions join), nor outline one much smaller than a tile.
    """
    rng = np.random.default_rng(seed)
    items = fashion_items(part)
    placed: list[PlacedObject] = []
    attempts = 0
    while len(placed) < n_objects:
        attempts += 1
        if attempts > 200 * n_objects:
            raise ValueError(f"cannot place {n_objects} objects of {object_size} px in {width}x{height}")
        size = int(rng.integers(object_size[0], object_size[1] + 1))
        x, y = int(rng.integers(0, width - size + 1)), int(rng.integers(0, height - size + 1))
        if any(x < o.x + o.size + gap and o.x < x + size + gap and y < o.y + o.size + gap and o.y < y + size + gap
               for o in placed):
            continue
        big, tint, (bx, by, bw, bh) = _object(items[int(rng.integers(len(items)))], size, rng)
        placed.append(PlacedObject(x, y, big, tint, (x + bx, y + by, bw, bh)))
    return SceneSpec(width, height, seed, placed)


def _waves(seed: int) -> list[tuple[float, float, float, np.ndarray]]:
    rng = np.random.default_rng(seed + 7919)
    waves = []
    for wavelength in np.geomspace(3000.0, 24.0, 16):
        angle = rng.uniform(0, 2 * math.pi)
        k = 2 * math.pi / wavelength
        amplitude = rng.uniform(0.3, 1.0, size=3) * (3.0 + wavelength ** 0.5 * 0.55)
        waves.append((k * math.cos(angle), k * math.sin(angle), float(rng.uniform(0, 2 * math.pi)), amplitude))
    return waves


def render_region(spec: SceneSpec, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """Pixels (h, w, 3) uint8 of a region of the scene, identical however the scene is cut."""
    xs = np.arange(x0, x0 + w, dtype=np.float64)
    ys = np.arange(y0, y0 + h, dtype=np.float64)
    base = np.array([104.0, 118.0, 82.0])
    out = np.broadcast_to(base, (h, w, 3)).copy()
    for kx, ky, phase, amplitude in _waves(spec.seed):
        # sin(kx x + ky y + p) = sin(kx x) cos(ky y + p) + cos(kx x) sin(ky y + p): separable.
        field_ = np.outer(np.cos(ky * ys + phase), np.sin(kx * xs)) + np.outer(np.sin(ky * ys + phase), np.cos(kx * xs))
        out += field_[..., None] * amplitude[None, None, :]
    gx, gy = np.meshgrid(np.arange(x0, x0 + w, dtype=np.uint64), np.arange(y0, y0 + h, dtype=np.uint64))
    grain = ((gx * np.uint64(73856093)) ^ (gy * np.uint64(19349663)) ^ np.uint64(spec.seed * 83492791)) % np.uint64(31)
    out += grain.astype(np.float64)[..., None] - 15.0
    for obj in spec.objects:
        ix0, iy0 = max(x0, obj.x), max(y0, obj.y)
        ix1, iy1 = min(x0 + w, obj.x + obj.size), min(y0 + h, obj.y + obj.size)
        if ix1 <= ix0 or iy1 <= iy0:
            continue
        rows, cols = slice(iy0 - obj.y, iy1 - obj.y), slice(ix0 - obj.x, ix1 - obj.x)
        a, c = obj.alpha(rows, cols)[..., None], obj.colour(rows, cols)
        region = out[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0]
        region[...] = region * (1 - a) + c * a
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def render(spec: SceneSpec) -> np.ndarray:
    return render_region(spec, 0, 0, spec.width, spec.height)


def write_tiled_tiff(spec: SceneSpec, path: str | Path, tile: int = 256, compression: str | None = "zlib") -> Path:
    """The scene as a tiled TIFF, rendered and written one TIFF tile at a time."""
    import tifffile

    def tiles() -> Iterator[np.ndarray]:
        for ty in range(0, spec.height, tile):
            for tx in range(0, spec.width, tile):
                block = np.zeros((tile, tile, 3), dtype=np.uint8)
                w, h = min(tile, spec.width - tx), min(tile, spec.height - ty)
                block[:h, :w] = render_region(spec, tx, ty, w, h)
                yield block

    path = Path(path)
    tifffile.imwrite(
        path, tiles(), shape=(spec.height, spec.width, 3), dtype=np.uint8, tile=(tile, tile),
        photometric="rgb", compression=compression, bigtiff=spec.width * spec.height * 3 > 2**31,
    )
    return path


# --------------------------------------------------------------------------- a real tile classifier


def coverage(spec: SceneSpec, window: tuple[int, int, int, int]) -> float:
    """Fraction of a window's pixels that belong to an object (alpha above 0.5)."""
    x, y, w, h = window
    covered = 0
    for obj in spec.objects:
        ix0, iy0 = max(x, obj.x), max(y, obj.y)
        ix1, iy1 = min(x + w, obj.x + obj.size), min(y + h, obj.y + obj.size)
        if ix1 > ix0 and iy1 > iy0:
            covered += int((obj.alpha(slice(iy0 - obj.y, iy1 - obj.y), slice(ix0 - obj.x, ix1 - obj.x)) > 0.5).sum())
    return covered / float(w * h)


def window_labels(
    spec: SceneSpec, windows: list[tuple[int, int, int, int]], positive: float = 0.35, negative: float = 0.15
) -> list[str | None]:
    """``object`` where objects cover at least ``positive`` of a window, ``background`` where
    at most ``negative``, None (ambiguous, not used for training) in between."""
    labels: list[str | None] = []
    for window in windows:
        value = coverage(spec, window)
        labels.append(OBJECT if value >= positive else BACKGROUND if value <= negative else None)
    return labels


def features_of(pixels: np.ndarray, batch_size: int = 32, threads: int = 2) -> np.ndarray:
    """EfficientNet-Lite0 pooled features of uint8 (N, 224, 224, 3) tiles, through the registry's ONNX export."""
    from sparkvision.models import get_spec
    from sparkvision.models.onnx_export import registered_onnx
    from sparkvision.models.runtime import cached_model
    from sparkvision.preprocess import Normalizer

    spec = get_spec("efficientnet_lite0")
    normalize = Normalizer(spec.preprocess.mean, spec.preprocess.std)
    model = cached_model(registered_onnx("efficientnet_lite0"), threads)
    return np.concatenate([
        model.run(normalize(pixels[i:i + batch_size]), ["features"])[0] for i in range(0, len(pixels), batch_size)
    ])


def append_linear_head(backbone: Path, weight: np.ndarray, bias: np.ndarray, out: Path) -> Path:
    """Replace the backbone's ``logits`` layer with ``features @ weight.T + bias``."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(backbone))
    graph = model.graph
    old = [node for node in graph.node if "logits" in node.output]
    for node in old:
        graph.node.remove(node)
    still_used = {name for node in graph.node for name in node.input}
    for init in list(graph.initializer):
        if init.name not in still_used and any(init.name in node.input for node in old):
            graph.initializer.remove(init)
    graph.initializer.extend([
        numpy_helper.from_array(weight.astype(np.float32), "tile_head_weight"),
        numpy_helper.from_array(bias.astype(np.float32), "tile_head_bias"),
    ])
    graph.node.append(helper.make_node("Gemm", ["features", "tile_head_weight", "tile_head_bias"], ["logits"],
                                       transB=1, name="tile_head"))
    for output in graph.output:
        if output.name == "logits":
            output.type.tensor_type.shape.dim[1].dim_value = weight.shape[0]
    onnx.checker.check_model(model)
    with atomic_file(out) as tmp:
        onnx.save(model, tmp)
    return out


def train_object_classifier(
    model_dir: str | Path,
    size: int = 224,
    scene_size: int = 2560,
    n_objects: int = 4,
    seed: int = 101,
    scenes: int = 4,
    windows_per_class: int = 120,
    threads: int = 2,
) -> dict[str, Any]:
    """Fit "object vs background" on windows of training scenes and save an ``onnx`` model dir.

    ``scenes`` training scenes (seeds ``seed, seed + 1, ...``, each its own terrain, items
    from Fashion-MNIST's training part) give windows drawn at random, half of them near
    objects: those mostly covered by an object (:func:`window_labels`) are positives,
    those nearly free of objects negatives, ``windows_per_class`` of each in all. A
    quarter is held out to report accuracy in the card.
    """
    from sklearn.linear_model import LogisticRegression

    from sparkvision.models import get_spec
    from sparkvision.models.model_dir import ModelCard, save_card
    from sparkvision.models.onnx_export import registered_onnx

    rng = np.random.default_rng(seed)
    chosen: dict[str, list[np.ndarray]] = {OBJECT: [], BACKGROUND: []}
    per_scene = -(-windows_per_class // scenes)
    for index in range(scenes):
        spec = make_scene(scene_size, scene_size, n_objects, seed=seed + index, part="train")
        image = render(spec)
        quota = {label: min(windows_per_class, len(chosen[label]) + per_scene) for label in chosen}
        for _ in range(400 * per_scene):
            if all(len(chosen[label]) >= quota[label] for label in chosen):
                break
            if rng.random() < 0.5:
                obj = spec.objects[int(rng.integers(len(spec.objects)))]
                x = int(rng.integers(obj.x - size // 2, obj.x + obj.size - size // 2))
                y = int(rng.integers(obj.y - size // 2, obj.y + obj.size - size // 2))
            else:
                x, y = int(rng.integers(0, scene_size - size)), int(rng.integers(0, scene_size - size))
            x, y = min(max(0, x), scene_size - size), min(max(0, y), scene_size - size)
            label = window_labels(spec, [(x, y, size, size)])[0]
            if label is not None and len(chosen[label]) < quota[label]:
                chosen[label].append(image[y:y + size, x:x + size].copy())
    pixels = np.stack(chosen[OBJECT] + chosen[BACKGROUND])
    target = np.array([1] * len(chosen[OBJECT]) + [0] * len(chosen[BACKGROUND]), dtype=np.int64)
    features = features_of(pixels, threads=threads)
    held_out = rng.random(len(target)) < 0.25
    classifier = LogisticRegression(C=0.5, max_iter=2000)
    classifier.fit(features[~held_out], target[~held_out])
    held_accuracy = float(classifier.score(features[held_out], target[held_out])) if held_out.any() else math.nan
    classifier.fit(features, target)  # the saved model sees every window
    weight = np.vstack([np.zeros_like(classifier.coef_[0]), classifier.coef_[0]])
    bias = np.array([0.0, classifier.intercept_[0]])
    model_dir = Path(model_dir)
    append_linear_head(registered_onnx("efficientnet_lite0"), weight, bias, model_dir / "model.onnx")
    metrics = {
        "windows": len(target), "positives": int(target.sum()), "negatives": int(len(target) - target.sum()),
        "held_out_accuracy": held_accuracy, "held_out": int(held_out.sum()),
        "train_accuracy": float(classifier.score(features, target)),
    }
    card = ModelCard(
        name="scene-object-detector", kind="onnx", labels=[BACKGROUND, OBJECT],
        preprocess=get_spec("efficientnet_lite0").preprocess, architecture="efficientnet_lite0 + logistic regression",
        provenance={"training_scenes": {"count": scenes, "size": scene_size, "objects": n_objects, "first_seed": seed,
                                         "items": "fashion-mnist:train"},
                    "windows_per_class": windows_per_class, "classifier": "sklearn LogisticRegression(C=0.5)"},
        metrics=metrics,
    )
    save_card(model_dir, card)
    log.info("tile classifier saved to %s: %s", model_dir, metrics)
    return metrics


# --------------------------------------------------------------------------- detection scenes

#: Classes of detection scenes, told apart by colour (RGB tint ranges): a detector must say
#: which, not only where. Their spread between channels (over 110 of 255 where an item is
#: opaque) is far above the terrain's (under 90), which :func:`write_colour_screen` keys on.
DETECTION_TINTS: dict[str, tuple[tuple[int, int], tuple[int, int], tuple[int, int]]] = {
    "warm": ((215, 255), (40, 100), (20, 60)),
    "cool": ((20, 60), (70, 130), (215, 255)),
}


def interior_edges(length: int, size: int, overlap: float) -> list[int]:
    """Where tiles of :func:`sparkvision.tiling.grid.grid` start or end inside an image side
    of ``length`` pixels (level 0): the lines an object can straddle."""
    from sparkvision.tiling.grid import grid

    xs = grid(length, 1, size, overlap).xs
    return sorted({x for x in xs if x > 0} | {x + size for x in xs if x + size < length})


def make_detection_scene(
    width: int,
    height: int,
    n_objects: int,
    seed: int = 0,
    part: str = "test",
    object_size: tuple[int, int] = (24, 40),
    gap: int = 12,
    tiles: tuple[int, float] | None = None,
    straddling: float = 0.5,
) -> SceneSpec:
    """Small items of the :data:`DETECTION_TINTS` classes at random places, ``gap`` pixels apart.

    With ``tiles=(size, overlap)``, about a ``straddling`` fraction of them is centred on an
    interior edge of that tile grid (a vertical one, a horizontal one, or a corner): the
    objects that one tile sees whole and its neighbour sees cut, which tiled detection
    must report once.
    """
    rng = np.random.default_rng(seed)
    items = fashion_items(part)
    names = sorted(DETECTION_TINTS)
    edges_x = interior_edges(width, *tiles) if tiles else []
    edges_y = interior_edges(height, *tiles) if tiles else []
    placed: list[PlacedObject] = []
    attempts = 0
    while len(placed) < n_objects:
        attempts += 1
        if attempts > 500 * n_objects:
            raise ValueError(f"cannot place {n_objects} objects of {object_size} px in {width}x{height}")
        size = int(rng.integers(object_size[0], object_size[1] + 1))
        x, y = int(rng.integers(0, width - size + 1)), int(rng.integers(0, height - size + 1))
        if edges_x and rng.random() < straddling:
            jx, jy = (int(v) for v in rng.integers(-size // 5, size // 5 + 1, size=2))
            across = rng.choice(["x", "y", "xy"])
            if "x" in across:
                x = min(max(0, int(rng.choice(edges_x)) - size // 2 + jx), width - size)
            if "y" in across and edges_y:
                y = min(max(0, int(rng.choice(edges_y)) - size // 2 + jy), height - size)
        if any(x < o.x + o.size + gap and o.x < x + size + gap and y < o.y + o.size + gap and o.y < y + size + gap
               for o in placed):
            continue
        label = names[int(rng.integers(len(names)))]
        big, _, (bx, by, bw, bh) = _object(items[int(rng.integers(len(items)))], size, rng)
        tint = tuple(float(rng.uniform(lo, hi)) for lo, hi in DETECTION_TINTS[label])
        placed.append(PlacedObject(x, y, big, tint, (x + bx, y + by, bw, bh), label))
    return SceneSpec(width, height, seed, placed)


def detection_windows(
    spec: SceneSpec, image: np.ndarray, size: int, count: int, rng: np.random.Generator, min_visible: float = 0.6
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """``count`` windows of ``size`` px cut from a rendered scene, with boxes (x1, y1, x2, y2) in
    window pixels and class indices (sorted :data:`DETECTION_TINTS` order).

    Most windows are drawn near an object, which may end up cut by the window's edge, as
    objects are in tiles; a cut object is a box when at least ``min_visible`` of it shows.
    """
    names = sorted(DETECTION_TINTS)
    pixels = np.empty((count, size, size, 3), dtype=np.uint8)
    boxes: list[np.ndarray] = []
    classes: list[np.ndarray] = []
    for k in range(count):
        if spec.objects and rng.random() < 0.8:
            obj = spec.objects[int(rng.integers(len(spec.objects)))]
            x = int(rng.integers(obj.x - size + obj.size // 2, obj.x + obj.size // 2))
            y = int(rng.integers(obj.y - size + obj.size // 2, obj.y + obj.size // 2))
        else:
            x, y = int(rng.integers(0, spec.width - size)), int(rng.integers(0, spec.height - size))
        x, y = min(max(0, x), spec.width - size), min(max(0, y), spec.height - size)
        pixels[k] = image[y:y + size, x:x + size]
        found, labels = [], []
        for obj in spec.objects:
            bx, by, bw, bh = obj.box
            x1, y1 = max(bx, x), max(by, y)
            x2, y2 = min(bx + bw, x + size), min(by + bh, y + size)
            if x2 > x1 and y2 > y1 and (x2 - x1) * (y2 - y1) >= min_visible * bw * bh:
                found.append([x1 - x, y1 - y, x2 - x, y2 - y])
                labels.append(names.index(obj.label))
        boxes.append(np.asarray(found, dtype=np.float32).reshape(-1, 4))
        classes.append(np.asarray(labels, dtype=np.int64))
    return pixels, boxes, classes


def fit_small_detector(
    model_dir: str | Path,
    images: np.ndarray,
    boxes: list[np.ndarray],
    classes: list[np.ndarray],
    labels: list[str],
    steps: int = 300,
    batch_size: int = 16,
    lr: float = 3e-3,
    fpn_channels: int = 32,
    head_convs: int = 1,
    seed: int = 0,
    name: str = "small-detector",
) -> dict[str, Any]:
    """A real FCOS-Lite detector model directory in seconds, for tests and benchmarks.

    The pretrained EfficientNet-Lite0 backbone stays frozen, so its features of the
    uint8 (N, H, W, 3) ``images`` are computed once and only the feature pyramid and
    head learn (Adam, ``steps`` batches). The result is exported exactly as
    ``sparkvision train --task detect`` exports a detector (DetectorExport, outputs
    ``boxes`` and ``scores``, card kind ``detector`` with letterbox preprocessing), and
    runs through the same runner and decoder. Real training is ``sparkvision train``.
    """
    import torch

    from sparkvision.config import PreprocessConfig
    from sparkvision.detection.loss import FCOSLoss
    from sparkvision.models.efficientnet import build
    from sparkvision.models.fcos import DetectorExport, FCOSLite
    from sparkvision.models.model_dir import ONNX_FILE, ModelCard, save_card
    from sparkvision.models.onnx_export import export_onnx
    from sparkvision.preprocess import Normalizer

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n, height, width, _ = images.shape
    preprocess = PreprocessConfig.preset("inception", size=(height, width), resize_mode="letterbox")
    model = FCOSLite(build(pretrained=True), len(labels), fpn_channels, head_convs).eval()
    for param in model.backbone.parameters():
        param.requires_grad_(False)
    normalize = Normalizer(preprocess.mean, preprocess.std)
    with torch.no_grad():
        chunks = [model.backbone(torch.from_numpy(normalize(images[i:i + 32]))) for i in range(0, n, 32)]
    features = [torch.cat(level) for level in zip(*chunks, strict=True)]
    box_tensors = [torch.from_numpy(np.asarray(b, dtype=np.float32).reshape(-1, 4)) for b in boxes]
    class_tensors = [torch.from_numpy(np.asarray(c, dtype=np.int64)) for c in classes]
    loss_fn = FCOSLoss(len(labels), model.strides, model.size_ranges)
    trained = [*model.fpn.parameters(), *model.head.parameters()]
    optimizer = torch.optim.Adam(trained, lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.fpn.train()
    model.head.train()
    losses: list[float] = []
    for _ in range(steps):
        pick = rng.choice(n, size=min(batch_size, n), replace=False)
        index = torch.from_numpy(pick)
        outputs = model.head(model.fpn([f[index] for f in features]), model.strides)
        loss, _ = loss_fn(outputs, [box_tensors[i] for i in pick], [class_tensors[i] for i in pick])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
    model.eval()
    model_dir = Path(model_dir)
    export_onnx(DetectorExport(model, height, width).eval(), model_dir / ONNX_FILE, (3, height, width),
                with_features=False, output_names=["boxes", "scores"])
    metrics = {"images": int(n), "boxes": int(sum(len(b) for b in boxes)), "steps": steps,
               "first_loss": float(np.mean(losses[:10])), "last_loss": float(np.mean(losses[-10:]))}
    save_card(model_dir, ModelCard(
        name=name, kind="detector", labels=list(labels), preprocess=preprocess,
        architecture=f"fcos_lite0 (frozen backbone, fpn {fpn_channels}, head convs {head_convs})",
        provenance={"trainer": "sparkvision.testing.synthetic_scenes.fit_small_detector", "seed": seed}, metrics=metrics,
    ))
    log.info("small detector saved to %s: %s", model_dir, metrics)
    return metrics


def train_scene_detector(
    model_dir: str | Path,
    size: int = 128,
    scenes: int = 3,
    scene_size: int = 768,
    n_objects: int = 24,
    windows: int = 160,
    steps: int = 200,
    seed: int = 301,
) -> dict[str, Any]:
    """Fit a detector of the :data:`DETECTION_TINTS` classes on windows of ``size`` px from
    training scenes (their own seeds and terrains, Fashion-MNIST's training items)."""
    rng = np.random.default_rng(seed)
    parts: list[tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]] = []
    for index in range(scenes):
        spec = make_detection_scene(scene_size, scene_size, n_objects, seed=seed + index, part="train")
        parts.append(detection_windows(spec, render(spec), size, -(-windows // scenes), rng))
    pixels = np.concatenate([p[0] for p in parts])
    boxes = [b for p in parts for b in p[1]]
    classes = [c for p in parts for c in p[2]]
    return fit_small_detector(model_dir, pixels, boxes, classes, sorted(DETECTION_TINTS), steps=steps, seed=seed,
                              name="scene-item-detector")


def write_colour_screen(model_dir: str | Path, size: int, threshold: float = 110.5 / 255) -> Path:
    """A cheap tile screen as a real ONNX classifier: ``object`` where some pixel's channels
    spread by more than ``threshold`` (0-1 units), else ``background``.

    Detection-scene items are strongly tinted and the terrain is not, so it passes every
    tile that shows part of an item. The graph is a tiny torch module exported by
    ``torch.onnx.export``; its card (kind ``onnx``, labels background, object) is a
    classifier's like any other, so it runs through the same runner.
    """
    import torch

    from sparkvision.config import PreprocessConfig
    from sparkvision.models.model_dir import ONNX_FILE, ModelCard, save_card
    from sparkvision.models.onnx_export import export_onnx

    class ColourScreen(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, 3, H, W) in [0, 1]
            spread = (x.amax(dim=1) - x.amin(dim=1)).flatten(1).amax(dim=1, keepdim=True)
            z = (spread - threshold) * 50.0
            return torch.cat([-z, z], dim=1)

    model_dir = Path(model_dir)
    export_onnx(ColourScreen(), model_dir / ONNX_FILE, (3, size, size), with_features=False)
    save_card(model_dir, ModelCard(
        name="colour-screen", kind="onnx", labels=[BACKGROUND, OBJECT],
        preprocess=PreprocessConfig.preset("unit", size=(size, size), resize_mode="resize"),
        architecture="max channel spread vs a threshold", provenance={"threshold": threshold},
    ))
    return model_dir
