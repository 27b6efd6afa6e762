"""Many distinct real-looking photos from the shipped ones, for scale benchmarks.

Each output image is one imagenette-mini photo (train + val, 1,200 JPEGs of 224 px) with
its own seeded random crop (70-100 % of each side, anywhere), optional horizontal flip,
resize back to 224 px, and JPEG quality 60-95: different bytes, different pixels, the
same kind of content and the same decode cost as the originals. Classes are kept
(``<out>/<class>/<index>.jpg``), so the result is a labelled folder like the source.

    .venv/bin/python benchmarks/imagegen.py 100000 /tmp/photos-100k
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import sys
from multiprocessing import Pool
from pathlib import Path

MARKER = "_imagegen.json"


def source_photos() -> list[Path]:
    from sparkvision.io.builtin import find_demo_data

    root = find_demo_data()
    return sorted(root.glob("train/*/*")) + sorted(root.glob("val/*/*"))


_SOURCES: list[tuple[str, bytes]] = []


def _init(sources: list[tuple[str, bytes]]) -> None:
    global _SOURCES
    _SOURCES = sources


def _variant(job: tuple[int, int, str]) -> int:
    from PIL import Image

    index, seed, out = job
    label, data = _SOURCES[index % len(_SOURCES)]
    rng = random.Random(seed * 1_000_003 + index)
    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("RGB")
        w, h = img.size
        cw, ch = int(w * rng.uniform(0.7, 1.0)), int(h * rng.uniform(0.7, 1.0))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        img = img.crop((x, y, x + cw, y + ch)).resize((w, h), Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        buffer = io.BytesIO()
        img.save(buffer, "JPEG", quality=rng.randint(60, 95))
    target = Path(out) / label / f"{index:07d}.jpg"
    target.write_bytes(buffer.getvalue())
    return len(buffer.getvalue())


def generate(count: int, out: str | os.PathLike[str], seed: int = 0, processes: int | None = None) -> Path:
    """Write ``count`` variants under ``out`` (reused when a previous call made the same set)."""
    out = Path(out)
    marker = out / MARKER
    wanted = {"count": count, "seed": seed, "version": 1}
    if marker.exists() and {k: v for k, v in json.loads(marker.read_text()).items() if k in wanted} == wanted:
        return out
    photos = source_photos()
    sources = [(p.parent.name, p.read_bytes()) for p in photos]
    for label in {label for label, _ in sources}:
        (out / label).mkdir(parents=True, exist_ok=True)
    jobs = [(i, seed, str(out)) for i in range(count)]
    with Pool(processes or os.cpu_count() or 2, initializer=_init, initargs=(sources,)) as pool:
        total = sum(pool.imap_unordered(_variant, jobs, chunksize=256))
    marker.write_text(json.dumps({**wanted, "bytes": total, "sources": len(sources)}) + "\n")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("count", type=int)
    parser.add_argument("out")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(generate(args.count, args.out, args.seed), file=sys.stdout)
