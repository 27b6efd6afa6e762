"""The core install, as a Spark user installs it: a virtual environment without torch.

``pip install 'sparkvision[serve]'`` (no ``[train]``) must featurize with the pretrained
EfficientNet-Lite backbone (its ONNX graph built from the weights without torch), fit an MLlib
head, predict in batch and serve the model over HTTP; a command that needs torch says which
extra to install. The environment is built once in ``.cache/venv-core`` (rebuilt when
pyproject.toml or constraints.txt change) with the pins of constraints.txt; pip takes the
wheels from its cache, which scripts/install.sh has filled. The package itself is installed
editable, so the venv runs this checkout's code.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
from filelock import FileLock

from sparkvision.testing.server import free_port, wait_until_ready

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".cache" / "venv-core"


def _stamp() -> str:
    digest = hashlib.sha256(sys.version.encode())
    for name in ("pyproject.toml", "constraints.txt"):
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def core_python() -> Path:
    """The core venv's python (built here on first use: about a minute with pip's cache warm)."""
    python, stamp_file = VENV / "bin" / "python", VENV / "sparkvision.stamp"
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(VENV.parent / "venv-core.lock")):
        if not (stamp_file.is_file() and stamp_file.read_text() == _stamp() and python.exists()):
            shutil.rmtree(VENV, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
            subprocess.run([str(python), "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt"),
                            "-e", f"{ROOT}[serve]"], check=True, timeout=900)
            stamp_file.write_text(_stamp())
    return python


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    env["SPARKVISION_CACHE"] = str(tmp_path / "cache")  # nothing exported by the full install is reused
    env["PYTHONPATH"] = str(ROOT / "src")
    return env


def _sparkvision(python: Path, cwd: Path, *args: object) -> subprocess.CompletedProcess:
    """``sparkvision ARGS`` run by the core venv in ``cwd``, with a cache of its own."""
    return subprocess.run([str(python), "-m", "sparkvision.cli.main", *map(str, args)], env=_env(cwd), cwd=cwd,
                          capture_output=True, text=True, timeout=900)


def test_core_venv_has_no_torch_and_its_commands_load(core_python, tmp_path):
    probe = ("import importlib.util as u, sys; import sparkvision.cli.main as m; m.build_parser(); "
             "import sparkvision.inference.predict, sparkvision.ml, sparkvision.evaluation.report, "
             "sparkvision.deploy.serve.app, sparkvision.models.runner, sparkvision.models.catalog; "
             "print(u.find_spec('torch') is None, 'torch' in sys.modules)")
    out = subprocess.run([str(core_python), "-c", probe], env=_env(tmp_path), capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["True", "False"]


def test_core_install_fits_predicts_and_serves_without_torch(core_python, imagenette, tmp_path):
    fit = _sparkvision(core_python, tmp_path, "fit", "--train", imagenette / "train", "--per-class", 3, "--out", "m",
                       "--json")
    assert fit.returncode == 0, fit.stderr[-2000:]
    assert "building efficientnet_lite0's ONNX graph from its weights" in fit.stderr  # lite_onnx, not torch
    assert json.loads(fit.stdout)["backbone"] == "efficientnet_lite0"

    photos = tmp_path / "photos"
    chosen = sorted((imagenette / "val").rglob("*.JPEG"))[::40]  # 10 photos, one per class
    photos.mkdir()
    for p in chosen:
        os.symlink(p, photos / p.name)
    pred = _sparkvision(core_python, tmp_path, "predict", "--model", "m", "--input", photos, "--out", "p", "--json")
    assert pred.returncode == 0, pred.stderr[-2000:]
    assert json.loads(pred.stdout)["predicted"] == len(chosen)
    rows = {Path(r["path"]).name: r["prediction"] for r in pq.read_table(tmp_path / "p").to_pylist()}
    assert sum(rows[p.name] == p.parent.name for p in chosen) >= 7  # 30 training photos: most right

    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen([str(core_python), "-m", "sparkvision.cli.main", "serve", "--model", "m",
                               "--host", "127.0.0.1", "--port", str(port)], env=_env(tmp_path), cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=log)
    try:
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_ready(url, lambda: server.poll() is None)
        except (RuntimeError, TimeoutError) as exc:
            pytest.fail(f"{exc}: {(tmp_path / 'serve.log').read_text()[-2000:]}")
        files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in chosen]
        response = httpx.post(f"{url}/v1/predict", files=files, timeout=120)
        assert response.status_code == 200, response.text
        served = {p["filename"]: p["prediction"] for p in response.json()["predictions"]}
        assert served == rows  # the server answers as the Spark job did
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_a_command_needing_torch_names_the_extra(core_python, imagenette, tmp_path):
    out = _sparkvision(core_python, tmp_path, "train", "--train", imagenette / "train", "--out", "t", "--epochs", 1)
    assert out.returncode == 1
    lines = [line for line in out.stderr.splitlines() if "ERROR" in line or "error" in line.lower()]
    assert any("pip install 'sparkvision[train]'" in line for line in lines), out.stderr[-2000:]
