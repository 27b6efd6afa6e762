"""``--backbone hf:DIR_OR_ID``: tiny randomly initialised ``transformers`` vision models, saved to a
directory with their image processors, exported to ONNX once and used like any backbone.

The references are independent of sparkvision: the torch model's own outputs on the same
pixels, and the processor's own preprocessing of a Pillow image.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow.parquet as pq
import pytest
import torch
import transformers
from conftest import assert_usage_errors, run_main
from PIL import Image
from transfer_cases import photo_folder

from sparkvision.cli.common import ExitCode
from sparkvision.models import get_spec, registry
from sparkvision.models.backbone import resolve_backbone
from sparkvision.models.huggingface import HFBackboneError, content_digest, processor_preprocess
from sparkvision.models.model_dir import load_card
from sparkvision.preprocess import ImagePreprocessor

VIT_LABELS = {0: "cat", 1: "dog", 2: "owl"}
MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
EXPORTED = "exporting Hugging Face model"
SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(autouse=True)
def _own_cache_and_registry(tmp_path, monkeypatch, private_registry):
    """Each test exports into its own cache, and its registrations stay in the test."""
    monkeypatch.setenv("SPARKVISION_CACHE", str(tmp_path / "cache"))


def _vit(directory: Path, seed: int = 0, head: bool = True) -> Path:
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=64, num_labels=len(VIT_LABELS),
                                    id2label=VIT_LABELS, label2id={v: k for k, v in VIT_LABELS.items()})
    torch.manual_seed(seed)
    model = transformers.ViTForImageClassification(config) if head else transformers.ViTModel(config)
    model.save_pretrained(directory)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=MEAN, image_std=STD,
                                   resample=3).save_pretrained(directory)
    return directory


def _photo(width: int, height: int, seed: int = 0) -> tuple[Image.Image, bytes]:
    """A smooth random RGB picture and its PNG bytes (lossless, so both sides decode the same pixels)."""
    noise = np.random.default_rng(seed).integers(0, 256, (height // 4, width // 4, 3), dtype=np.uint8)
    img = Image.fromarray(noise).resize((width, height), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return img, buffer.getvalue()


def _onnx_outputs(name: str, pixels: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(get_spec(name).onnx_path, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"input": pixels}), strict=True))


def test_a_vit_exports_once_with_its_processors_preprocessing_and_the_torch_models_outputs(tmp_path, caplog):
    directory = _vit(tmp_path / "tiny-vit")
    caplog.set_level("INFO", logger="sparkvision.models.huggingface")
    name = resolve_backbone(f"hf:{directory}")
    spec = get_spec(name)
    assert name.startswith("hf:tiny-vit-") and spec.is_onnx and spec.labels == ("cat", "dog", "owl")
    assert spec.num_classes == 3 and spec.num_features == 32
    assert spec.preprocess.size == (32, 32) and spec.preprocess.resize_mode == "resize"
    assert spec.preprocess.interpolation == "bicubic" and spec.preprocess.mean == pytest.approx(MEAN)

    # sparkvision's preprocessing of a photo is the processor's own, to float rounding.
    img, png = _photo(80, 60)
    ours = ImagePreprocessor(spec.preprocess)([png]).tensor
    processor = transformers.AutoImageProcessor.from_pretrained(directory)
    np.testing.assert_allclose(ours, processor(images=img, return_tensors="np")["pixel_values"], atol=1e-5)

    # The graph gives the torch model's pooled features (the head's input: the normed CLS token) and logits.
    model = transformers.ViTForImageClassification.from_pretrained(directory).eval()
    pixels = np.concatenate([ours, ImagePreprocessor(spec.preprocess)([_photo(50, 70, seed=1)[1]]).tensor])
    got = _onnx_outputs(name, pixels)
    with torch.no_grad():
        x = torch.from_numpy(pixels)
        features = model.vit(pixel_values=x).last_hidden_state[:, 0]
        logits = model(pixel_values=x).logits
    np.testing.assert_allclose(got["features"], features.numpy(), atol=1e-4)
    np.testing.assert_allclose(got["logits"], logits.numpy(), atol=1e-4)
    assert json.loads(Path(spec.onnx_path).with_suffix(".json").read_text())["onnx_max_abs_diff"] < 1e-4

    # Resolved again (a fresh process has an empty registry): the cached graph, no second export.
    stamp = os.stat(spec.onnx_path).st_mtime_ns
    del registry._REGISTRY[name]
    assert resolve_backbone(f"hf:{directory}") == name
    assert caplog.text.count(EXPORTED) == 1 and os.stat(spec.onnx_path).st_mtime_ns == stamp

    # Changed weights, or a changed processor config: a new name and a new export.
    _vit(directory, seed=1)
    changed = resolve_backbone(f"hf:{directory}")
    assert changed != name and changed.startswith("hf:tiny-vit-") and caplog.text.count(EXPORTED) == 2
    config = json.loads((directory / "preprocessor_config.json").read_text())
    (directory / "preprocessor_config.json").write_text(json.dumps({**config, "image_mean": [0.5] * 3}))
    assert resolve_backbone(f"hf:{directory}") not in (name, changed) and caplog.text.count(EXPORTED) == 3
    assert get_spec(name).onnx_path != get_spec(changed).onnx_path


def _dinov2(directory: Path) -> tuple[Path, type]:
    torch.manual_seed(0)
    transformers.Dinov2Model(transformers.Dinov2Config(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
    )).save_pretrained(directory)
    # DINOv2's processor: shorter side to 40, the centre 32 x 32, bicubic, ImageNet mean/std.
    transformers.BitImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32},
                                   do_center_crop=True, image_mean=[0.485, 0.456, 0.406],
                                   image_std=[0.229, 0.224, 0.225]).save_pretrained(directory)
    return directory, transformers.Dinov2Model


def _convnext(directory: Path) -> tuple[Path, type]:
    torch.manual_seed(0)
    transformers.ConvNextModel(transformers.ConvNextConfig(
        hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, image_size=32,
    )).save_pretrained(directory)
    # ConvNeXt's rule below 384: the shorter side to 32 / 0.8 = 40, then the centre 32 x 32.
    transformers.ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.8).save_pretrained(directory)
    return directory, transformers.ConvNextModel


def _clip(directory: Path) -> tuple[Path, type]:
    torch.manual_seed(0)
    transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(
        image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, projection_dim=16,
    )).save_pretrained(directory)
    transformers.CLIPImageProcessor(size={"shortest_edge": 32},
                                    crop_size={"height": 32, "width": 32}).save_pretrained(directory)
    return directory, transformers.CLIPVisionModelWithProjection


@pytest.mark.parametrize("build, reference, width", [
    (_dinov2, lambda out: out.pooler_output, 32),  # the normed CLS token
    (_convnext, lambda out: out.pooler_output, 16),  # the normed mean of the last map
    (_clip, lambda out: out.image_embeds, 16),  # the projected CLS token
])
def test_features_only_models_give_their_pooled_output(tmp_path, build, reference, width):
    directory, cls = build(tmp_path / "model")
    spec = get_spec(resolve_backbone(f"hf:{directory}"))
    assert spec.labels is None and spec.num_classes == 0 and spec.num_features == width
    assert spec.preprocess.size == (32, 32) and spec.preprocess.resize_mode == "center_crop"

    # Sizes whose longer side scales to a whole number or well away from .5: the processor truncates
    # where sparkvision rounds, which may move that side by one pixel.
    photos = [_photo(90, 70, seed=0), _photo(50, 100, seed=1)]
    ours = ImagePreprocessor(spec.preprocess)([png for _, png in photos]).tensor
    processor = transformers.AutoImageProcessor.from_pretrained(directory)
    want = processor(images=[img for img, _ in photos], return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(ours, want, atol=1e-5)

    model = cls.from_pretrained(directory).eval()
    with torch.no_grad():
        expected = reference(model(pixel_values=torch.from_numpy(ours))).numpy()
    got = _onnx_outputs(spec.name, ours)
    assert list(got) == ["features"]
    np.testing.assert_allclose(got["features"], expected, atol=1e-4)


def test_processor_settings_map_onto_preprocess_config():
    pil = transformers.image_utils.PILImageResampling
    # A squash then a crop: kept as a centre crop of the same share.
    deit = transformers.ViTImageProcessor(size={"height": 256, "width": 256}, do_center_crop=True,
                                          crop_size={"height": 224, "width": 224}, resample=pil.BICUBIC)
    deit.do_center_crop = True  # ViT's own processor has no crop; DeiT's keeps these two attributes
    deit.crop_size = {"height": 224, "width": 224}
    config = processor_preprocess(deit)
    assert (config.size, config.resize_mode, config.crop_pct) == ((224, 224), "center_crop", 224 / 256)
    # No rescale: mean and std are in 0-255 units; no normalisation: x / 255 as it is.
    raw = transformers.ViTImageProcessor(size={"height": 8, "width": 8}, do_rescale=False,
                                         image_mean=[127.5] * 3, image_std=[127.5] * 3)
    assert processor_preprocess(raw).mean == pytest.approx((0.5,) * 3)
    assert processor_preprocess(raw).std == pytest.approx((0.5,) * 3)
    plain = transformers.ViTImageProcessor(size={"height": 8, "width": 8}, do_normalize=False, resample=pil.NEAREST)
    assert (processor_preprocess(plain).mean, processor_preprocess(plain).std) == ((0.0,) * 3, (1.0,) * 3)
    assert processor_preprocess(plain).interpolation == "nearest"
    big = transformers.ConvNextImageProcessor(size={"shortest_edge": 384})  # from 384 up ConvNeXt warps
    assert (processor_preprocess(big).size, processor_preprocess(big).resize_mode) == ((384, 384), "resize")
    with pytest.raises(HFBackboneError, match="do_resize"):
        processor_preprocess(transformers.ViTImageProcessor(do_resize=False))


def test_fit_on_an_hf_backbone_and_predict_where_it_was_never_registered(imagenette, tmp_path, cli):
    directory = _vit(tmp_path / "tiny-vit")
    classes = ["golf_ball", "parachute"]
    train = photo_folder(imagenette, "train", tmp_path / "train", classes, per_class=6)
    model = tmp_path / "model"
    code, printed = cli("fit", "--train", train, "--val-fraction", "0.34", "--backbone", f"hf:{directory}",
                        "--out", model)
    assert code == 0
    report = json.loads(printed)
    card = load_card(model)
    assert report["backbone"].startswith("hf:tiny-vit-") and card.provenance["backbone"] == report["backbone"]
    assert card.preprocess == get_spec(report["backbone"]).preprocess and card.onnx
    assert report["validation"]["rows"] == 4 and report["validation"]["error_rows"] == 0

    # Without the registration (a fresh process has none), the cache or the directory: the saved
    # featurizer embeds the graph.
    del registry._REGISTRY[report["backbone"]]
    shutil.rmtree(tmp_path / "cache")
    shutil.rmtree(directory)
    photos = photo_folder(imagenette, "val", tmp_path / "new", classes, per_class=2)
    code, printed = cli("predict", "--model", model, "--input", photos, "--out", tmp_path / "predictions")
    assert code == 0 and json.loads(printed)["predicted"] == 4
    rows = {r["path"]: r for r in pq.read_table(tmp_path / "predictions").to_pylist()}
    # serve's model.onnx (the ViT + the head), in a process where transformers cannot even be imported,
    # gives the probabilities Spark gave.
    paths = sorted(rows)
    files = [p.removeprefix("file:") for p in paths]
    script = ("import sys, json; sys.modules['transformers'] = None; "
              "from sparkvision.models.runner import ClassifierRunner; "
              f"runner = ClassifierRunner.from_model_dir({str(model)!r}, threads=1); "
              f"print(json.dumps(runner.predict_proba([open(p, 'rb').read() for p in {files!r}]).values.tolist()))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": SRC})
    assert done.returncode == 0, done.stderr[-3000:]
    np.testing.assert_allclose(json.loads(done.stdout), [rows[p]["probability"] for p in paths], atol=1e-5)


def test_classify_names_id2label_and_refuses_a_model_without_a_head(imagenette, tmp_path, cli, caplog):
    directory = _vit(tmp_path / "tiny-vit")
    photos = photo_folder(imagenette, "val", tmp_path / "photos", ["tench"], per_class=3)
    code, printed = cli("classify", "--input", photos, "--backbone", f"hf:{directory}", "--top-k", "3")
    assert code == 0
    rows = json.loads(printed)
    spec = get_spec(resolve_backbone(f"hf:{directory}"))
    model = transformers.ViTForImageClassification.from_pretrained(directory).eval()
    for row in rows:
        pixels = ImagePreprocessor(spec.preprocess)([Path(row["path"].removeprefix("file:")).read_bytes()]).tensor
        with torch.no_grad():
            probabilities = model(pixel_values=torch.from_numpy(pixels)).logits.softmax(-1)[0].numpy()
        assert [t["label"] for t in row["top_k"]] == [VIT_LABELS[i] for i in np.argsort(-probabilities)]
        assert [t["probability"] for t in row["top_k"]] == pytest.approx(sorted(probabilities)[::-1], abs=1e-4)

    features_only = _vit(tmp_path / "vit-features", head=False)
    caplog.clear()
    code, printed = run_main("classify", "--input", photos, "--backbone", f"hf:{features_only}")
    assert code == ExitCode.USAGE and printed == ""
    assert "has no image-classification head" in caplog.text


def test_an_hf_backbone_featurizes_on_spark(spark, imagenette, tmp_path):
    from sparkvision.io import load_images
    from sparkvision.ml import ImageFeaturizer

    directory, _ = _dinov2(tmp_path / "dino")
    name = resolve_backbone(f"hf:{directory}")
    photos = photo_folder(imagenette, "val", tmp_path / "photos", ["tench", "church"], per_class=2)
    rows = ImageFeaturizer(modelName=name).transform(load_images(spark, str(photos))).collect()
    assert len(rows) == 4 and all(r["error"] is None for r in rows)
    model = transformers.Dinov2Model.from_pretrained(directory).eval()
    spec = get_spec(name)
    for row in rows:
        pixels = ImagePreprocessor(spec.preprocess)([Path(row["path"].removeprefix("file:")).read_bytes()]).tensor
        with torch.no_grad():
            expected = model(pixel_values=torch.from_numpy(pixels)).pooler_output[0].numpy()
        np.testing.assert_allclose(row["features"].toArray(), expected, atol=1e-4)


def _cli_then(args: list[str], then: str, prelude: str = "", **env: str) -> tuple[int, list[str], str]:
    """In a fresh process: ``sparkvision ARGS`` (its exit code and stderr lines), then the code ``then`` (its stdout)."""
    script = (f"import sys; {prelude}from sparkvision.cli.main import main; code = main({args!r}); "
              f"sys.stderr.write('\\n<end>\\n'); print(code); {then}")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180,
                          env={**os.environ, "PYTHONPATH": SRC, **env})
    assert done.returncode == 0 and "<end>" in done.stderr, done.stderr[-3000:]
    code, _, printed = done.stdout.partition("\n")
    return int(code), done.stderr.split("<end>")[0].strip().splitlines(), printed.strip()


def test_without_transformers_hf_says_how_to_install_it_and_the_rest_works(tmp_path):
    directory = _vit(tmp_path / "tiny-vit")
    code, lines, printed = _cli_then(
        ["fit", "--train", str(tmp_path), "--out", str(tmp_path / "m"), "--backbone", f"hf:{directory}"],
        # Everything else imports and resolves without it.
        "import sparkvision.ml, sparkvision.models.huggingface; "
        "from sparkvision.models.backbone import resolve_backbone; print(resolve_backbone('efficientnet_lite0'))",
        prelude="sys.modules['transformers'] = None; ")
    assert code == ExitCode.USAGE and len(lines) == 1 and "pip install 'sparkvision[hf]'" in lines[0], lines
    assert printed == "efficientnet_lite0"


def test_hub_ids_come_from_the_hugging_face_cache_and_an_uncached_one_is_one_line(tmp_path):
    # The hub's cache layout (what from_pretrained leaves behind): refs/main names the snapshot.
    repo = tmp_path / "hf-home" / "hub" / "models--acme--tiny-vit"
    commit = "0123456789abcdef0123456789abcdef01234567"
    _vit(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    code, lines, printed = _cli_then(
        ["fit", "--train", str(tmp_path), "--out", str(tmp_path / "m"), "--backbone", "hf:acme/not-cached"],
        "from sparkvision.models.backbone import resolve_backbone; print(resolve_backbone('hf:acme/tiny-vit'))",
        HF_HOME=str(tmp_path / "hf-home"), HF_HUB_OFFLINE="1", SPARKVISION_CACHE=str(tmp_path / "cache"))
    assert code == ExitCode.USAGE and len(lines) == 1, lines
    assert "hf:acme/not-cached is not a local directory" in lines[0]
    assert printed == f"hf:tiny-vit-{content_digest(repo / 'snapshots' / commit)[:8]}"


def test_hf_misuse_is_a_usage_error_before_spark_starts(tmp_path, caplog):
    directory = _vit(tmp_path / "tiny-vit")
    (tmp_path / "empty").mkdir()
    cases = [
        (["train", "--train", tmp_path, "--out", tmp_path / "m", "--backbone", f"hf:{directory}"],
         "train fine-tunes registered torch models only"),
        (["fit", "--train", tmp_path, "--out", tmp_path / "m", "--backbone", f"hf:{directory}",
          "--backbone-size", "64"], "declare the preprocessing of"),
        (["fit", "--train", tmp_path, "--out", tmp_path / "m", "--backbone", f"hf:{tmp_path / 'empty'}"],
         "has no config.json"),
        (["fit", "--train", tmp_path, "--out", tmp_path / "m", "--backbone", f"hf:{tmp_path / 'nowhere'}"],
         "no such directory"),
    ]
    assert_usage_errors(caplog, cases)
