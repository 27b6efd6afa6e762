"""Report pieces that need no Spark: heat-map class selection, curves panels, HTML escaping, compare."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pandas as pd
from PIL import Image

from sparkvision.evaluation.metrics import Averages, ClassMetrics, EvaluationResult
from sparkvision.evaluation.report import (
    Report,
    _panel_of,
    compare_reports,
    heatmap_classes,
    plot_confusion,
    plot_curves,
    render_html,
)


def _result(labels: list[str], matrix: np.ndarray, **extra) -> EvaluationResult:
    tp = np.diag(matrix)
    per_class = [
        ClassMetrics(name, float(tp[i] / max(1, matrix[:, i].sum())), float(tp[i] / max(1, matrix[i].sum())), 0.0,
                     int(matrix[i].sum()), int(matrix[:, i].sum()), True)
        for i, name in enumerate(labels)
    ]
    defaults = dict(
        rows=int(matrix.sum()), evaluated_rows=int(matrix.sum()), error_rows=0, unlabeled_rows=0, invalid_rows=0,
        error_kinds={}, accuracy=float(tp.sum() / matrix.sum()), balanced_accuracy=0.5,
        macro=Averages(0.5, 0.5, 0.5), weighted=Averages(0.5, 0.5, 0.5), per_class=per_class,
        confusion_labels=labels, confusion_matrix=matrix.tolist(),
    )
    defaults.update(extra)
    return EvaluationResult(**defaults)


def _decode(uri: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def test_heat_map_keeps_the_classes_with_most_errors():
    n = 60
    matrix = np.diag(np.full(n, 50))
    confused = [3, 17, 42, 59]
    for a, b in zip(confused, confused[1:], strict=False):
        matrix[a, b] = 9
    result = _result([f"c{i:02d}" for i in range(n)], matrix)
    keep = heatmap_classes(result, 40)
    assert len(keep) == 40 and set(confused) <= set(keep) and keep == sorted(keep)
    image = _decode(plot_confusion(result, 40))
    assert image.width > 300 and image.height > 300
    assert heatmap_classes(result, 100) == list(range(n))


def test_curves_panels_follow_column_names():
    assert [_panel_of(c) for c in ("train_loss", "val_top5", "lr", "epoch_seconds", "train_samples_per_s", "gnorm")] \
        == ["loss", "accuracy", "learning rate", "speed", "speed", "other"]
    curves = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [1.0, 0.6, 0.4], "val_top1": [0.5, 0.7, 0.8],
                           "lr": [0.1, 0.01, 0.001], "epoch_seconds": [10.0, 9.5, 9.7]})
    wide = _decode(plot_curves(curves))
    narrow = _decode(plot_curves(curves[["epoch", "train_loss"]]))
    assert wide.width > 3 * narrow.width  # four panels vs one


def test_labels_and_paths_are_escaped_in_html():
    labels = ["<script>alert(1)</script>", "ok & fine"]
    result = _result(labels, np.array([[3, 1], [0, 4]]), unseen_labels=[labels[0]], unseen_label_rows=4)
    page = render_html(Report(result, "t"))
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "ok &amp; fine" in page
    assert "default-src 'none'" in page  # the report may fetch nothing


def test_compare_picks_the_best_of_each_metric(tmp_path):
    a = _result(["x", "y"], np.array([[9, 1], [1, 9]]), log_loss=0.3, ece=0.05, source={"model": "a"})
    b = _result(["x", "y"], np.array([[8, 2], [2, 8]]), log_loss=0.2, ece=0.09, source={"model": "b"})
    for name, res in (("ra", a), ("rb", b)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(res.to_dict()))
    cmp = compare_reports([tmp_path / "ra", tmp_path / "rb"])
    assert cmp["models"] == ["a", "b"]
    assert cmp["best"]["accuracy"] == "a" and cmp["best"]["log_loss"] == "b" and cmp["best"]["ece"] == "a"
    assert cmp["metrics"]["accuracy"] == [0.9, 0.8]
