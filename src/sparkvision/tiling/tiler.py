"""One source into tile records, in plain Python: what each Spark task runs, and the one-process path.

Work is cut into *units* so one huge scene spreads over many tasks: a TIFF read by path
(random access) gets one unit per page, level and ``rows_per_unit`` tile rows, each
opening the file and reading only its band. Sources whose bytes are in the row, and
formats read front to back (PNG streaming, DICOM, whole decodes), are one unit each.

Every source yields rows: tiles, background tiles (counted, without bytes), or an
error row (a source that cannot be opened gives exactly one; an unusable page one per
page; a tile whose pixels fail one for that tile).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sparkvision.config import DecodeSettings, TilingSettings
from sparkvision.io.errors import ErrorKind, ImageError
from sparkvision.tiling.grid import Tile, grid
from sparkvision.tiling.pixels import encode_tile, pad_tile, tile_std
from sparkvision.tiling.readers import PageInfo, SceneReader, TiffScene, open_path, open_scene, sniff

log = logging.getLogger(__name__)

#: Columns of a tile record, in TILE_SCHEMA order (sparkvision.tiling.tiles).
TILE_COLUMNS = [
    "path", "source", "label", "page", "level", "scale", "row", "col", "x", "y", "w", "h",
    "image_width", "image_height", "content", "format", "mode", "width", "height", "channels",
    "std", "background", "error", "metadata",
]


@dataclass(frozen=True)
class Unit:
    """A piece of work: tile rows ``[row_start, row_end)`` of one page and level (-1: all)."""

    source: str
    label: str | None
    page: int = -1
    level: int = -1
    row_start: int = 0
    row_end: int = -1
    error: str | None = None  # the source failed while planning: the unit only reports it


def tile_path(source: str, page: int, level: int | None = None, x: int | None = None, y: int | None = None) -> str:
    """A tile's unique ``path``: the source plus a fragment naming page, level and position."""
    if level is None:
        return f"{source}#page={page}"
    return f"{source}#page={page}&level={level}&x={x}&y={y}"


def parse_tile_path(path: str) -> tuple[str, dict[str, int]]:
    """(source, {page, level, x, y}) from a tile ``path``; an untiled path gives an empty dict."""
    source, sep, fragment = path.rpartition("#")
    if not sep or not fragment.startswith("page="):
        return path, {}
    parts = dict(item.split("=", 1) for item in fragment.split("&"))
    return source, {k: int(v) for k, v in parts.items()}


def plan_source(
    path: str,
    label: str | None,
    has_content: bool,
    settings: TilingSettings,
    decode: DecodeSettings | None = None,
) -> list[Unit]:
    """Units for one source. Only headers are read (TIFF page directories)."""
    if has_content:
        return [Unit(path, label)]
    try:
        with open_path(path) as fh:
            kind = sniff(fh.read(132))
            if kind != "TIFF":
                return [Unit(path, label)]
            fh.seek(0)
            scene = TiffScene(fh, settings, decode)
            pages = scene.pages
            scene.close()
    except ImageError as exc:
        return [Unit(path, label, error=exc.message)]
    units: list[Unit] = []
    step = max(1, settings.rows_per_unit)
    for page, info in enumerate(pages):
        if info.error:
            units.append(Unit(path, label, page=page))
            continue
        for level in settings.levels:
            rows = grid(info.width, info.height, settings.size, settings.overlap, level, settings.edge).rows
            units.extend(Unit(path, label, page, level, start, min(start + step, rows)) for start in range(0, rows, step))
    return units


def _base(unit: Unit, **values: Any) -> dict[str, Any]:
    row = dict.fromkeys(TILE_COLUMNS)
    row.update(source=unit.source, label=unit.label, background=False)
    row.update(values)
    return row


def error_row(unit: Unit, message: str, page: int | None = None, info: PageInfo | None = None) -> dict[str, Any]:
    """The one row of a source (or page) that cannot be tiled."""
    return _base(
        unit,
        path=unit.source if page is None else tile_path(unit.source, page),
        page=page,
        image_width=info.width if info else None,
        image_height=info.height if info else None,
        metadata=info.metadata_json if info else None,
        error=message,
    )


