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
