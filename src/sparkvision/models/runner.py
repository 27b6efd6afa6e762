"""Running an ONNX image model without Spark: encoded images or tensors in, outputs out, errors per row.

Every consumer of an ONNX image model goes through a runner: the Spark stages' UDF
(:mod:`sparkvision.ml.onnx_stage`), the HTTP server (:mod:`sparkvision.deploy.serve`),
export checking (:func:`sparkvision.deploy.export.verify_export`) and one-process tiling.
The shape::

    ModelSource          what a model is: ONNX bytes, preprocessing, output roles, labels;
                         from a model directory (from_model_dir), the registry
                         (from_registry), or bytes with a PreprocessConfig
    OnnxImageRunner      the base, for any image model: owns the ONNX Runtime session
                         (one per model per process, ``models.runtime.cached_model``,
                         created on first use) and the ImagePreprocessor;
                         preprocess: bytes -> tensor batch, errors per row
                         run: graph outputs of a tensor, in batches (failures raise)
                         run_images: graph outputs of encoded images, in batches; a
                           failing batch is retried row by row, a row that fails or
                           gives non-finite numbers gets a ``model`` error
      ClassifierRunner   + labels and the "logits" output: predict_proba (softmax),
                         top_k, features
      DetectorRunner     (to come) + letterbox preprocessing, boxes/scores/labels outputs

Tensors in give arrays out. Encoded images in give :class:`RowOutputs`: the values of
the rows that ran, their positions, and one error (or None) per input, so every input
is accounted for and one bad image never fails the others. This module imports
neither pyspark nor torch.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar, overload

import numpy as np

from sparkvision.config import DecodeSettings, PreprocessConfig
from sparkvision.io.decode import OcvImage
from sparkvision.io.errors import ErrorKind, ImageError
from sparkvision.models.runtime import OnnxModel, cached_model

if TYPE_CHECKING:
    from sparkvision.models.model_dir import ModelCard
    from sparkvision.preprocess import ImagePreprocessor, PreprocessedBatch

log = logging.getLogger(__name__)

T = TypeVar("T")
#: Encoded images, or pixels Spark's ``image`` source decoded (:class:`~sparkvision.io.decode.OcvImage`).
Images = Sequence[bytes | bytearray | OcvImage | None]


# ---------------------------------------------------------------- what a model is


@dataclass(frozen=True)
class ModelSource:
    """An ONNX graph and everything needed to feed it and read its outputs."""

    name: str
    data: bytes = field(repr=False)
    preprocess: PreprocessConfig
    input_name: str = "input"
    #: Role ("features", "logits") -> the graph's output name.
    outputs: dict[str, str] = field(default_factory=lambda: {"logits": "logits"})
    labels: tuple[str, ...] | None = None
    digest: str = ""
    #: "fp32", or "int8" for a graph quantised by :func:`sparkvision.deploy.int8.quantize_source`.
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if not self.digest:
            object.__setattr__(self, "digest", hashlib.sha256(self.data).hexdigest())

    def output(self, role: str) -> str:
        if role not in self.outputs:
            raise ValueError(f"model {self.name!r} has no {role!r} output; it has {sorted(self.outputs)}")
        return self.outputs[role]

    def output_size(self, role: str) -> int:
        """Length of one row of an output, from the graph's declared shape."""
        import onnx

        name = self.output(role)
        graph = onnx.load_from_string(self.data).graph
        for out in graph.output:
            if out.name == name:
                dims = out.type.tensor_type.shape.dim
                if dims and dims[-1].dim_value:
                    return int(dims[-1].dim_value)
        raise ValueError(f"model {self.name!r} does not declare the size of its {role!r} output")

    def describe(self) -> dict[str, Any]:
        """JSON-able description (everything but the bytes), for saved stages."""
        return {
            "name": self.name,
            "preprocess": self.preprocess.to_dict(),
            "input_name": self.input_name,
            "outputs": dict(self.outputs),
            "labels": list(self.labels) if self.labels else None,
            "digest": self.digest,
            "precision": self.precision,
        }

    @classmethod
    def from_description(cls, data: bytes, described: dict[str, Any]) -> ModelSource:
        source = cls(
            name=described["name"], data=data, preprocess=PreprocessConfig.from_dict(described["preprocess"]),
            input_name=described.get("input_name", "input"), outputs=dict(described["outputs"]),
            labels=tuple(described["labels"]) if described.get("labels") else None,
            precision=described.get("precision", "fp32"),
        )
        if described.get("digest") and described["digest"] != source.digest:
            raise ValueError(f"embedded ONNX model {source.name!r} does not match its recorded digest")
        return source


