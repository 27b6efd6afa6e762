"""The core runs without Spark: decode, preprocessing, config, the model registry, the ONNX
runtime, the classifier runner, storage and the HTTP server import and work with pyspark
(and py4j) unimportable, so the server and the training ranks never need a JVM."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import importlib.abc
    import sys


    class NoSpark(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in ("pyspark", "py4j"):
                raise ModuleNotFoundError(f"No module named {name!r} (made unimportable by the test)")
            return None


    sys.meta_path.insert(0, NoSpark())
    try:
        import pyspark  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        raise AssertionError("pyspark is still importable")

    import tempfile
    from pathlib import Path

    import numpy as np
    import torch
    from PIL import Image, ImageOps

    import sparkvision.io
    from sparkvision import storage
    from sparkvision.config import DecodeSettings, TrainConfig
    from sparkvision.deploy.serve import create_app
    from sparkvision.io.decode import decode_image
    from sparkvision.io.errors import ErrorKind, ImageError
    from sparkvision.models.model_dir import ModelCard, save_card
    from sparkvision.models.onnx_export import export_onnx
    from sparkvision.models import create_model, get_spec, list_models
    from sparkvision.models.registry import ModelSpec
    from sparkvision.models.runner import ClassifierRunner
    from sparkvision.models.runtime import OnnxModel
    from sparkvision.preprocess import ImagePreprocessor
    from sparkvision.drift import load_profile, psi

    assert sparkvision.io.ImageError is ImageError and "load_images" in dir(sparkvision.io)
    TrainConfig()
    assert psi([1, 1], [1, 1]) == 0.0 and callable(load_profile)  # drift statistics need no JVM
    photo = Path(sys.argv[1])

    # Decode a real photo through storage, against Pillow's own decode.
    data = storage.read_bytes(photo.as_uri())
    decoded = decode_image(data, DecodeSettings())
    with Image.open(photo) as reference:
        expected_pixels = np.asarray(ImageOps.exif_transpose(reference).convert("RGB"))
    assert np.array_equal(np.asarray(decoded.convert("RGB")), expected_pixels)
    try:
        decode_image(b"not an image", DecodeSettings())
    except ImageError as exc:
        assert exc.kind == ErrorKind.NOT_AN_IMAGE, exc.kind
    else:
        raise AssertionError("garbage decoded")

    # Preprocess with a registered model's config; a bad row is an error, not a crash.
    assert "smallcnn" in list_models()
    spec = get_spec("smallcnn")
    assert isinstance(spec, ModelSpec)
    batch = ImagePreprocessor(spec.preprocess)([data, b"\\x89PNG broken"])
    assert batch.index.tolist() == [0] and batch.errors[0] is None and batch.errors[1]
    assert batch.tensor.shape == (1, 1, 28, 28) and batch.tensor.dtype == np.float32

    # A registered model, exported to ONNX, served over HTTP: all without a JVM.
    torch.manual_seed(0)
    model = create_model("smallcnn", num_classes=3).eval()
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(batch.tensor)), dim=1)[0].numpy()
    out = Path(tempfile.mkdtemp())
    export_onnx(model, out / "model.onnx", (1, 28, 28))
    save_card(out, ModelCard(name="tiny", kind="onnx", labels=["a", "b", "c"], preprocess=spec.preprocess))
    logits = OnnxModel(out / "model.onnx", threads=1).run_batched(batch.tensor, "logits", 8)
    assert np.allclose(torch.softmax(torch.from_numpy(logits), 1)[0].numpy(), expected, atol=1e-5)
    assert np.allclose(ClassifierRunner.from_model_dir(out).predict_proba(batch.tensor)[0], expected, atol=1e-5)

    from fastapi.testclient import TestClient

    with TestClient(create_app(out)) as client:
        response = client.post("/v1/predict?top_k=3", content=data, headers={"content-type": "image/jpeg"})
        assert response.status_code == 200, response.text
        top = response.json()["predictions"][0]["top_k"]
        served = {t["label"]: t["probability"] for t in top}
        assert np.allclose([served[k] for k in "abc"], expected, atol=1e-4), (served, expected)
        bad = client.post("/v1/predict", content=b"garbage", headers={"content-type": "image/jpeg"})
        assert bad.status_code == 415 and bad.json()["error"]["code"] == "not_an_image", bad.text

    loaded = sorted(m for m in sys.modules if m.partition(".")[0] in ("pyspark", "py4j"))
    assert not loaded, loaded
    print("CORE OK")
    """
)


def test_core_imports_and_works_without_pyspark(imagenette: Path) -> None:
    photo = sorted((imagenette / "val").rglob("*.JPEG"))[0]
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(photo)], capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "CORE OK" in result.stdout
