"""The real ``sparkvision ingest`` and ``info`` commands, run as a user runs them, on a folder with bad files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from image_cases import build_messy_folder, encode, smooth
from PIL import Image

SPARKVISION = str(Path(sys.executable).parent / "sparkvision")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SPARKVISION, *args], capture_output=True, text=True, timeout=600,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "photos"
    return root, build_messy_folder(root)


def _expected_counts(cases):
    classes = Counter(c.label or "<none>" for c in cases if c.kind is None)
    kinds = Counter(c.kind for c in cases if c.kind is not None)
    return dict(classes), dict(kinds)


def test_help_reads_like_the_readme():
    top = run("--help")
    assert top.returncode == 0 and "ingest" in top.stdout and "info" in top.stdout
    ingest = run("ingest", "--help")
    assert ingest.returncode == 0
    for text in ("--out", "--overwrite", "--master", "--conf", "fashion-mnist", "--glob", "--max-pixels"):
        assert text in ingest.stdout


@pytest.mark.slow
def test_ingest_then_info_then_refuse_then_overwrite(messy, tmp_path, cli):
    root, cases = messy
    out = tmp_path / "dataset"
    classes, kinds = _expected_counts(cases)
    assert set(kinds) >= {"empty_file", "truncated", "corrupt", "not_an_image", "too_many_pixels", "unreadable"}

    ingest = run("ingest", str(root), "--out", str(out), "--master", "local[1]",
                 "--conf", "spark.sparkvision.marker=from-cli")
    assert ingest.returncode == 0, ingest.stderr[-3000:]
    result = json.loads(ingest.stdout)
    assert (result["rows"], result["ok"], result["errors"]) == (len(cases), sum(classes.values()), sum(kinds.values()))
    assert result["classes"] == dict(sorted(classes.items()))
    assert result["error_kinds"] == dict(sorted(kinds.items()))
    assert len(result["error_examples"]) == 10 and all(": " in e["error"] for e in result["error_examples"])
    # --master and --conf reached the session that ran the job.
    assert "on local[1] (default parallelism 1)" in ingest.stderr
    assert "Spark conf spark.sparkvision.marker=from-cli" in ingest.stderr
    assert "'empty' under" in ingest.stderr  # the empty class folder is reported
    manifest = json.loads((out / "_sparkvision.json").read_text())
    assert manifest["rows"] == len(cases)

    info = run("info", str(out), env={"SPARKVISION_MASTER": "local[1]"})
    assert info.returncode == 0, info.stderr[-3000:]
    stats = json.loads(info.stdout)
    assert "on local[1]" in info.stderr
    assert stats["rows"] == len(cases) and stats["classes"] == result["classes"]
    assert stats["error_kinds"] == result["error_kinds"] and stats["num_classes"] == len(classes)
    modes = Counter(c.mode for c in cases if c.kind is None)
    assert stats["modes"] == dict(sorted(modes.items()))
    assert stats["formats"]["JPEG"] == sum(1 for c in cases if c.kind is None and c.format == "JPEG")
    assert sum(stats["sizes"].values()) == result["ok"] and list(stats["sizes"]) == ["<=32", "<=64"]

    # Re-running into the existing output refuses, and leaves it as it was.
    small = tmp_path / "small" / "cls"
    small.mkdir(parents=True)
    for i in range(3):
        (small / f"{i}.png").write_bytes(encode(Image.fromarray(smooth(10, 10, seed=i)), "PNG"))
    again = run("ingest", str(small.parent), "--out", str(out))
    assert again.returncode == 1 and "already exists" in again.stderr and "--overwrite" in again.stderr
    assert json.loads((out / "_sparkvision.json").read_text())["rows"] == len(cases)

    code, replaced = cli("ingest", small.parent, "--out", out, "--overwrite", "-q")  # in this process's Spark
    assert code == 0
    assert json.loads(replaced)["classes"] == {"cls": 3}
    assert json.loads((out / "_sparkvision.json").read_text())["rows"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset", "small"]  # nothing half-written left