_FILE_CACHE: dict[tuple[str, int, int], bytes] = {}
_FILE_LOCK = threading.Lock()


def _read_bytes(path: str | Path) -> bytes:
    """File bytes, remembered per (path, size, mtime) so repeated transforms do not re-read."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    key = (str(resolved), stat.st_size, stat.st_mtime_ns)
    with _FILE_LOCK:
        if key not in _FILE_CACHE:
            if len(_FILE_CACHE) > 8:
                _FILE_CACHE.clear()
            _FILE_CACHE[key] = resolved.read_bytes()
        return _FILE_CACHE[key]


def from_registry(name: str) -> ModelSource:
    """A registered backbone (exported to ONNX once and cached, or the user's ONNX file)."""
    from sparkvision.models import get_spec
    from sparkvision.models.onnx_export import registered_onnx

    spec = get_spec(name)
    path = registered_onnx(name)
    if spec.is_onnx:
        outputs = dict(spec.output_names)
    elif spec.num_classes:
        outputs = {"features": "features", "logits": "logits"}
    else:  # features only (HOG): the one output serves both roles, as for a Hugging Face backbone without a head
        outputs = {"features": "features", "logits": "features"}
    return ModelSource(
        name=name, data=_read_bytes(path), preprocess=spec.preprocess, input_name=spec.input_name,
        outputs=outputs, labels=spec.labels,
    )


def from_model_dir(model_dir: str | Path, card: ModelCard | None = None) -> ModelSource:
    """The ONNX graph of a sparkvision model directory, with its card's labels and preprocessing.

    Every graph output is offered under its own name as role ("logits", "features", ...).
    """
    import onnx

    from sparkvision.models.model_dir import load_card, onnx_path

    card = card or load_card(model_dir)
    try:
        path = onnx_path(model_dir, card)
    except FileNotFoundError as exc:
        hint = " (run 'sparkvision export MODEL_DIR' to add one)" if card.kind == "spark_pipeline" else ""
        raise FileNotFoundError(f"{exc}{hint}") from None
    graph = onnx.load(str(path), load_external_data=False).graph
    return ModelSource(
        name=card.name, data=_read_bytes(path), preprocess=card.preprocess, input_name=graph.input[0].name,
        outputs={o.name: o.name for o in graph.output}, labels=tuple(card.labels),
    )


# ---------------------------------------------------------------- results per row


#: Test-time augmentations a classifier runner offers (``--tta``).
TTA_MODES = ("none", "flip")
#: Numeric precisions a graph can run at (``--int8``; see :mod:`sparkvision.deploy.int8`).
PRECISIONS = ("fp32", "int8")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (probabilities that sum to 1 to within 1e-12)."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=1, keepdims=True)
    return shifted


@dataclass
class RowOutputs(Generic[T]):
    """A model's results on a sequence of encoded images, every input accounted for."""

    #: Results of the rows that ran, in input order (an array with one row each, or a list).
    values: T
    #: int64 positions in the input of the rows that ran.
    index: np.ndarray
    #: One per input: None where the row ran, else ``"<kind>: <detail>"``.
    errors: list[str | None]
    #: int64 (n, 2): the displayed (width, height) of each row that ran, before resizing
    #: (what maps model-input coordinates back to the image); None where not tracked.
    sizes: np.ndarray | None = None

    def per_input(self, values: Sequence[Any] | None = None) -> list[Any]:
        """``values`` (one per row that ran; default ``self.values``) spread over all inputs, None elsewhere."""
        values = self.values if values is None else values  # type: ignore[assignment]
        spread: list[Any] = [None] * len(self.errors)
        for position, value in zip(self.index, values, strict=True):  # type: ignore[call-overload]
            spread[int(position)] = value
        return spread

    def with_values(self, values: Any) -> RowOutputs[Any]:
        return replace(self, values=values)

    def keep(self, ok: np.ndarray, error: str) -> RowOutputs[T]:
        """Only the rows where ``ok``; the others get ``error``. ``values`` must be an array."""
        errors = list(self.errors)
        for position in self.index[~ok]:
            errors[int(position)] = error
        sizes = self.sizes[ok] if self.sizes is not None else None
        return RowOutputs(self.values[ok], self.index[ok], errors, sizes)  # type: ignore[index]


# ---------------------------------------------------------------- the runners


class OnnxImageRunner:
    """One ONNX image model and its preprocessing, on encoded images or preprocessed tensors.

    ``model`` is the graph's bytes, or a zero-argument callable returning them (with
    ``key`` given): a Spark broadcast is then read only when this process has no
    session for the model yet. ``outputs`` maps roles to graph output names.
    """

    def __init__(
        self,
        model: bytes | Callable[[], bytes],
        preprocess: PreprocessConfig,
        *,
        outputs: Mapping[str, str] | None = None,
        labels: Sequence[str] | None = None,
        name: str = "model",
        key: str | None = None,
        threads: int | None = None,
        batch_size: int = 32,
        decode: DecodeSettings | None = None,
        overlap: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if callable(model) and key is None:
            raise ValueError("a model given as a loader needs a key (its digest)")
        self._model = model
        self.digest = key or hashlib.sha256(model).hexdigest()  # type: ignore[arg-type]
        self.config = preprocess
        self.outputs = dict(outputs or {"logits": "logits"})
        self.labels = list(labels) if labels else None
        self.name = name
        self.threads = threads
        self.batch_size = batch_size
        self.preprocessor = self._make_preprocessor(preprocess, decode)
        #: Decode the next ``batch_size`` images on a thread while the model runs on these.
        self.overlap = overlap
        self._decoder: ThreadPoolExecutor | None = None
        #: The model directory's card, when loaded from one.
        self.card: ModelCard | None = None
        self._session: OnnxModel | None = None

    # ----- loading
    @classmethod
    def from_source(cls, source: ModelSource, **options: Any) -> Self:
        return cls(source.data, source.preprocess, outputs=source.outputs, labels=source.labels, name=source.name,
                   key=source.digest, **options)

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, **options: Any) -> Self:
        """A sparkvision model directory (its ``model.onnx``, card, labels and preprocessing)."""
        from sparkvision.models.model_dir import load_card

        card = load_card(model_dir)
        runner = cls.from_source(from_model_dir(model_dir, card), **{**cls._card_options(card), **options})
        runner.card = card
        return runner

    @classmethod
    def _card_options(cls, card: ModelCard) -> dict[str, Any]:
        """Options a model directory's card sets, unless the caller gives them."""
        return {}

    @classmethod
    def from_registry(cls, name: str, **options: Any) -> Self:
        """A registered backbone by name (e.g. ``efficientnet_lite0`` with its ImageNet labels)."""
        return cls.from_source(from_registry(name), **options)

    def _make_preprocessor(self, config: PreprocessConfig, decode: DecodeSettings | None) -> ImagePreprocessor:
        """Subclasses that preprocess differently (a detector's letterbox) override this."""
        from sparkvision.preprocess import ImagePreprocessor

        return ImagePreprocessor(config, decode)

    @property
    def session(self) -> OnnxModel:
        """The process-wide ONNX Runtime session, created on first use (so a batch of only bad rows never loads it)."""
        if self._session is None:
            self._session = cached_model(self._model, self.threads, key=self.digest)
        return self._session

    @property
    def version(self) -> str:
        """The first 12 hex digits of the graph's SHA-256."""
        return self.digest[:12]

    @property
    def input_shape(self) -> list[int]:
        """[C, H, W] of one preprocessed image."""
        height, width = self.config.size
        return [self.config.channels, height, width]

    def output_name(self, role: str) -> str:
        if role not in self.outputs:
            raise ValueError(f"model {self.name!r} has no {role!r} output; it has {sorted(self.outputs)}")
        return self.outputs[role]

    # ----- preprocessing
    def preprocess(self, images: Images) -> PreprocessedBatch:
        """The images that decode as one tensor batch, and an error for each that does not."""
        return self.preprocessor(images)

    def preprocessed(self, images: Images) -> Iterator[tuple[int, PreprocessedBatch]]:
        """Each ``batch_size`` slice of ``images`` preprocessed, with its first row's position.

        With ``overlap``, the next slice is decoded on this runner's decode thread while the
        caller runs the model on the current one: Pillow's decoders and ONNX Runtime both
        release the GIL, so a task keeps a core decoding while the model computes.
        """
        starts = range(0, len(images), self.batch_size)
        if not self.overlap or len(starts) < 2:
            for start in starts:
                yield start, self.preprocess(images[start:start + self.batch_size])
            return
        if self._decoder is None:
            self._decoder = ThreadPoolExecutor(1, thread_name_prefix="sparkvision-decode")
        pending = self._decoder.submit(self.preprocess, images[:self.batch_size])
        for previous, start in pairwise(starts):
            batch = pending.result()
            pending = self._decoder.submit(self.preprocess, images[start:start + self.batch_size])
            yield previous, batch
        yield starts[-1], pending.result()

    def preprocess_one(self, data: bytes | None) -> np.ndarray:
        """One image as a (1, C, H, W) float32 tensor; raises :class:`ImageError` (its kind says why)."""
        return self.preprocessor.normalize(self.preprocessor.load(data)[None])

    # ----- running
    def run(self, tensor: np.ndarray, roles: Sequence[str]) -> list[np.ndarray]:
        """The outputs named by ``roles`` for a preprocessed NCHW tensor, ``batch_size`` rows per call."""
        names = [self.output_name(r) for r in roles]
        parts = [self._forward(tensor[i:i + self.batch_size], names) for i in range(0, len(tensor), self.batch_size)]
        if parts:
            return [np.concatenate(p) for p in zip(*parts, strict=True)]
        declared = {o.name: o.shape for o in self.session.session.get_outputs()}
        return [np.empty((0, *[d if isinstance(d, int) else 0 for d in declared[n][1:]]), np.float32) for n in names]

    def _forward(self, tensor: np.ndarray, names: list[str]) -> list[np.ndarray]:
        """One model call on a batch; subclasses add test-time augmentation here."""
        return self.session.run(tensor, names)

    def run_images(self, images: Images, roles: Sequence[str]) -> RowOutputs[list[np.ndarray]]:
        """The outputs named by ``roles`` for encoded images, with an error for each row that did not run."""
        names = [self.output_name(r) for r in roles]
        errors: list[str | None] = [None] * len(images)
        index: list[np.ndarray] = []
        sizes: list[np.ndarray] = []
        values: list[list[np.ndarray]] = [[] for _ in names]
        for start, batch in self.preprocessed(images):
            for i, error in enumerate(batch.errors):
                if error is not None:
                    errors[start + i] = error
            if not len(batch.index):
                continue
            outputs, failed = self._run_rows(batch.tensor, names)
            ok = np.ones(len(batch.index), dtype=bool)
            for k, message in failed.items():
                errors[start + int(batch.index[k])] = ImageError(ErrorKind.MODEL, message).message
                ok[k] = False
            finite = np.all([np.isfinite(out.reshape(len(out), -1)).all(axis=1) for out in outputs], axis=0)
            for k in np.flatnonzero(ok & ~finite):
                errors[start + int(batch.index[k])] = ImageError(
                    ErrorKind.MODEL, "the model produced non-finite outputs").message
            ok &= finite
            if ok.any():
                index.append(start + batch.index[ok])
                sizes.append(batch.sizes[ok])
                for part, out in zip(values, outputs, strict=True):
                    part.append(out[ok])
        positions = np.concatenate(index) if index else np.empty(0, dtype=np.int64)
        stacked = [np.concatenate(part) if part else np.empty((0,), np.float32) for part in values]
        shown = np.concatenate(sizes) if sizes else np.empty((0, 2), dtype=np.int64)
        return RowOutputs(stacked, positions.astype(np.int64), errors, shown)

    def _run_rows(self, tensor: np.ndarray, names: list[str]) -> tuple[list[np.ndarray], dict[int, str]]:
        """One call for the batch; if it fails, each image alone. Failed rows' values are zeros."""
        try:
            outputs = self._forward(tensor, names)
            shapes = [out.shape for out in outputs]
            if any(len(s) < 1 or s[0] != len(tensor) for s in shapes):
                raise ValueError(f"unexpected output shapes {shapes} for {len(tensor)} images")
            return outputs, {}
        except Exception as exc:  # noqa: BLE001 - one bad batch must not fail the others: retry row by row
            log.warning("ONNX Runtime failed on a batch of %d (%s); retrying row by row", len(tensor), exc)
        rows: list[list[np.ndarray] | None] = []
        failed: dict[int, str] = {}
        for k in range(len(tensor)):
            try:
                outs = self._forward(tensor[k:k + 1], names)
                if any(out.ndim < 1 or out.shape[0] != 1 for out in outs):
                    raise ValueError(f"unexpected output shapes {[out.shape for out in outs]}")
                rows.append([out[0] for out in outs])
            except Exception as exc:  # noqa: BLE001
                failed[k] = f"ONNX Runtime failed on this image ({type(exc).__name__}: {exc})"
                rows.append(None)
        first = next((r for r in rows if r is not None), None)
        if first is None:
            return [np.zeros((len(tensor), 1), np.float32) for _ in names], failed
        outputs = [np.zeros((len(tensor), *value.shape), value.dtype) for value in first]
        for k, row in enumerate(rows):
            if row is None:
                continue
            if any(v.shape != o.shape[1:] for v, o in zip(row, outputs, strict=True)):
                failed[k] = f"the model gave this image outputs of shapes {[v.shape for v in row]}, unlike the others"
                continue
            for out, value in zip(outputs, row, strict=True):
                out[k] = value
        return outputs, failed


class ClassifierRunner(OnnxImageRunner):
    """An image classifier: output ``logits`` (N, classes) in ``labels`` order, optionally ``features``.

    ``predict_proba``, ``top_k`` and ``features`` take a preprocessed tensor (and give
    arrays, raising if the model fails) or encoded images (and give :class:`RowOutputs`).
    """

    def __init__(self, model: bytes | Callable[[], bytes], preprocess: PreprocessConfig, *, tta: str = "none",
                 **options: Any) -> None:
        super().__init__(model, preprocess, **options)
        if tta not in TTA_MODES:
            raise ValueError(f"tta must be one of {TTA_MODES}, got {tta!r}")
        #: Test-time augmentation: "flip" averages each output over the image and its mirror image.
        self.tta = tta
        if "logits" not in self.outputs:
            raise ValueError(f"model {self.name!r} has no 'logits' output (outputs: {sorted(self.outputs)}); "
                             "see sparkvision.models.model_dir")

    @classmethod
    def _card_options(cls, card: ModelCard) -> dict[str, Any]:
        return {"tta": card.tta}  # the augmentation the model was fitted and validated with

    def _forward(self, tensor: np.ndarray, names: list[str]) -> list[np.ndarray]:
        """With ``tta="flip"``: one call on the batch and its left-right mirror, each output averaged.

        Averaging the logits rather than the probabilities keeps a linear head (``fit``'s
        logistic regression, in Spark or in ``model.onnx``) equal to that head applied to
        the averaged features, so Spark, the server and the exported graph agree.
        """
        if self.tta == "none" or not len(tensor):
            return super()._forward(tensor, names)
        both = super()._forward(np.concatenate([tensor, np.ascontiguousarray(tensor[..., ::-1])]), names)
        n = len(tensor)
        return [((out[:n] + out[n:]) / 2).astype(out.dtype) for out in both]

    @overload
    def vectors(self, images: np.ndarray, role: str) -> np.ndarray: ...
    @overload
    def vectors(self, images: Images, role: str) -> RowOutputs[np.ndarray]: ...

    def vectors(self, images, role):
        """One vector per image from the output ``role`` ("features" or "logits")."""
        if isinstance(images, np.ndarray):
            return self.run(images, [role])[0]
        rows = self.run_images(images, [role])
        rows = rows.with_values(rows.values[0])
        if len(rows.index) and rows.values.ndim != 2:
            return rows.keep(np.zeros(len(rows.index), dtype=bool), ImageError(
                ErrorKind.MODEL, f"the model's {role!r} output has shape {rows.values.shape[1:]} per image, "
                "not a vector").message)
        return rows

    @overload
    def features(self, images: np.ndarray) -> np.ndarray: ...
    @overload
    def features(self, images: Images) -> RowOutputs[np.ndarray]: ...

    def features(self, images):
        """The pooled features the classifier head reads (output "features")."""
        return self.vectors(images, "features")

    def _labels(self) -> list[str]:
        if not self.labels:
            raise ValueError(f"model {self.name!r} has no labels; register it with labels to predict classes")
        return self.labels

    def _softmax(self, logits: np.ndarray) -> np.ndarray:
        labels = self._labels()
        if not len(logits):
            return np.empty((0, len(labels)))
        if logits.ndim != 2 or logits.shape[1] != len(labels):
            raise ImageError(ErrorKind.MODEL,
                             f"the model gives scores of shape {logits.shape[1:]} but has {len(labels)} labels")
        return softmax(logits)

    @overload
    def predict_proba(self, images: np.ndarray) -> np.ndarray: ...
    @overload
    def predict_proba(self, images: Images) -> RowOutputs[np.ndarray]: ...

    def predict_proba(self, images):
        """Class probabilities (n, classes) in ``labels`` order: the softmax of ``logits``."""
        if isinstance(images, np.ndarray):
            return self._softmax(self.vectors(images, "logits"))
        rows = self.vectors(images, "logits")
        try:
            return rows.with_values(self._softmax(rows.values))
        except ImageError as exc:
            return rows.keep(np.zeros(len(rows.index), dtype=bool), exc.message)

    @overload
    def top_k(self, images: np.ndarray, k: int) -> list[list[dict[str, Any]]]: ...
    @overload
    def top_k(self, images: Images, k: int) -> RowOutputs[list[list[dict[str, Any]]]]: ...

    def top_k(self, images, k):
        """The ``k`` most probable classes of each image as ``{"label", "probability"}``, most probable first."""
        probabilities = self.predict_proba(images)
        if isinstance(probabilities, RowOutputs):
            return probabilities.with_values(self.top_k_of(probabilities.values, k))
        return self.top_k_of(probabilities, k)

    def top_k_of(self, probabilities: np.ndarray, k: int) -> list[list[dict[str, Any]]]:
        """Top-k of probabilities already computed (ties keep label order)."""
        labels = self._labels()
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :min(k, len(labels))]
        return [[{"label": labels[j], "probability": float(row[j])} for j in idx]
                for row, idx in zip(probabilities, order, strict=True)]

    def top1_of(self, probabilities: np.ndarray) -> list[str]:
        """The most probable label of each row."""
        labels = self._labels()
        return [labels[int(i)] for i in probabilities.argmax(axis=1)] if len(probabilities) else []
