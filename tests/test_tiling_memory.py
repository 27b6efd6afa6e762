"""Big inputs tile in bounded memory: a tiled TIFF is read region by region, never decoded whole.

The 20,000 x 20,000 case (1.2 GB decoded) runs in ``scripts/tiling_memory.py`` and the
tiling benchmark; here an 8,192 x 8,192 scene (192 MiB decoded) keeps the suite fast.
"""

from __future__ import annotations

import numpy as np
import tifffile

from sparkvision.config import TilingSettings
from sparkvision.testing.profile import one_process_peak


def _write_scene(path, side: int, tile: int = 256) -> None:
    def tiles():
        ramp = np.arange(tile, dtype=np.uint8)
        for ty in range(0, side, tile):
            for tx in range(0, side, tile):
                block = np.empty((tile, tile, 3), np.uint8)
                block[..., 0] = ramp[None, :] + tx // tile
                block[..., 1] = ramp[:, None] + ty // tile
                block[..., 2] = (ramp[None, :] ^ ramp[:, None])
                yield block

    tifffile.imwrite(path, tiles(), shape=(side, side, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb",
                     compression="zlib")


def test_a_big_tiled_tiff_tiles_in_a_fraction_of_its_decoded_size(tmp_path):
    side = 8192
    path = tmp_path / "big.tif"
    _write_scene(path, side)
    settings = TilingSettings(size=512, overlap=0.1, segment_cache_bytes=8 * 1024 * 1024)
    report = one_process_peak(str(path), settings)
    decoded_mib = side * side * 3 / 2**20
    grown = report["peak_rss_mib"] - report["rss_before_mib"]
    print(f"{side}x{side}: {report['tiles']} tiles, peak RSS {report['peak_rss_mib']:.0f} MiB "
          f"(+{grown:.0f} MiB while tiling) vs {decoded_mib:.0f} MiB to decode it whole")
    assert report["tiles"] == report["kept"] == 18 * 18 and report["errors"] == 0
    assert grown < decoded_mib / 4
