"""Samples -> tensors: a torch Dataset that decodes each image once and caches the model input."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from surfad.data.io import read_image, read_mask
from surfad.data.samples import Sample
from surfad.data.transforms import preprocess, resize_mask


class ImageDataset(Dataset):
    """Preprocessed images of `samples` as dicts of tensors.

    Items: "image" float32 (C, S, S) in [0, 1]; "mask" float32 (1, S, S) (zeros for good images);
    "label" int64; "index" int64 (position in `samples`). Images are decoded on first use and kept
    in memory as uint8, so later epochs cost no decoding.
    """

    def __init__(self, samples: Sequence[Sample], image_size: int, channels: int, with_masks: bool = True):
        self.samples = list(samples)
        self.image_size = image_size
        self.channels = channels
        self.with_masks = with_masks
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (C, S, S) image and bool (S, S) mask of sample `index`, cached."""
        if index not in self._cache:
            sample = self.samples[index]
            image = read_image(sample.path)
            array = (preprocess(image, self.image_size, self.channels) * 255).round().astype(np.uint8)
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
