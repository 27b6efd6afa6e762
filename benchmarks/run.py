"""Run sparkvision's benchmarks and write their figures to BENCHMARKS.md.

    .venv/bin/python benchmarks/run.py            # all benchmarks, full size
    .venv/bin/python benchmarks/run.py --quick    # small sizes, to check they run
    .venv/bin/python benchmarks/run.py decode     # only the ones whose name contains 'decode'

Each run keeps its figures in ``results/NAME.json`` and ``results/NAME.md``; BENCHMARKS.md
is assembled from the latest section of every benchmark.

Each ``benchmarks/bench_*.py`` module defines ``TITLE`` and ``run(quick: bool) -> Result``.
Figures that are compared are measured side by side in the same run, and reported
as ratios; absolute times on a shared 2-core machine mean little on their own.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("SPARKVISION_CACHE", str(ROOT / ".cache" / "sparkvision"))

from common import Result  # noqa: E402

log = logging.getLogger("benchmarks")


def machine() -> str:
    import torch

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem_gib:.0f} GiB RAM, {platform.system()} {platform.machine()}, "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("only", nargs="*", help="benchmarks to run: an exact name (train = bench_train), else every name containing it")
    parser.add_argument("--quick", action="store_true", help="small sizes: checks that benchmarks run")
    parser.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"), help="Markdown file to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    modules = sorted(p.stem for p in HERE.glob("bench_*.py"))
    if args.only:
        # An exact name (with or without "bench_") picks that one; otherwise a substring picks all it is in.
        modules = [m for m in modules
                   if any(o in (m, m.removeprefix("bench_")) or (o not in modules and f"bench_{o}" not in modules
                                                                and o in m) for o in args.only)]
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    for name in modules:
        module = importlib.import_module(name)
        log.info("running %s", name)
        started = time.perf_counter()
        result: Result = module.run(quick=args.quick)
        elapsed = time.perf_counter() - started
        (results / f"{name}.json").write_text(json.dumps(result.figures, indent=2, default=str) + "\n")
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        (results / f"{name}.md").write_text(
            f"## {module.TITLE}\n\n_`benchmarks/{name}.py`, {elapsed:.0f} s, finished {stamp}"
            f"{', --quick sizes' if args.quick else ''}_\n\n{result.markdown.strip()}\n"
        )
    # BENCHMARKS.md holds the latest result of every benchmark, so one can be rerun alone.
    sections = [(results / f"{p.stem}.md").read_text() for p in sorted(HERE.glob("bench_*.py"))
                if (results / f"{p.stem}.md").exists()]
    header = (
        "# Benchmarks\n\n"
        f"Machine: {machine()}.\n"
        "Regenerate with `.venv/bin/python benchmarks/run.py` (or name benchmarks to rerun just those; "
        "each section says when it ran). Compared figures come from the same run; "
        "read the ratios, not the absolute times.\n"
    )
    out = Path(args.out)
    out.write_text(header + "\n" + "\n".join(sections))
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
