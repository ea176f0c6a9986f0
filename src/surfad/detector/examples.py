"""Nearest good examples: the training images a run keeps, and the search that finds, for each region
of an inspected image, the place in them that looks most like it.

RUN/examples/ (written at the end of training by surfad.training.examples; absent with
train.keep_train_examples 0):

    examples.json        the kept images (name relative to the data folder, original size, copy) and
                         how they are searched
    NNNN.png             each kept image as the model saw it: model-sized (squashed runs) or scaled by
                         the tile scale (tiled runs), filled outside the region of interest; crops
                         are cut from these, so they show when the originals have moved
    index.safetensors    the search index: the kept images' descriptors at every grid cell (float16,
                         at most INDEX_LIMIT_BYTES), or, for a model with a memory bank, which kept
                         image (and where in it) each fit input is

How a region is explained. The model describes every cell of a grid over its input
(AnomalyModel.descriptors); the cell holding the region's peak is compared with the kept images'
cells:
- a model with a memory bank (patchcore): the nearest bank patch among those whose training image is
  kept (AnomalyModel.example_bank: the bank records where each patch comes from), so with fewer
  kept images than training images it may not be the patch that set the score;
- the others (padim, gradient-trained models): the index of the kept images' descriptors, searched
  at the same cell and its neighbours (POSITION_REACH) for squashed runs, where a part sits at the
  same place in every image, and at every cell of every kept tile for tiled runs, where a place
  within a tile means nothing.
The nearest good box is the region's box moved by the offset between the two cells, in the kept
image's original pixels; the distance is between the two cells' descriptors. The lookup runs in
torch around the graph, the same for every runtime, and only for the images it is asked about (NG
and REVIEW ones).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from safetensors.torch import load_file, save_file

from surfad.data.io import read_image
from surfad.data.tiles import pad_to_tile
from surfad.errors import SurfadError
from surfad.models import IMAGE_LAYOUT, AnomalyModel
from surfad.utils import atomic_write, atomic_write_json, read_json
from surfad.verdict import NearestGood, Region
from surfad.visualize import to_rgb, write_png

FOLDER = "examples"
RECORD = "examples.json"
INDEX = "index.safetensors"
INDEX_LIMIT_BYTES = 16 * 2**20  # the descriptors index; beyond it, a seeded random projection to fewer dims
MIN_DIMS = 8  # the fewest dims a projection keeps (then fewer tiles are kept)
POSITION_REACH = 1  # a squashed run's index is searched at the region's cell and this many cells around it
CROP_CONTEXT = 0.5  # crops show the box and this share of its size on every side,
CROP_MIN_CONTEXT = 8  # at least this many pixels,
CROP_SIDE = 256  # at most this long on their longer side (shrunk to fit)


@dataclass(frozen=True)
class KeptImage:
    """One kept training image: its name (relative to the data folder), its original size and its copy
    (a file in the examples folder, copy_width x copy_height pixels)."""

    name: str
    width: int
    height: int
    file: str
    copy_width: int
    copy_height: int


@dataclass
class ExampleIndex:
    """What the search compares with. kind "grid": descriptors (T, d, h, w) of T kept tiles (the whole
    copy when squashing); "bank": the model's bank, T = its fit inputs. owner (T,): the kept image of
    each (-1: not kept); offset (T, 2): where it starts in that image's copy (y, x). projection
    (D, d): applied to query descriptors when the index was projected to fit its limit."""

    kind: str
    position_bound: bool
    owner: torch.Tensor
    offset: torch.Tensor
    descriptors: torch.Tensor | None = None
    projection: torch.Tensor | None = None

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"owner": self.owner.int(), "offset": self.offset.int()}
        if self.descriptors is not None:
            out["descriptors"] = self.descriptors.half()
        if self.projection is not None:
            out["projection"] = self.projection.float()
        return {k: v.contiguous() for k, v in out.items()}


def bound_index(descriptors: torch.Tensor, owner: torch.Tensor, offset: torch.Tensor,
                limit: int = INDEX_LIMIT_BYTES) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(descriptors, owner, offset, projection) within `limit` bytes of float16: the descriptors as they
    are when they fit; else projected (seeded Gaussian, distances kept within a small factor) to the dims
    that fit, at least MIN_DIMS; below that, fewer tiles, evenly spaced."""
    tiles, dims, h, w = descriptors.shape
    fit_dims = limit // (2 * tiles * h * w)
    if fit_dims >= dims:
        return descriptors, owner, offset, None
    kept_dims = max(MIN_DIMS, int(fit_dims))
    projection = torch.randn(dims, kept_dims, generator=torch.Generator().manual_seed(0)) / math.sqrt(kept_dims)
    projected = torch.einsum("tdhw,de->tehw", descriptors.float(), projection)
    fit_tiles = limit // (2 * kept_dims * h * w)
    if fit_tiles < tiles:
        chosen = evenly_spaced(tiles, max(1, int(fit_tiles)))
        projected, owner, offset = projected[chosen], owner[chosen], offset[chosen]
    return projected, owner, offset, projection


