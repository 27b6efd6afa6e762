"""Shared fixtures: one embedded Spark session for the whole run, real data locations."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SPARKVISION_SHARED_DATA", ROOT.parent / "shared" / "data"))
IMAGENETTE = SHARED_DATA / "imagenette-mini"

# Exported ONNX graphs are cached per checkout, not in the user's home.
os.environ.setdefault("SPARKVISION_CACHE", str(ROOT / ".cache" / "sparkvision"))


@pytest.fixture(scope="session")
def spark():
    """An embedded local[2] session shared by all tests (Spark cannot restart cheaply)."""
    from sparkvision.config import SparkSettings
    from sparkvision.session import get_spark

    session = get_spark(SparkSettings(master="local[2]", driver_memory="3g", app_name="sparkvision-tests"))
    yield session
    session.stop()


@pytest.fixture(scope="session")
def imagenette() -> Path:
    if not IMAGENETTE.is_dir():
        pytest.fail(f"real photos expected at {IMAGENETTE} (see ../shared/data/README.md)")
    return IMAGENETTE
