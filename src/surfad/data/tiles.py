"""Tiling geometry: cut an image of any size into model-sized tiles and stitch their maps back.

Used when `data.tile_scale` > 0. Every image is rescaled by that one factor (so a texture keeps
the same scale in every image), reflect-padded at the bottom and right when a side is shorter than
the tile, and cut into tile x tile windows at most `stride` apart, the last one flush with the
edge. The anomaly map of the image is the mean of the tile maps over each pixel's covering tiles,
cropped back to the unpadded size.
"""

from __future__ import annotations

import math

import numpy as np


def default_stride(tile: int, stride: int) -> int:
    """The stride to use: `stride` when > 0, else 3/4 of the tile (a quarter of each tile overlaps)."""
    return stride if stride > 0 else max(1, tile * 3 // 4)


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles covering [0, length) at most `stride` apart; the last ends at `length`."""
    if length <= tile:
        return [0]
    count = math.ceil((length - tile) / stride) + 1
    return sorted({round(v) for v in np.linspace(0, length - tile, count)})


def pad_to_tile(image: np.ndarray, tile: int) -> np.ndarray:
    """(C, H, W) -> (C, max(H, tile), max(W, tile)), mirroring the bottom and right edges (repeatedly
    when the image is much smaller than the tile)."""
    _, h, w = image.shape
    if h >= tile and w >= tile:
        return image
    return np.pad(image, ((0, 0), (0, max(0, tile - h)), (0, max(0, tile - w))), mode="reflect")


def tile_grid(height: int, width: int, tile: int, stride: int) -> list[tuple[int, int]]:
    """(y, x) starts of the tiles of a padded height x width image."""
    return [(y, x) for y in tile_starts(height, tile, stride) for x in tile_starts(width, tile, stride)]


def cut_tiles(image: np.ndarray, tile: int, stride: int) -> tuple[np.ndarray, list[tuple[int, int]], tuple[int, int]]:
    """(C, H, W) image -> (tiles (N, C, tile, tile), their (y, x) starts, the padded (H', W'))."""
    padded = pad_to_tile(image, tile)
    starts = tile_grid(padded.shape[1], padded.shape[2], tile, stride)
    tiles = np.stack([padded[:, y : y + tile, x : x + tile] for y, x in starts])
    return tiles, starts, (padded.shape[1], padded.shape[2])


def stitch(maps: np.ndarray, starts: list[tuple[int, int]], shape: tuple[int, int], crop: tuple[int, int]) -> np.ndarray:
    """Tile maps (N, t, t) -> one (H, W) map: the mean over overlapping tiles, cropped to `crop` (h, w)."""
    tile = maps.shape[-1]
    total = np.zeros(shape, np.float32)
    count = np.zeros(shape, np.float32)
    for (y, x), m in zip(starts, maps):
        total[y : y + tile, x : x + tile] += m
        count[y : y + tile, x : x + tile] += 1
    return (total / count)[: crop[0], : crop[1]]


def random_window(height: int, width: int, tile: int, rng: np.random.Generator) -> tuple[int, int]:
    """(y, x) of a uniformly placed tile x tile window in a height x width (padded) image."""
    return int(rng.integers(0, height - tile + 1)), int(rng.integers(0, width - tile + 1))


def random_tile(image: np.ndarray, tile: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly placed tile x tile window of a (C, H, W) image (padded first when smaller)."""
    padded = pad_to_tile(image, tile)
    y, x = random_window(padded.shape[1], padded.shape[2], tile, rng)
    return padded[:, y : y + tile, x : x + tile]
