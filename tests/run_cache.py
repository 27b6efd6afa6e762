"""Expensive test artefacts (a fitted model, a trained detector) built once per test run.

Under pytest-xdist every worker is its own process, so a session fixture or a
``functools.cache`` would build the artefact once per worker. :func:`built_once` builds it
in a directory that every worker of the run shares (keyed by xdist's run id), under a file
lock: the first worker builds it, the others wait for it and reuse it. Without xdist it
builds into a fresh temporary directory, once per call site that caches it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock


def built_once(name: str, build: Callable[[Path], Any]) -> tuple[Path, Any]:
    """``(directory, build's JSON-able result)``, ``build(directory)`` having run once in this test run."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run is None:
        out = Path(tempfile.mkdtemp(prefix=f"sv-{name}-")) / name
        return out, build(out)
    root = Path(tempfile.gettempdir()) / f"sparkvision-tests-{run}"
    root.mkdir(exist_ok=True)
    out, result = root / name, root / f"{name}.result.json"
    with FileLock(str(root / f"{name}.lock")):
        if not result.exists():
            shutil.rmtree(out, ignore_errors=True)  # a build that failed half-way in another worker
            result.write_text(json.dumps(build(out), default=str))
    return out, json.loads(result.read_text())