def evenly_spaced(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n), first and last included (all of them when k >= n)."""
    if k >= n:
        return list(range(n))
    return sorted({round(i * (n - 1) / max(k - 1, 1)) for i in range(k)})


def write_examples(run: Path, kept: Sequence[KeptImage], copies: Sequence[np.ndarray], index: ExampleIndex,
                   grid: tuple[int, int]) -> None:
    """RUN/examples/: the copies (uint8 C x H x W), the index, and examples.json last, so a folder
    without examples.json (an interrupted write) is one without examples. grid: the model's
    descriptor grid (rows, columns) on one input."""
    folder = run / FOLDER
    for image, copy in zip(kept, copies):
        write_png(folder / image.file, copy[0] if copy.shape[0] == 1 else copy.transpose(1, 2, 0))
    tensors = index.tensors()
    atomic_write(folder / INDEX, lambda tmp: save_file(tensors, str(tmp)))
    atomic_write_json(folder / RECORD, {"search": index.kind, "position_bound": index.position_bound,
                                        "grid": list(grid), "images": [asdict(image) for image in kept]})


class KeptExamples:
    """A run's kept training images (RUN/examples) and their index; copies are read when first needed."""

    def __init__(self, folder: Path, images: list[KeptImage], index: ExampleIndex, grid: tuple[int, int]) -> None:
        self.folder = folder
        self.images = images
        self.index = index
        self.grid = grid  # the model's descriptor grid (rows, columns) on one input
        self.by_name = {image.name: i for i, image in enumerate(images)}
        self._copies: dict[int, np.ndarray] = {}

    @classmethod
    def load(cls, run: Path) -> KeptExamples | None:
        """The run's kept examples; None when it keeps none."""
        folder = run / FOLDER
        if not (folder / RECORD).is_file():
            return None

        def parse(raw: dict[str, Any]) -> tuple[str, bool, tuple[int, int], list[KeptImage]]:
            try:
                rows, columns = (int(v) for v in raw["grid"])
                return (str(raw["search"]), bool(raw["position_bound"]), (rows, columns),
                        [KeptImage(**item) for item in raw["images"]])
            except (KeyError, TypeError, ValueError) as err:
                raise SurfadError(f"not a valid record of kept examples ({err})") from None

        kind, bound, grid, images = read_json(folder / RECORD, "kept examples", parse)
        try:
            tensors = load_file(str(folder / INDEX))
        except Exception as err:  # safetensors raises several types for corrupt files
            raise SurfadError(f"{folder / INDEX}: cannot read the examples index ({err})") from None
        missing = [image.file for image in images if not (folder / image.file).is_file()]
        if missing or "owner" not in tensors or "offset" not in tensors:
            raise SurfadError(f"{folder}: incomplete kept examples (missing {', '.join(missing[:3]) or INDEX + ' tensors'}); "
                              "retrain the run, or remove the folder to inspect without nearest good examples")
        index = ExampleIndex(kind, bound, tensors["owner"].long(), tensors["offset"].long(),
                             tensors.get("descriptors"), tensors.get("projection"))
        return cls(folder, images, index, grid)

    def copy(self, example: int) -> np.ndarray:
        """The kept copy of example `example`, uint8 H x W x C."""
        if example not in self._copies:
            self._copies[example] = read_image(self.folder / self.images[example].file)
        return self._copies[example]

    def good_crop(self, nearest: NearestGood) -> np.ndarray:
        """The nearest good example's place with some context (context_box), from the kept copy, at the
        original image's scale (at most CROP_SIDE), RGB."""
        image = self.images[self.by_name[nearest.image]]
        x0, y0, x1, y1 = context_box(nearest.box, image.width, image.height)
        sx, sy = image.copy_width / image.width, image.copy_height / image.height
        copy = self.copy(self.by_name[nearest.image])
        cx0, cy0 = min(int(x0 * sx), image.copy_width - 1), min(int(y0 * sy), image.copy_height - 1)
        cx1, cy1 = max(cx0 + 1, math.ceil((x1 + 1) * sx)), max(cy0 + 1, math.ceil((y1 + 1) * sy))
        resized = cv2.resize(copy[cy0:cy1, cx0:cx1], (x1 - x0 + 1, y1 - y0 + 1), interpolation=cv2.INTER_LINEAR)
        return shrink(to_rgb(resized.reshape(y1 - y0 + 1, x1 - x0 + 1, copy.shape[2])))


