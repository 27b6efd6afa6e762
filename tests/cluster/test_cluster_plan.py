"""``sparkvision plan`` on the standalone cluster: its estimate against a real ``predict`` ten times its sample.

The cluster tests run alone (their own pytest process, after the rest of the suite), so
the plan's measurement and the real job see the same free cores.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time

import pytest
from cluster_support import run_cli_inprocess

pytestmark = pytest.mark.cluster


def test_the_plan_estimates_a_predict_ten_times_its_sample_within_25_percent_or_1_5_s(cluster, cluster_spark, model_dir,
                                                                               predictions, imagenette, tmp_path):
    val = imagenette / "val"
    everything = sorted(p for p in val.rglob("*") if p.is_file())
    sample = tmp_path / "sample"
    for source in everything[::10]:  # 40 photos, 4 of each class
        (sample / source.parent.name).mkdir(parents=True, exist_ok=True)
        os.symlink(source, sample / source.parent.name / source.name)

    from sparkvision.cli.main import main

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["plan", "--model", str(model_dir), "--input", str(sample), "--sample", "40",
                     "--images", str(len(everything)), "--hours", "1", "--master", cluster.master_url,
                     "--json"]) == 0
    plan = json.loads(printed.getvalue())
    assert plan["sample"]["images"] == 40 and plan["measured"]["cores"] == 2  # one core on each worker

    # The plan's figures are a warm application's (its runs are timed after a first one, whose extra it
    # reports apart), so the real job is timed the same way: the faster of two runs.
    runs = []
    for attempt in range(2):
        started = time.perf_counter()
        assert run_cli_inprocess(["predict", "--model", str(model_dir), "--input", str(val), "--out",
                                  str(tmp_path / f"all-{attempt}"), "--master", cluster.master_url, "--json"]) == 0
        runs.append(time.perf_counter() - started)
    real = min(runs)
    estimate = plan["estimate_here_s"]
    # Within 25 %, and never closer than 1.5 s: on a fast machine this whole job takes 4 to 6 s, and the
    # command's own start (listing the folder, the file source's first tasks), which the plan's in-memory
    # sample runs do not see, measured up to 1.4 s of it (CI, 2026-12-01).
    assert abs(estimate - real) <= 0.25 * real + 1.5, (estimate, runs, plan["measured"])
