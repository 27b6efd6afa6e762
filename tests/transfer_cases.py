"""Inputs the transfer-learning tests share: small real-photo folders and bad files.

Folders are built from links to the shared imagenette-mini photos (never copies), so
tests run on real images while staying small enough for the test-time budget.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

#: imagenette-mini class -> its ImageNet-1k class name (the line of imagenet_classes.txt).
IMAGENET_NAMES = {
    "cassette_player": "cassette player",
    "chain_saw": "chain saw, chainsaw",
    "church": "church, church building",
    "english_springer": "English springer, English springer spaniel",
    "french_horn": "French horn, horn",
    "garbage_truck": "garbage truck, dustcart",
    "gas_pump": "gas pump, gasoline pump, petrol pump, island dispenser",
    "golf_ball": "golf ball",
    "parachute": "parachute, chute",
    "tench": "tench, Tinca tinca",
}


def photo_folder(imagenette: Path, split: str, dst: Path, classes: list[str], per_class: int,
                 offset: int = 0) -> Path:
    """``dst/<class>/<file>`` links to ``per_class`` photos of each class (sorted, from ``offset``)."""
    for name in classes:
        files = sorted((imagenette / split / name).iterdir())[offset:offset + per_class]
        (dst / name).mkdir(parents=True, exist_ok=True)
        for file in files:
            link = dst / name / file.name
            if not link.exists():
                os.symlink(file, link)
    return dst


def bad_files(dst: Path, label: str) -> dict[str, str]:
    """Files in ``dst/<label>/`` that cannot be classified, and the error kind each must get."""
    folder = dst / label
    folder.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (64, 48), (200, 30, 30))
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=90)
    jpeg = buffer.getvalue()
    cases = {
        "empty.jpg": (b"", "empty_file"),
        "text.jpg": (b"this is not an image at all\n" * 10, "not_an_image"),
        "truncated.jpg": (jpeg[: len(jpeg) // 3], "truncated"),
    }
    for name, (data, _) in cases.items():
        (folder / name).write_bytes(data)
    return {name: kind for name, (_, kind) in cases.items()}


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """The real ``sparkvision`` command in a fresh process (its own JVM), 2 local cores."""
    full_env = {**os.environ, "SPARKVISION_MASTER": "local[2]", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "sparkvision.cli.main", *args, "--driver-memory", "1g"],
        capture_output=True, text=True, env=full_env, timeout=timeout, cwd=ROOT,
    )


def reference_predictions(model_dir: Path, imagenette: Path) -> dict:
    """Two val photos per class and the bad files of :func:`bad_files`, and what ``sparkvision predict`` with
    ``model_dir`` makes of them: ``{"photos": folder, "predictions": Parquet, "rows": {path: {prediction,
    probability, error}}}``, built once per test run (the reference that the MLflow pyfunc and the SQL
    functions are checked against)."""
    import pandas as pd
    from conftest import run_main
    from run_cache import built_once

    def build(out: Path) -> dict:
        photos = photo_folder(imagenette, "val", out / "photos", sorted(IMAGENET_NAMES), per_class=2)
        bad_files(photos, "tench")
        code, printed = run_main("predict", "--model", model_dir, "--input", photos, "--out", out / "predictions")
        assert code == 0, printed
        rows = {r["path"]: {"prediction": r["prediction"], "error": r["error"],
                            "probability": None if r["probability"] is None else [float(p) for p in r["probability"]]}
                for r in pd.read_parquet(out / "predictions").to_dict("records")}
        return {"photos": str(photos), "predictions": str(out / "predictions"), "rows": rows}

    return built_once("reference-predictions", build)[1]