def context_box(box: Sequence[int], width: int, height: int) -> list[int]:
    """box [x0, y0, x1, y1] grown by CROP_CONTEXT of its size (at least CROP_MIN_CONTEXT px) on each side,
    within a width x height image: what a crop of it shows."""
    x0, y0, x1, y1 = box
    mx = max(CROP_MIN_CONTEXT, round(CROP_CONTEXT * (x1 - x0 + 1)))
    my = max(CROP_MIN_CONTEXT, round(CROP_CONTEXT * (y1 - y0 + 1)))
    return [max(0, x0 - mx), max(0, y0 - my), min(width - 1, x1 + mx), min(height - 1, y1 + my)]


def shrink(image: np.ndarray) -> np.ndarray:
    """image at most CROP_SIDE pixels on its longer side (area interpolation), channels kept."""
    h, w, c = image.shape
    scale = CROP_SIDE / max(h, w)
    if scale >= 1:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA).reshape(size[1], size[0], c)


def region_crop(image: np.ndarray, region: Region) -> np.ndarray:
    """The region of an inspected image (uint8 H x W x C) with the same context as its good crop, RGB."""
    x0, y0, x1, y1 = context_box(region.bbox, image.shape[1], image.shape[0])
    return shrink(to_rgb(image[y0 : y1 + 1, x0 : x1 + 1]))


@dataclass(frozen=True)
class Query:
    """One region to explain: its descriptor cell, where that cell starts in the input (y, x), and how
    the inspected image's original pixels map to input pixels (scale_x, scale_y)."""

    descriptor: torch.Tensor  # (d,)
    cell: tuple[int, int]
    start: tuple[float, float]
    scale: tuple[float, float]