def _tile_base(unit: Unit, page: int, info: PageInfo, tile: Tile, metadata: str) -> dict[str, Any]:
    """A tile's row before its pixels are read: where it is, in its page and level."""
    return _base(
        unit,
        path=tile_path(unit.source, page, tile.level, tile.x, tile.y),
        page=page, level=tile.level, scale=1.0 / tile.factor, row=tile.row, col=tile.col,
        x=tile.x, y=tile.y, w=tile.w, h=tile.h, image_width=info.width, image_height=info.height,
        metadata=metadata,
    )


def tile_record(
    scene: SceneReader, unit: Unit, page: int, info: PageInfo, tile: Tile, settings: TilingSettings, metadata: str
) -> dict[str, Any]:
    """One tile as a row: pixels read, background test, bytes encoded (or the tile's error)."""
    row = _tile_base(unit, page, info, tile, metadata)
    try:
        arr = scene.read(page, tile.x, tile.y, tile.w, tile.h, tile.level)
    except ImageError as exc:
        row["error"] = exc.message
        return row
    mode = info.mode
    row["std"] = tile_std(arr, mode)
    row["channels"] = 3 if mode == "RGB" else 1
    if settings.background_std is not None and row["std"] < settings.background_std:
        row["background"] = True
        return row
    content = encode_tile(
        pad_tile(arr, settings.size, settings.pad_value), mode, settings.tile_format,
        settings.png_compress_level, settings.jpeg_quality,
    )
    out_mode = "L" if mode == "I;16" and settings.tile_format == "JPEG" else mode
    row.update(content=content, format=settings.tile_format, mode=out_mode, width=settings.size, height=settings.size)
    return row


def run_unit(
    unit: Unit,
    content: bytes | None,
    settings: TilingSettings,
    decode: DecodeSettings | None = None,
) -> Iterator[dict[str, Any]]:
    """Tile records of one unit, in raster order."""
    if unit.error:
        yield error_row(unit, unit.error)
        return
    try:
        scene = open_scene(unit.source, content, settings, decode)
    except ImageError as exc:
        yield error_row(unit, exc.message)
        return
    except Exception as exc:  # noqa: BLE001 - a reader bug must cost one row, not the job
        log.exception("unexpected failure opening %s", unit.source)
        yield error_row(unit, f"{ErrorKind.CORRUPT.value}: {type(exc).__name__}: {exc}")
        return
    with scene:
        pages = range(len(scene.pages)) if unit.page < 0 else [unit.page]
        for page in pages:
            info = scene.pages[page]
            if info.error:
                yield error_row(unit, info.error, page, info)
                continue
            metadata = info.metadata_json
            levels = settings.levels if unit.level < 0 else (unit.level,)
            for level in levels:
                level_grid = grid(info.width, info.height, settings.size, settings.overlap, level, settings.edge)
                tiles = level_grid.tiles(unit.row_start, None if unit.row_end < 0 else unit.row_end)
                for tile in tiles:
                    try:
                        record = tile_record(scene, unit, page, info, tile, settings, metadata)
                    except Exception as exc:  # noqa: BLE001 - unexpected decoder failures stay per tile
                        log.exception("unexpected failure on a tile of %s", unit.source)
                        record = tile_record_error(unit, page, info, tile, metadata, exc)
                    yield record
                    if record["error"] and scene.sequential:
                        # A stream that failed cannot go on: the rest of the level is one row.
                        rest = sum(1 for _ in tiles)
                        if rest:
                            row = error_row(
                                unit, f"{record['error']} ({rest} later tiles of level {level} not read)", page, info
                            )
                            row.update(path=f"{tile_path(unit.source, page)}&level={level}&rest={rest}", level=level)
                            yield row
                        break


def tile_record_error(unit: Unit, page: int, info: PageInfo, tile: Tile, metadata: str, exc: Exception) -> dict[str, Any]:
    row = _tile_base(unit, page, info, tile, metadata)
    row["error"] = f"{ErrorKind.CORRUPT.value}: {type(exc).__name__}: {exc}"
    return row


def iter_tiles(
    path: str,
    content: bytes | None = None,
    label: str | None = None,
    settings: TilingSettings | None = None,
    decode: DecodeSettings | None = None,
) -> Iterator[dict[str, Any]]:
    """Every tile record of one source in this process (the one-process path)."""
    settings = settings or TilingSettings()
    for unit in plan_source(path, label, content is not None, settings, decode):
        yield from run_unit(unit, content, settings, decode)
