"""``sparkvision plan``: the sizing rule, the sample it measures, and the command end to end.

Whether its estimate matches a real ``predict`` ten times its sample is checked on the
standalone cluster, where nothing else runs at the same time
(``tests/cluster/test_cluster_plan.py``).
"""

from __future__ import annotations

import io
import json
import math
import os

import numpy as np
import pytest
from conftest import assert_usage_errors, run_main
from PIL import Image

from sparkvision.inference.plan import plan_sample, resources_for, synthetic_photos


def test_resources_follow_the_sizing_rule_of_the_guides():
    # cores = images / (per-core rate x hours x 3600), rounded up; nodes = cores / cores per node.
    needed = resources_for(10_000_000, 8, 10.0, 16, 100_000, 80.0)
    assert needed["cores"] == math.ceil(10_000_000 / (10.0 * 8 * 3600)) == 35
    assert needed["nodes"] == 3
    assert needed["core_hours"] == pytest.approx(10_000_000 / 10.0 / 3600)
    assert needed["images_per_second"] == pytest.approx(350.0)
    assert needed["read_mb_s"] == pytest.approx(35.0) and needed["write_mb_s"] == pytest.approx(0.028)
    small = resources_for(10, 1, 10.0, 16, 1e5, None)  # never fewer than one core; no output size known
    assert small["cores"] == 1 and small["nodes"] == 1 and small["write_mb_s"] is None


def test_photos_made_to_a_size_are_real_jpegs_of_about_that_size():
    for target in (15_000, 120_000):
        photos = synthetic_photos(6, target, seed=1)
        assert len(photos) == 6
        assert abs(np.mean([len(p) for p in photos]) - target) <= 0.1 * target
        for data in photos:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                assert img.format == "JPEG" and img.mode == "RGB" and img.width * 3 // 4 == img.height


def test_the_sample_of_a_folder_is_read_from_it_and_sized_from_its_listing(spark, imagenette):
    from sparkvision.config import PlanSettings

    folder = imagenette / "val"
    files = [p for p in folder.rglob("*") if p.is_file()]
    sample = plan_sample(spark, str(folder), PlanSettings(sample=5), None, None)
    assert not sample.synthetic and sample.source_images == len(files) == 400
    assert sample.mean_bytes == pytest.approx(np.mean([os.path.getsize(p) for p in files]))
    contents = {p.read_bytes() for p in files}
    assert len(sample.contents) == 5 and all(c in contents for c in sample.contents)
    made = plan_sample(spark, None, PlanSettings(sample=3), 1000, 30_000)
    assert made.synthetic and made.source_images is None and len(made.contents) == 3


def test_plan_measures_predict_here_and_sizes_the_job(fitted_imagenette, imagenette, caplog):
    model = fitted_imagenette["model_dir"]
    code, printed = run_main("plan", "--model", model, "--input", imagenette / "val", "--sample", 8,
                             "--images", 2_000_000, "--hours", 4, "--cores-per-node", 8, "--int8")
    assert code == 0
    r = json.loads(printed)
    m = r["measured"]
    assert r["images"] == 2_000_000 and r["sample"]["images"] == 8 and r["sample"]["source_images"] == 400
    assert m["cores"] == 2 and set(m["runs_s"]) == {"first 8", "warm 8", "warm 64"}
    assert m["per_core_images_s"] > 0 and m["job_fixed_s"] >= 0 and m["output_bytes_per_image"] > 0
    per_image = m["per_image_ms"]
    assert per_image["decode"] > 0 and per_image["model"] > 0 and per_image["rest"] >= 0
    # An image never costs less than one core's decode and model work (noise in the runs' difference is floored).
    assert 1e3 / m["per_core_images_s"] >= per_image["decode"] + per_image["model"] - 1e-6
    # The figures are the rule applied to the measured rate, and the estimate here is a + b x N.
    assert r["needed"] == resources_for(2_000_000, 4, m["per_core_images_s"], 8, r["mean_bytes"],
                                        m["output_bytes_per_image"])
    assert r["estimate_here_s"] == pytest.approx(m["job_fixed_s"] + 2_000_000 / (m["cores"] * m["per_core_images_s"]))
    # int8: the same rule with the int8 model's own time in place of the fp32 model's.
    i8 = r["int8"]
    assert i8["model_ms"] > 0
    assert i8["per_core_images_s"] == pytest.approx(1e3 / (per_image["decode"] + i8["model_ms"] + per_image["rest"]))
    assert i8["needed"]["cores"] == math.ceil(2_000_000 / (i8["per_core_images_s"] * 4 * 3600))
    steps = r["bottleneck"]["steps"]
    assert steps[0].startswith("compute:") and "with int8" in steps[1] and steps[-1].startswith("storage:")

    from sparkvision.cli.plan import _plan_summary

    text = _plan_summary(r).render()
    assert text.startswith(f"2,000,000 images in 4 h need {r['needed']['cores']:,} cores")
    assert "int8" in text and "bottleneck 1" in text


def test_plan_refuses_what_it_cannot_measure_in_one_line(caplog, tmp_path, fitted_imagenette):
    model = fitted_imagenette["model_dir"]
    assert_usage_errors(caplog, [
        (["plan", "--model", model, "--hours", 1], "give --input SRC"),
        (["plan", "--model", model, "--images", 10, "--hours", 1], "--mean-bytes B"),
        (["plan", "--model", model, "--images", 10, "--mean-bytes", 1e4, "--hours", 0], "--hours must be positive"),
        (["plan", "--model", model, "--images", 0, "--mean-bytes", 1e4, "--hours", 1], "--images must be at least 1"),
        (["plan", "--model", model, "--images", 10, "--mean-bytes", 1e4, "--hours", 1, "--sample", 0],
         "PlanSettings.sample must be at least 1"),
    ])
    code, _ = run_main("plan", "--model", tmp_path / "none", "--images", 10, "--mean-bytes", 1e4, "--hours", 1)
    assert code == 4  # a missing model directory is a missing input
