"""SQL functions of a model directory (``sparkvision.sql.register``, ``sparkvision sql``), through ``spark.sql``,
checked row for row against ``sparkvision predict`` on the same real photos and bad files."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from transfer_cases import reference_predictions

from sparkvision.io.errors import error_kind


@pytest.fixture(scope="module")
def reference(fitted_imagenette, imagenette) -> dict:
    return reference_predictions(fitted_imagenette["model_dir"], imagenette)


def _assert_same_as_predict(rows: list[dict], expected: dict[str, dict]) -> None:
    assert sorted(r["path"] for r in rows) == sorted(expected)  # every input row, once
    for row in rows:
        want = expected[row["path"]]
        assert error_kind(row["error"]) == error_kind(want["error"]), (row["path"], row["error"], want["error"])
        assert row["prediction"] == want["prediction"], row["path"]
        if want["probability"] is None:
            assert row["probability"] is None
        else:
            np.testing.assert_allclose(row["probability"], want["probability"], atol=1e-4)


def test_sql_functions_give_what_batch_predict_gives(spark, fitted_imagenette, reference):
    from pyspark.ml.functions import vector_to_array

    from sparkvision.io import load_images
    from sparkvision.ml import ImageFeaturizer
    from sparkvision.sql import register

    functions = register(spark, fitted_imagenette["model_dir"], name="imagenette")
    assert (functions.predict, functions.features) == ("imagenette", "imagenette_features")
    load_images(spark, reference["photos"], probe="header").createOrReplaceTempView("photos")
    # The prediction struct once per row (a subquery), and its fields as the predictions contract's columns.
    frame = spark.sql("SELECT path, p.prediction, p.probability, p.error, f FROM "
                      "(SELECT path, imagenette(content) AS p, imagenette_features(content) AS f FROM photos)")
    assert [(f.name, f.dataType.simpleString()) for f in frame.schema.fields] == [
        ("path", "string"), ("prediction", "string"), ("probability", "array<double>"), ("error", "string"),
        ("f", "array<float>")]
    rows = [r.asDict() for r in frame.collect()]
    _assert_same_as_predict(rows, reference["rows"])
    assert {error_kind(r["error"]) for r in rows if r["error"]} == {"empty_file", "not_an_image", "truncated"}
    assert sum(r["error"] is None for r in rows) == 20

    # The features are the backbone's pooled features, as the fit pipeline's own featurizer computes them.
    featurized = ImageFeaturizer(modelName="efficientnet_lite0").transform(
        spark.table("photos").where("error IS NULL")).select("path", vector_to_array("features").alias("v"))
    want = {r["path"]: r["v"] for r in featurized.collect()}
    for row in rows:
        if row["error"] is None:
            assert len(row["f"]) == 1280
            np.testing.assert_allclose(row["f"], want[row["path"]], rtol=1e-4, atol=1e-4)
        else:
            assert row["f"] is None


def test_sql_command_registers_reads_and_queries(cli, fitted_imagenette, reference, tmp_path):
    model = fitted_imagenette["model_dir"]
    query = "SELECT path, p.* FROM (SELECT path, m(content) AS p FROM photos) ORDER BY path"
    code, out = cli("sql", "--register", f"m={model}", "--input", f"photos={reference['photos']}", "--limit", 5, query)
    assert code == 0
    result = json.loads(out)
    assert result["columns"] == ["path", "prediction", "probability", "error"]
    assert result["functions"][0]["predict"] == "m" and result["functions"][0]["features"] == "m_features"
    shown = result["shown"]
    assert len(shown) == 5 and [r["path"] for r in shown] == sorted(reference["rows"])[:5]
    _assert_same_as_predict(shown, {r["path"]: reference["rows"][r["path"]] for r in shown})

    code, out = cli("sql", "--register", f"m={model}", "--input", reference["photos"], "--out", tmp_path / "p",
                    "SELECT path, m(content).error AS error FROM images")
    assert code == 0 and json.loads(out)["rows"] == len(reference["rows"])


def test_register_refuses_what_it_cannot_run(spark, fitted_imagenette, tmp_path, cli, caplog):
    from sparkvision.sql import function_name, register

    assert function_name("fitted-imagenette") == "fitted_imagenette" and function_name("2024 model") == "m_2024_model"
    with pytest.raises(ValueError, match="not a SQL identifier"):
        register(spark, fitted_imagenette["model_dir"], name="drop table")
    no_graph = tmp_path / "no_graph"
    no_graph.mkdir()
    shutil.copy(fitted_imagenette["model_dir"] / "sparkvision_model.json", no_graph)
    with pytest.raises(FileNotFoundError, match="sparkvision export"):
        register(spark, no_graph)
    code, _ = cli("sql", "--register", str(no_graph), "SELECT 1")
    assert code == 2 and "--register takes NAME=VALUE" in caplog.text
