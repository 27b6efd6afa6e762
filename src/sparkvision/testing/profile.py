"""Peak memory of tiling, measured where the work runs (used by the memory test, script and benchmark).

* :func:`one_process_peak` tiles a source in a fresh Python process and reports its
  peak RSS (``VmHWM``) next to its RSS just before tiling, so imports are not
  counted as tiling's.
* :class:`WorkerPeaks` samples the resident memory of every Python process below this
  one (Spark's Python workers under the JVM) while Spark tiles, and keeps each one's
  peak (``VmHWM``), so the executors' memory is measured, not the driver's.

Run as ``python -m sparkvision.testing.profile PATH [SETTINGS_JSON]``: prints one JSON line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from typing import Any

from sparkvision.config import TilingSettings
from sparkvision.testing.proc import Sampler, descendants, is_python, status_kib


class WorkerPeaks(Sampler):
    """Peak resident memory of every Python process below this one, sampled in a thread."""

    def __init__(self, interval: float = 0.2) -> None:
        super().__init__(interval)
        self.peaks_kib: dict[int, int] = {}

    def _sample(self) -> None:
        for pid in descendants():
            if pid in self.peaks_kib or is_python(pid):
                peak = max(status_kib(pid, "VmHWM"), status_kib(pid, "VmRSS"))
                if peak:
                    self.peaks_kib[pid] = max(self.peaks_kib.get(pid, 0), peak)

    @property
    def max_mib(self) -> float:
        return max(self.peaks_kib.values(), default=0) / 1024.0


def one_process_peak(path: str, settings: TilingSettings | None = None, timeout: float = 3600) -> dict[str, Any]:
    """Tile ``path`` in a fresh process: tiles, seconds, RSS before tiling and peak RSS (MiB)."""
    settings = settings or TilingSettings()
    payload = json.dumps(asdict(settings))
    done = subprocess.run(
        [sys.executable, "-m", "sparkvision.testing.profile", path, payload],
        capture_output=True, text=True, timeout=timeout, check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _child(path: str, payload: str) -> dict[str, Any]:
    from sparkvision.tiling.tiler import iter_tiles

    data = json.loads(payload)
    for key in ("levels", "window"):
        if data.get(key) is not None:
            data[key] = tuple(data[key])
    settings = TilingSettings(**data)
    before = status_kib(os.getpid(), "VmRSS") / 1024.0
    started = time.perf_counter()
    tiles = kept = errors = content_bytes = 0
    for row in iter_tiles(path, settings=settings):
        tiles += 1
        kept += row["content"] is not None
        errors += row["error"] is not None
        content_bytes += len(row["content"] or b"")
    seconds = time.perf_counter() - started
    return {
        "tiles": tiles, "kept": kept, "errors": errors, "tile_bytes": content_bytes, "seconds": seconds,
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so it would count the
        # parent's memory at fork time; VmHWM belongs to this process's own address space.
        "rss_before_mib": before, "peak_rss_mib": status_kib(os.getpid(), "VmHWM") / 1024.0,
    }


if __name__ == "__main__":
    print(json.dumps(_child(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else json.dumps(asdict(TilingSettings())))))
