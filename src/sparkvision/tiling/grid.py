"""Where tiles go: overlapping tile grids in global (full-resolution) pixel coordinates.

Geometry rules (also in the README's Tiling section):

* A tile is ``size`` x ``size`` pixels *of its pyramid level*. Level ``L`` is the image
  box-averaged by ``f = 2**L``; its size is ``ceil(W / f) x ceil(H / f)``.
* Neighbouring tiles share ``overlap_pixels = round(size * overlap)`` pixels, so the
  stride is ``size - overlap_pixels``.
* Edges, ``edge="shift"`` (default): starts are ``0, stride, 2*stride, ...`` and the last
  tile of a row or column is shifted inward to end exactly at the image edge, so every
  tile lies inside the image and the last overlap is larger. ``edge="pad"``: the stride
  stays regular and the last tile sticks out past the edge, filled with ``pad_value``.
  An image side smaller than a tile gets one padded tile under either rule.
* ``x, y, w, h`` of a tile are the region of the *full-resolution* image its pixels
  cover (padding excluded): ``x = lx * f`` and ``w = min((lx + size) * f, W) - x``.
  Together the tiles of a level cover every pixel of the image.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Tile:
    """One tile: its grid position at its level, and the full-resolution region it covers."""

    level: int
    row: int
    col: int
    lx: int  # left edge in pixels of its level
    ly: int  # top edge in pixels of its level
    x: int  # covered region in full-resolution pixels (inside the image)
    y: int
    w: int
    h: int

    @property
    def factor(self) -> int:
        return 2**self.level


def level_size(width: int, height: int, level: int) -> tuple[int, int]:
    """(width, height) of pyramid level ``level``: ceil of the full size over 2**level."""
    factor = 2**level
    return math.ceil(width / factor), math.ceil(height / factor)


def starts(length: int, size: int, stride: int, edge: str = "shift") -> list[int]:
    """Start offsets of tiles along one side of ``length`` pixels."""
    if length < 1 or size < 1 or stride < 1:
        raise ValueError(f"need positive length, size and stride, got {length}, {size}, {stride}")
    if length <= size:
        return [0]
    if edge == "shift":
        positions = list(range(0, length - size + 1, stride))
        if positions[-1] + size < length:
            positions.append(length - size)
        return positions
    if edge == "pad":
        count = math.ceil((length - size) / stride) + 1
        return [i * stride for i in range(count)]
    raise ValueError(f"edge must be 'shift' or 'pad', got {edge!r}")


@dataclass(frozen=True)
class LevelGrid:
    """The tile grid of one pyramid level of one image."""

    width: int  # full-resolution image size
    height: int
    level: int
    size: int
    stride: int
    edge: str = "shift"

    @property
    def factor(self) -> int:
        return 2**self.level

    @property
    def level_size(self) -> tuple[int, int]:
        return level_size(self.width, self.height, self.level)

    @property
    def xs(self) -> list[int]:
        return starts(self.level_size[0], self.size, self.stride, self.edge)

    @property
    def ys(self) -> list[int]:
        return starts(self.level_size[1], self.size, self.stride, self.edge)

    @property
    def rows(self) -> int:
        return len(self.ys)

    @property
    def cols(self) -> int:
        return len(self.xs)

    def __len__(self) -> int:
        return self.rows * self.cols

    def tile(self, row: int, col: int) -> Tile:
        lx, ly = self.xs[col], self.ys[row]
        return self._tile(row, col, lx, ly)

    def _tile(self, row: int, col: int, lx: int, ly: int) -> Tile:
        f = self.factor
        x, y = lx * f, ly * f
        w = min((lx + self.size) * f, self.width) - x
        h = min((ly + self.size) * f, self.height) - y
        return Tile(self.level, row, col, lx, ly, x, y, w, h)

    def tiles(self, row_start: int = 0, row_end: int | None = None) -> Iterator[Tile]:
        """Tiles of rows ``[row_start, row_end)`` in raster order (what sequential readers need)."""
        xs, ys = self.xs, self.ys
        for row in range(row_start, len(ys) if row_end is None else min(row_end, len(ys))):
            for col, lx in enumerate(xs):
                yield self._tile(row, col, lx, ys[row])


def grid(width: int, height: int, size: int, overlap: float, level: int = 0, edge: str = "shift") -> LevelGrid:
    """The grid of ``size`` tiles overlapping by the fraction ``overlap`` at ``level``."""
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap is a fraction of the tile size in [0, 1), got {overlap!r}")
    stride = size - round(size * overlap)
    return LevelGrid(width, height, level, size, max(1, stride), edge)
