"""Very large images: overlapping tiles with global coordinates, tile classification, heat maps and boxes.

Data flows ``readers`` (pixels of a region, per format) -> ``tiler`` (one source into tile
records) -> ``tiles`` (the Spark step and tile datasets) -> ``classify`` (any model
directory) -> ``aggregate``/``heatmap`` (per-image labels, heat maps, boxes).
"""

from sparkvision.tiling.aggregate import aggregate_tiles, write_results
from sparkvision.tiling.classify import classify_tiles
from sparkvision.tiling.grid import LevelGrid, Tile, grid
from sparkvision.tiling.heatmap import Box, find_boxes, heat_raster, match_boxes
from sparkvision.tiling.readers import open_scene
from sparkvision.tiling.tiler import iter_tiles, parse_tile_path, tile_path
from sparkvision.tiling.tiles import TILE_SCHEMA, Tiler, list_sources, read_tiles, tile, write_tiles

__all__ = [
    "TILE_SCHEMA", "Box", "LevelGrid", "Tile", "Tiler", "aggregate_tiles", "classify_tiles",
    "find_boxes", "grid", "heat_raster", "iter_tiles", "list_sources", "match_boxes", "open_scene",
    "parse_tile_path", "read_tiles", "tile", "tile_path", "write_results", "write_tiles",
]
