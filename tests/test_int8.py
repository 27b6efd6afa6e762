"""int8 as a first-class path: the featurizer stage, ``fit --int8``, ``predict --int8``, and the guard.

References are independent of the code under test where one exists: ONNX Runtime run by hand on
Pillow-decoded tensors for what Spark produced, and a deliberately broken calibration for the guard.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import assert_usage_errors, run_main


def _quantised(graph: bytes) -> bool:
    ops = Counter(n.op_type for n in onnx.load_from_string(graph).graph.node)
    return ops["QuantizeLinear"] > 10 and ops["DequantizeLinear"] > 10


def _rows(spark, imagenette: Path, split: str, per_class: int):
    from sparkvision.io import load_images
    from sparkvision.io.splits import sample_per_class

    return sample_per_class(load_images(spark, str(imagenette / split)), per_class, 0).cache()


def test_featurizer_int8_calibrates_on_its_frame_saves_the_graph_and_matches_onnx_runtime(spark, imagenette,
                                                                                          tmp_path):
    import onnxruntime as ort

    from sparkvision.ml.featurizer import ImageFeaturizer
    from sparkvision.preprocess import ImagePreprocessor

    frame = _rows(spark, imagenette, "val", 3)
    fp32 = ImageFeaturizer(outputCol="f")
    int8 = ImageFeaturizer(outputCol="f", precision="int8")
    with pytest.raises(ValueError, match="needs calibrating"):
        int8.model_source()
    got8 = {r.path: r.f.toArray() for r in int8.transform(frame).collect()}  # calibrates on a sample of frame
    got32 = {r.path: r.f.toArray() for r in fp32.transform(frame).collect()}
    source = int8.model_source()
    assert source.precision == "int8" and _quantised(source.data) and int8.calibration_images == len(got8) == 30

    # The same graph run by hand on the Pillow-decoded tensors gives Spark's vectors.
    rows = frame.select("path", "content").collect()
    tensor = ImagePreprocessor(source.preprocess)([bytes(r.content) for r in rows]).tensor
    session = ort.InferenceSession(source.data, providers=["CPUExecutionProvider"])
    reference = session.run([source.output("features")], {source.input_name: tensor})[0]
    for row, expected in zip(rows, reference, strict=True):
        np.testing.assert_allclose(got8[row.path], expected, rtol=1e-4, atol=1e-4)
    # int8 is an approximation of fp32's features, not another model.
    a, b = np.stack([got32[p] for p in got8]), np.stack(list(got8.values()))
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert np.median(cosine) > 0.9, cosine

    int8.write().overwrite().save(str(tmp_path / "stage"))
    loaded = ImageFeaturizer.load(str(tmp_path / "stage"))
    assert loaded.getPrecision() == "int8" and loaded.model_source().digest == source.digest
    with pytest.raises(ValueError, match="precision must be one of"):
        ImageFeaturizer(precision="int4")


def test_the_guard_refuses_an_int8_graph_calibrated_on_the_wrong_range(spark, imagenette, fitted_imagenette):
    """Calibrated on inputs a thousand times too bright, every quantisation step is so wide that real
    activations round to a few levels: the guard keeps fp32. (Constant black images are not enough:
    the batch norms' biases still give the layers a usable range.)"""
    from sparkvision.deploy.int8 import judge, quantize_source
    from sparkvision.deploy.measure import read_image_set
    from sparkvision.models.runner import from_model_dir

    source = from_model_dir(fitted_imagenette["model_dir"])
    val = read_image_set(spark, str(imagenette / "val"), source.preprocess, 60)
    good = quantize_source(source, val.tensor[:30])
    broken = quantize_source(source, val.tensor[:8] * 1000.0)
    labels = list(source.labels)
    kept = judge(source.data, good.data, val, labels, 30, max_drop=5.0)
    refused = judge(source.data, broken.data, val, labels, 8, max_drop=5.0)
    assert kept.accepted and kept.precision == "int8" and kept.top1_agreement > 0.9
    assert not refused.accepted and refused.precision == "fp32"
    assert refused.accuracy_drop_points > 5.0 and "beyond" in refused.reason
    # The figures are what they say: accuracy on the labelled images, from the models' own top-1.
    assert kept.fp32_accuracy == pytest.approx(refused.fp32_accuracy)


@pytest.mark.slow
def test_fit_int8_keeps_the_quantised_backbone_in_pipeline_and_model_onnx(spark, imagenette, tmp_path):
    import onnxruntime as ort

    from sparkvision.inference.predict import load_model
    from sparkvision.models.model_dir import load_card
    from sparkvision.preprocess import ImagePreprocessor

    out = tmp_path / "m8"
    code, printed = run_main("fit", "--train", imagenette / "train", "--per-class", 8, "--val", imagenette / "val",
                             "--val-per-class", 4, "--int8", "--int8-max-drop", 5, "--out", out)
    assert code == 0
    report = json.loads(printed)["int8"]
    card = load_card(out)
    assert card.metrics["int8"] == report and report["val_images"] == 40 and report["calibration_images"] == 80
    assert report["fp32_accuracy"] is not None and report["int8_accuracy"] is not None
    assert report["accepted"] == (report["accuracy_drop_points"] <= 5.0)
    assert report["accepted"], report  # 5 points on 40 images: only a broken quantisation fails
    assert "int8" in card.architecture and card.provenance["precision"] == "int8"
    graph = (out / "model.onnx").read_bytes()
    assert _quantised(graph)

    # Spark's predictions of the saved pipeline are model.onnx's, run by hand.
    frame = _rows(spark, imagenette, "val", 2)
    model = load_model(out)
    got = {r.path: r.prediction for r in model.predictions(frame).collect()}
    rows = frame.select("path", "content").collect()
    tensor = ImagePreprocessor(card.preprocess)([bytes(r.content) for r in rows]).tensor
    logits = ort.InferenceSession(graph, providers=["CPUExecutionProvider"]).run(["logits"], {"input": tensor})[0]
    assert [got[r.path] for r in rows] == [card.labels[i] for i in logits.argmax(1)]


@pytest.mark.slow
def test_predict_int8_quantises_an_fp32_model_once_and_caches_the_verdict(spark, imagenette, fitted_imagenette,
                                                                          tmp_path):
    from sparkvision.config import cache_dir
    from sparkvision.models.model_dir import model_digest

    model_dir = tmp_path / "model"
    shutil.copytree(fitted_imagenette["model_dir"], model_dir)
    for old in (cache_dir() / "int8").glob(f"model-{model_digest(model_dir)}-*"):
        old.unlink()
    src = imagenette / "val"
    code, printed = run_main("predict", "--model", model_dir, "--input", src, "--out", tmp_path / "p8", "--int8",
                             "--int8-max-drop", 5)
    assert code == 0
    first = json.loads(printed)
    decision = first["int8"]
    assert decision["calibration_images"] == 200 and decision["val_images"] == 200
    assert decision["fp32_accuracy"] is not None  # the input's folders are labels: accuracy, not agreement
    assert decision["accepted"] and first["model_version"].endswith("-int8")
    cached = sorted((cache_dir() / "int8").glob(f"model-{model_digest(model_dir)}-5*"))
    assert [p.suffix for p in cached] == [".json", ".onnx"] and _quantised(cached[1].read_bytes())
    stamps = [p.stat().st_mtime_ns for p in cached]
    code, printed = run_main("predict", "--model", model_dir, "--input", src, "--out", tmp_path / "p8b", "--int8",
                             "--int8-max-drop", 5)
    assert code == 0 and json.loads(printed)["int8"] == decision
    assert [p.stat().st_mtime_ns for p in cached] == stamps  # the second run read the verdict, wrote nothing
    a = spark.read.parquet(str(tmp_path / "p8")).select("path", "prediction").collect()
    b = spark.read.parquet(str(tmp_path / "p8b")).select("path", "prediction").collect()
    assert sorted(a) == sorted(b) and len(a) == 400
    # fp32 and int8 disagree on few of the 400 photos
    code, _ = run_main("predict", "--model", model_dir, "--input", src, "--out", tmp_path / "p32")
    c = dict(spark.read.parquet(str(tmp_path / "p32")).select("path", "prediction").collect())
    agreement = np.mean([c[p] == q for p, q in a])
    assert agreement > 0.95, agreement


def test_int8_usage_errors(spark, caplog, fitted_imagenette, tmp_path):
    model = fitted_imagenette["model_dir"]
    assert_usage_errors(caplog, [
        (["predict", "--model", model, "--input", tmp_path, "--out", tmp_path / "o", "--int8", "--stream",
          "--checkpoint", tmp_path / "c"], "--int8 quantises on a batch predict's input"),
        (["predict", "--model", model, "--input", tmp_path, "--out", tmp_path / "o", "--int8-max-drop", 1],
         "--int8-max-drop applies to --int8"),
        (["fit", "--train", tmp_path, "--out", tmp_path / "m", "--int8", "--int8-max-drop", -1],
         "int8_max_drop (--int8-max-drop) must be >= 0"),
    ])
