"""How images of a dataset become model inputs: squashed to the model's square input, or scaled by
one factor (their shape kept) and cut into tiles of it (surfad.data.tiles).

`data.geometry: auto` (the default) decides from the training images' shapes: images far from
square (median long / short side at least TILE_ASPECT) are tiled at the scale that fits their
short side to one tile, so a 1250 x 500 image becomes 560 x 224 in three overlapping tiles
instead of a 224 x 224 square squashed 2.5 times more along its length (on such a line dataset,
padim scored 92.7 image AUROC tiled against 87.6 squashed); images near square are squashed,
which validation preferred on magnetic tile (median aspect 1.39: 99.5 against 97.0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from surfad.data.samples import Sample

TILE_ASPECT = 1.5  # median long / short side from which auto geometry tiles instead of squashing
SIZES_READ = 200  # training images whose header sizes decide (evenly spaced over the list)


@dataclass(frozen=True)
class Geometry:
    """The resolved choice: tile_scale 0 squashes; why says it for people (the dry run, training)."""

    mode: str  # "squash" or "tile"
    tile_scale: float
    why: str


def choose_geometry(sizes: Sequence[tuple[int, int]], image_size: int, geometry: str, tile_scale: float) -> Geometry:
    """The geometry for training images of these (width, height) sizes: an explicit tile_scale > 0
    tiles at it; "squash" and "tile" are taken as given (tile: at the scale fitting the median short
    side to image_size); "auto" tiles when the median aspect is at least TILE_ASPECT."""
    if tile_scale <= 0 and (geometry == "squash" or not sizes):
        return Geometry("squash", 0.0, f"squashed to {image_size}x{image_size}" + (
            " (data.geometry squash)" if geometry == "squash" else " (no training image to decide from)"))
    shorts = np.array([min(w, h) for w, h in sizes], dtype=np.float64)
    aspects = np.array([max(w, h) / min(w, h) for w, h in sizes], dtype=np.float64)
    aspect, short = float(np.median(aspects)), float(np.median(shorts))
    fit_short = round(image_size / short, 4)
    if tile_scale > 0:
        return Geometry("tile", tile_scale, f"tiles of the images scaled by {tile_scale:g} (data.tile_scale)")
    if geometry == "auto" and aspect < TILE_ASPECT:
        return Geometry("squash", 0.0, f"squashed to {image_size}x{image_size}: the training images are near square "
                                       f"(median long/short side {aspect:.2f} < {TILE_ASPECT:g})")
    why = (f"scaled by {fit_short:g} (the median short side, {short:.0f} px, to {image_size}) and cut into "
           f"{image_size} px tiles, shape kept" + (" (data.geometry tile)" if geometry == "tile" else
           f": the training images are far from square (median long/short side {aspect:.2f} >= "
           f"{TILE_ASPECT:g}), so squashing would shrink them about {aspect:.1f}x more along their length; "
           "--geometry squash squashes them"))
    return Geometry("tile", fit_short, why)


def training_sizes(samples: Sequence[Sample]) -> list[tuple[int, int]]:
    """(width, height) from the headers of up to SIZES_READ training images, evenly spaced."""
    step = max(1, len(samples) // SIZES_READ)
    sizes = []
    for sample in list(samples)[::step]:
        with Image.open(sample.path) as image:
            sizes.append(image.size)
    return sizes