class Explainer:
    """Finds the nearest good example of regions, from the model's descriptors and the kept examples.

    tile_scale > 0: inputs are whole scaled images and each region is described on the tile of
    image_size pixels centred on its peak; else inputs are the model-sized images."""

    def __init__(self, model: AnomalyModel, examples: KeptExamples, tile_scale: float) -> None:
        self.model = model
        self.examples = examples
        self.tile = model.image_size
        self.tiled = tile_scale > 0
        index = examples.index
        self.device = next(model.buffers()).device
        if index.kind == "bank":
            bank = model.example_bank()
            if bank is None:
                raise SurfadError(f"{examples.folder}: the examples index searches the model's memory bank, but "
                                  "these weights do not record where its patches come from; retrain the run")
            patches, origin = bank
            keep = index.owner.to(origin.device)[origin[:, 0]] >= 0
            self.candidates = patches[keep].float()
            self.origin = origin[keep]  # (K, 2): fit input, position
        else:
            self.cells = index.descriptors.float().to(self.device)  # (T, d, h, w)
        self.grid = examples.grid
        self.projection = None if index.projection is None else index.projection.to(self.device)

    def explain(self, inputs: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]],
                regions: Sequence[Sequence[Region]]) -> None:
        """Set nearest_good on every region of each image: inputs are the preprocessed images (C, H, W)
        the model saw, sizes their original (height, width)."""
        self.set_nearest(regions, self.queries(inputs, sizes, regions))

    def explain_described(self, descriptors: np.ndarray, sizes: Sequence[tuple[int, int]],
                          regions: Sequence[Sequence[Region]]) -> None:
        """explain() for squashed inputs from the model's descriptors of them (B, d, h, w), as the
        inspection's own pass gave them: no pass here."""
        if self.tiled:
            raise ValueError("tiled inputs are described on a tile centred on each region: use explain()")
        described = torch.from_numpy(np.ascontiguousarray(descriptors, dtype=np.float32)).to(self.device)
        windows = [(i, j, 0, 0) for i, image_regions in enumerate(regions) for j in range(len(image_regions))]
        rows = [i for i, *_ in windows]
        inputs = [(self.tile, self.tile)] * len(regions)
        self.set_nearest(regions, self.cell_queries(described, windows, rows, inputs, sizes, regions))

    def set_nearest(self, regions: Sequence[Sequence[Region]], queries: list[list[Query]]) -> None:
        for image_regions, image_queries in zip(regions, queries):
            for region, query in zip(image_regions, image_queries):
                region.nearest_good = self.nearest(region, query)

    def queries(self, inputs: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]],
                regions: Sequence[Sequence[Region]]) -> list[list[Query]]:
        """The descriptor cell of every region's peak: one forward pass over the inputs (squashed), or over
        the tile centred on each peak (tiled)."""
        windows: list[tuple[int, int, int, int]] = []  # (image, region, y, x) of each described input
        batch = []
        for i, (image, image_regions) in enumerate(zip(inputs, regions)):
            if not image_regions:
                continue
            if not self.tiled:
                batch.append(image)
                windows += [(i, j, 0, 0) for j in range(len(image_regions))]
                continue
            padded = pad_to_tile(image, self.tile)
            for j, region in enumerate(image_regions):
                (height, width), (_, in_h, in_w) = sizes[i], image.shape
                py, px = (region.peak[1] + 0.5) * in_h / height, (region.peak[0] + 0.5) * in_w / width
                y = int(np.clip(round(py - self.tile / 2), 0, padded.shape[1] - self.tile))
                x = int(np.clip(round(px - self.tile / 2), 0, padded.shape[2] - self.tile))
                batch.append(padded[:, y : y + self.tile, x : x + self.tile])
                windows.append((i, j, y, x))
        if not batch:
            return [[] for _ in inputs]
        x_in = torch.from_numpy(np.ascontiguousarray(np.stack(batch), dtype=np.float32))
        with torch.inference_mode():
            described = self.model.descriptors(x_in.to(self.device, memory_format=IMAGE_LAYOUT)).float()
        if self.tiled:
            rows = list(range(len(windows)))
        else:
            row_of_image = {i: k for k, i in enumerate(sorted({i for i, *_ in windows}))}
            rows = [row_of_image[i] for i, *_ in windows]
        return self.cell_queries(described, windows, rows, [a.shape[1:] for a in inputs], sizes, regions)

    def cell_queries(self, described: torch.Tensor, windows: Sequence[tuple[int, int, int, int]],
                     rows: Sequence[int], inputs: Sequence[tuple[int, ...]], sizes: Sequence[tuple[int, int]],
                     regions: Sequence[Sequence[Region]]) -> list[list[Query]]:
        """The query of each window (image, region, y, x: where the described input starts in the image's
        input) from the descriptors (N, d, h, w) of the described inputs, rows[n] being window n's;
        inputs: each image's input (height, width), sizes: its original (height, width)."""
        if self.projection is not None:
            described = torch.einsum("bdhw,de->behw", described, self.projection)
        h, w = described.shape[-2:]
        out: list[list[Query]] = [[] for _ in inputs]
        for (i, j, y, x), k in zip(windows, rows):
            (height, width), (in_h, in_w) = sizes[i], inputs[i]
            region = regions[i][j]
            scale = (in_w / width, in_h / height)
            py, px = (region.peak[1] + 0.5) * scale[1] - y, (region.peak[0] + 0.5) * scale[0] - x
            cell_h, cell_w = self.tile / h, self.tile / w
            cell = (min(h - 1, max(0, int(py / cell_h))), min(w - 1, max(0, int(px / cell_w))))
            out[i].append(Query(described[k, :, cell[0], cell[1]], cell, (y + cell[0] * cell_h, x + cell[1] * cell_w),
                                scale))
        return out

    def nearest(self, region: Region, query: Query) -> NearestGood:
        """The nearest kept cell to the query's, and the region's box moved there."""
        item, cell, distance = self.search(query)
        index = self.examples.index
        example = int(index.owner[item])
        if example < 0:  # the search looks at kept images only
            raise RuntimeError(f"nearest good example: index entry {item} is not of a kept image")
        kept = self.examples.images[example]
        h, w = self.grid
        start_y = float(index.offset[item, 0]) + cell[0] * self.tile / h
        start_x = float(index.offset[item, 1]) + cell[1] * self.tile / w
        dy, dx = start_y - query.start[0], start_x - query.start[1]
        sx, sy = query.scale
        x0, y0, x1, y1 = region.bbox
        to_x, to_y = kept.width / kept.copy_width, kept.height / kept.copy_height
        box = [math.floor((x0 * sx + dx) * to_x), math.floor((y0 * sy + dy) * to_y),
               math.ceil(((x1 + 1) * sx + dx) * to_x) - 1, math.ceil(((y1 + 1) * sy + dy) * to_y) - 1]
        bx0, bx1 = min(max(box[0], 0), kept.width - 1), min(max(box[2], 0), kept.width - 1)
        by0, by1 = min(max(box[1], 0), kept.height - 1), min(max(box[3], 0), kept.height - 1)
        return NearestGood(kept.name, [bx0, by0, max(bx0, bx1), max(by0, by1)], distance)

    def search(self, query: Query) -> tuple[int, tuple[int, int], float]:
        """(index entry, its cell (row, column), distance) of the kept cell nearest the query."""
        q = query.descriptor
        if self.examples.index.kind == "bank":
            distances = (self.candidates - q).pow(2).sum(1)
            best = int(distances.argmin())
            item, position = (int(v) for v in self.origin[best])
            return item, divmod(position, self.grid[1]), float(distances[best].sqrt())
        h, w = self.grid
        if self.examples.index.position_bound:
            r, c = query.cell
            top, left = max(0, r - POSITION_REACH), max(0, c - POSITION_REACH)
            window = self.cells[:, :, top : r + POSITION_REACH + 1, left : c + POSITION_REACH + 1]
        else:
            top = left = 0
            window = self.cells
        distances = (window - q[None, :, None, None]).pow(2).sum(1)  # (T, rows, cols)
        best = int(distances.argmin())
        rows, cols = distances.shape[1:]
        tile, rest = divmod(best, rows * cols)
        r_best, c_best = divmod(rest, cols)
        return tile, (top + r_best, left + c_best), float(distances.flatten()[best].sqrt())
