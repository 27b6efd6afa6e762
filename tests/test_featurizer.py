"""ImageFeaturizer on real photos and bad rows: same numbers as ONNX Runtime run directly, no row lost."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pyspark.ml import Pipeline, PipelineModel
from pyspark.sql import functions as F
from torch import nn

from sparkvision.config import PreprocessConfig
from sparkvision.io.schema import IMAGE_SCHEMA
from sparkvision.ml.featurizer import ImageFeaturizer
from sparkvision.models import get_spec, registry
from sparkvision.models.onnx_export import export_onnx, registered_onnx
from sparkvision.models.registry import register_onnx_model
from sparkvision.models.runtime import OnnxModel
from sparkvision.preprocess import ImagePreprocessor


def _rows(imagenette, count: int = 10):
    """Real photos of several classes, then bad rows: empty, not an image, truncated, null, prior error."""
    files = sorted((imagenette / "val").glob("*/*"))[::40][:count]
    rows = [(f"file:{f}", f.parent.name, f.read_bytes(), None) for f in files]
    truncated = files[0].read_bytes()[:600]
    rows += [
        ("bad/empty.jpg", "x", b"", None),
        ("bad/text.jpg", "x", b"not an image" * 20, None),
        ("bad/truncated.jpg", "x", truncated, None),
        ("bad/null.jpg", "x", None, None),
        ("bad/prior.jpg", "x", files[1].read_bytes(), "unreadable: reported by ingest"),
    ]
    return rows


def _frame(spark, rows, partitions: int = 3):
    schema = IMAGE_SCHEMA
    full = [(p, label, content, None, None, None, None, None, error) for p, label, content, error in rows]
    return spark.createDataFrame(full, schema=schema).repartition(partitions)


def test_features_equal_onnx_runtime_on_the_same_tensors(spark, imagenette):
    rows = _rows(imagenette)
    featurizer = ImageFeaturizer(batchSize=4)
    out = featurizer.transform(_frame(spark, rows))
    got = {r["path"]: r for r in out.select("path", "features", "error").collect()}
    assert featurizer.rows_processed == len(rows)  # every row through the model's UDF once

    assert len(got) == len(rows) == out.count()
    spec = get_spec("efficientnet_lite0")
    good = [(p, c) for p, _, c, e in rows if e is None and not p.startswith("bad/")]
    batch = ImagePreprocessor(spec.preprocess)([c for _, c in good])
    assert len(batch.index) == len(good)
    expected = OnnxModel(registered_onnx("efficientnet_lite0"), threads=1).run(batch.tensor, ["features"])[0]
    for (path, _), want in zip(good, expected, strict=True):
        assert got[path]["error"] is None
        vector = got[path]["features"].toArray()
        assert vector.shape == (1280,)
        np.testing.assert_allclose(vector, want, rtol=1e-4, atol=1e-5)

    kinds = {p: (got[p]["error"] or "").split(":")[0] for p in got if p.startswith("bad/")}
    assert kinds == {
        "bad/empty.jpg": "empty_file", "bad/text.jpg": "not_an_image", "bad/truncated.jpg": "truncated",
        "bad/null.jpg": "unreadable", "bad/prior.jpg": "unreadable",
    }
    assert got["bad/prior.jpg"]["error"] == "unreadable: reported by ingest"  # kept, not overwritten
    assert all(got[p]["features"] is None for p in kinds)


def test_logits_output_and_a_filter_on_errors_do_not_run_the_model_twice(spark, imagenette):
    rows = _rows(imagenette, count=4)
    featurizer = ImageFeaturizer(output="logits", outputCol="logits", batchSize=8)
    out = featurizer.transform(_frame(spark, rows, partitions=2)).where(F.col("error").isNull())
    got = out.select("path", "logits").collect()
    assert len(got) == 4 and all(len(r["logits"]) == 1000 for r in got)
    # The filter on the UDF's error column must not be evaluated through a second model call.
    assert featurizer.rows_processed == len(rows)
    spec = get_spec("efficientnet_lite0")
    photo = next(c for p, _, c, _ in rows if p == got[0]["path"])
    want = OnnxModel(registered_onnx("efficientnet_lite0")).run(ImagePreprocessor(spec.preprocess)([photo]).tensor,
                                                               ["logits"])[0][0]
    np.testing.assert_allclose(got[0]["logits"].toArray(), want, rtol=1e-4, atol=1e-4)


def test_flip_tta_in_spark_gives_the_runners_averaged_features_and_survives_saving(spark, imagenette, tmp_path):
    from sparkvision.models.runner import ClassifierRunner

    rows = _rows(imagenette, count=3)
    featurizer = ImageFeaturizer(batchSize=2, tta="flip")
    path = str(tmp_path / "featurizer")
    featurizer.save(path)
    loaded = ImageFeaturizer.load(path)
    assert loaded.getTta() == "flip"
    got = {r["path"]: r["features"] for r in loaded.transform(_frame(spark, rows, partitions=2)).collect()}
    good = [(p, c) for p, _, c, e in rows if e is None and not p.startswith("bad/")]
    want = ClassifierRunner.from_registry("efficientnet_lite0", tta="flip").features([c for _, c in good]).values
    plain = ClassifierRunner.from_registry("efficientnet_lite0").features([c for _, c in good]).values
    for (path, _), vector, unflipped in zip(good, want, plain, strict=True):
        np.testing.assert_allclose(got[path].toArray(), vector, rtol=1e-4, atol=1e-5)
        assert np.abs(got[path].toArray() - unflipped).max() > 1e-2
    assert all(got[p] is None for p, *_ in rows if p.startswith("bad/"))
    with pytest.raises(ValueError, match="tta must be one of"):
        ImageFeaturizer(tta="rotate")


def test_params_follow_spark_ml_conventions():
    featurizer = ImageFeaturizer(inputCol="bytes", outputCol="vec", batchSize=7)
    assert (featurizer.getInputCol(), featurizer.getOutputCol(), featurizer.getBatchSize()) == ("bytes", "vec", 7)
    assert featurizer.getModelName() == "efficientnet_lite0" and featurizer.getOutput() == "features"
    copy = featurizer.copy({featurizer.batchSize: 3})
    assert copy.getBatchSize() == 3 and featurizer.getBatchSize() == 7
    assert "batchSize" in featurizer.explainParams()
    with pytest.raises(ValueError, match="output must be one of"):
        ImageFeaturizer(output="pixels")
    with pytest.raises(ValueError, match="batchSize"):
        ImageFeaturizer(batchSize=0)


class _TinyNet(nn.Module):
    """A small CNN with timm's interface, to register as a user's own ONNX backbone."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, stride=4)
        self.fc = nn.Linear(8, 3)

    def forward_features(self, x):
        return torch.relu(self.conv(x)).mean(dim=(2, 3))

    def forward_head(self, f):
        return self.fc(f)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def test_user_onnx_backbone_is_embedded_when_saved_and_loads_without_its_file(spark, imagenette, tmp_path, monkeypatch):
    # the user's model is registered for this test only: the registry is process-wide
    monkeypatch.setitem(registry._REGISTRY, "tiny_user_net", None)
    onnx_file = export_onnx(_TinyNet(), tmp_path / "tiny.onnx", (3, 32, 32), with_features=True)
    preprocess = PreprocessConfig.preset("imagenet", size=(32, 32))
    register_onnx_model("tiny_user_net", onnx_file, preprocess, labels=["a", "b", "c"],
                        features_output="features", overwrite=True)
    rows = _rows(imagenette, count=3)[:3]
    frame = _frame(spark, rows, partitions=1)
    featurizer = ImageFeaturizer(modelName="tiny_user_net", outputCol="f")
    assert featurizer.num_features() == 8
    model = Pipeline(stages=[featurizer]).fit(frame)
    before = {r["path"]: r["f"].toArray() for r in model.transform(frame).collect()}
    model.write().save(str(tmp_path / "saved"))
    onnx_file.unlink()  # the saved pipeline must not depend on the user's file any more

    loaded = PipelineModel.load(str(tmp_path / "saved"))
    after = {r["path"]: r["f"].toArray() for r in loaded.transform(frame).collect()}
    assert before.keys() == after.keys() and len(before) == 3
    for path in before:
        np.testing.assert_array_equal(before[path], after[path])
    stage = loaded.stages[0]
    assert stage._embedded is not None and stage._embedded.preprocess == preprocess
