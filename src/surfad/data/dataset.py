"""Samples -> tensors: a torch Dataset that decodes each image once and caches the model input."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from surfad.config import DataConfig
from surfad.data.io import read_image, read_mask
from surfad.data.roi import check_aspect, input_fill
from surfad.data.samples import Sample
from surfad.data.tiles import default_stride, pad_to_tile, random_tile, tile_grid
from surfad.data.transforms import preprocess, resize_mask


class ImageDataset(Dataset):
    """Preprocessed images of `samples` as dicts of tensors.

    Items: "image" float32 (C, S, S) in [0, 1] (with tile_scale > 0: the whole image scaled by that
    factor, (C, h, w)); "mask" float32 (1, S, S) (zeros for good images); "label" int64; "index"
    int64 (position in `samples`). Images are decoded on first use and kept in memory as uint8, so
    later epochs cost no decoding. With a region of interest every image must have its aspect
    ratio, and unless fill is "off" it is filled outside the ROI before preprocessing (InputFill).
    """

    def __init__(self, samples: Sequence[Sample], image_size: int, channels: int, with_masks: bool = True,
                 tile_scale: float = 0.0, roi: np.ndarray | None = None, fill: str = "off"):
        self.samples = list(samples)
        self.roi = roi
        self.fill = input_fill(roi, fill)
        self.image_size = image_size
        self.channels = channels
        self.with_masks = with_masks
        self.tile_scale = tile_scale
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @classmethod
    def for_run(cls, samples: Sequence[Sample], data: DataConfig, roi: np.ndarray | None = None) -> ImageDataset:
        """The samples as a run with these (resolved) data settings sees them."""
        return cls(samples, data.input_size, data.input_channels, tile_scale=data.tile_scale, roi=roi,
                   fill=data.roi_fill)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (C, S, S) (or (C, h, w) when tiling) image and bool (S, S) mask of sample `index`, cached."""
        if index not in self._cache:
            sample = self.samples[index]
            image = read_image(sample.path)
            if self.roi is not None:
                check_aspect(self.roi, *image.shape[:2], str(sample.path))
            prepared = preprocess(self.fill(image) if self.fill else image, self.image_size, self.channels,
                                  self.tile_scale)
            array = (prepared * 255).round().astype(np.uint8)
            size = self.image_size
            if self.with_masks and sample.mask_path is not None:
                mask = resize_mask(read_mask(sample.mask_path, image.shape[:2]), size)
            else:
                mask = np.zeros((size, size), dtype=bool)
            self._cache[index] = (array, mask)
        return self._cache[index]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        array, mask = self.load(index)
        return {
            "image": torch.from_numpy(array.astype(np.float32) / 255.0),
            "mask": torch.from_numpy(mask[None].astype(np.float32)),
            "label": torch.tensor(self.samples[index].label, dtype=torch.int64),
            "index": torch.tensor(index, dtype=torch.int64),
        }


class TileDataset(Dataset):
    """Random image_size tiles of good training images (scaled by their dataset's tile_scale).

    An epoch has len(images) * tiles_per_image items; item i is a tile of image i mod N, placed
    uniformly by np.random.default_rng([seed, epoch, i]), so every epoch sees new tiles and a
    given (seed, epoch) always the same ones. Items are in ImageDataset's format (mask all zeros).
    A model's training samples built on top (e.g. recondiff's clean and synthetic-defect copies of
    item i) share item i's tile within an epoch, as they share the image when squashing.
    """

    def __init__(self, images: ImageDataset, tiles_per_image: int, seed: int) -> None:
        self.images = images
        self.length = len(images) * tiles_per_image
        self.seed = abs(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def at_epoch(self, epoch: int) -> TileDataset:
        """A copy that always gives this epoch's tiles (for samples computed once, e.g. cached features)."""
        fixed = TileDataset(self.images, self.length // len(self.images), self.seed)
        fixed.epoch = epoch
        fixed.set_epoch = lambda epoch: None  # type: ignore[method-assign]  # the training loop's calls change nothing
        return fixed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        array, _ = self.images.load(index % len(self.images))
        size = self.images.image_size
        tile = random_tile(array, size, np.random.default_rng([self.seed, self.epoch, index]))
        return {
            "image": torch.from_numpy(tile.astype(np.float32) / 255.0),
            "mask": torch.zeros((1, size, size), dtype=torch.float32),
            "label": torch.tensor(0, dtype=torch.int64),
            "index": torch.tensor(index, dtype=torch.int64),
        }


class GridTileDataset(Dataset):
    """Every inference tile of the scaled good training images (surfad.data.tiles: tiles `stride`
    apart, 0 = 3/4 of a tile), in order: what a fitted model is fitted on when tiling, so its bank
    covers every place a tile is scored at. Items are in ImageDataset's format (mask all zeros)."""

    def __init__(self, images: ImageDataset, stride: int) -> None:
        self.images = images
        self.stride = default_stride(images.image_size, stride)
        self.index: list[tuple[int, int, int]] = []  # (image, y, x)
        for i in range(len(images)):
            array, _ = images.load(i)
            padded = pad_to_tile(array, images.image_size)
            self.index += [(i, y, x) for y, x in tile_grid(padded.shape[1], padded.shape[2], images.image_size,
                                                          self.stride)]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        i, y, x = self.index[index]
        size = self.images.image_size
        tile = pad_to_tile(self.images.load(i)[0], size)[:, y : y + size, x : x + size]
        return {
            "image": torch.from_numpy(tile.astype(np.float32) / 255.0),
            "mask": torch.zeros((1, size, size), dtype=torch.float32),
            "label": torch.tensor(0, dtype=torch.int64),
            "index": torch.tensor(index, dtype=torch.int64),
        }


class DefectTiles(Dataset):
    """Real defects as a tiled run trains on them: of each image scaled by the tile scale, the
    image_size tile (of the inference grid) that holds most of its defect, with the mask at the
    same scale. Items in ImageDataset's format."""

    def __init__(self, images: ImageDataset, stride: int) -> None:
        self.images = images
        self.stride = default_stride(images.image_size, stride)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        array, _ = self.images.load(index)
        sample = self.images.samples[index]
        size = self.images.image_size
        padded = pad_to_tile(array, size)
        mask = np.zeros(padded.shape[1:], bool)
        if sample.mask_path is not None:
            full = read_mask(sample.mask_path)
            mask[: array.shape[1], : array.shape[2]] = cv2.resize(
                full.astype(np.uint8), (array.shape[2], array.shape[1]), interpolation=cv2.INTER_NEAREST) > 0
        starts = tile_grid(padded.shape[1], padded.shape[2], size, self.stride)
        y, x = max(starts, key=lambda yx: int(mask[yx[0] : yx[0] + size, yx[1] : yx[1] + size].sum()))
        return {
            "image": torch.from_numpy(padded[:, y : y + size, x : x + size].astype(np.float32) / 255.0),
            "mask": torch.from_numpy(mask[None, y : y + size, x : x + size].astype(np.float32)),
            "label": torch.tensor(sample.label, dtype=torch.int64),
            "index": torch.tensor(index, dtype=torch.int64),
        }


def defect_dataset(samples: Sequence[Sample], data: DataConfig, roi: np.ndarray | None = None) -> Dataset:
    """Real training defects as a run with these data settings trains on them: model-sized images and
    masks, or when tiling the tile of each that holds most of its defect (DefectTiles)."""
    images = ImageDataset.for_run(samples, data, roi)
    return DefectTiles(images, data.tile_stride) if data.tile_scale > 0 else images
