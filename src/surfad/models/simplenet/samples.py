"""simplenet's training samples: the frozen patch features of good images, of synthetic defects and
of real defects, extracted once and reused every epoch (only the small head trains)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from surfad.data.dataset import TileDataset
from surfad.data.defects import DefectSynthesizer, synthetic_defect
from surfad.errors import SurfadError
from surfad.models.simplenet.model import SimpleNet


def patch_targets(mask: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A defect mask (1, S, S) in {0, 1} -> (target, weight), each (1, h, w): a patch is anomalous when
    any of its pixels is (a crack 1 px wide changes the features of its patch), and its neighbours,
    whose features it reaches through the receptive field, neither normal nor anomalous (weight 0)."""
    target = F.adaptive_max_pool2d(mask[None].float(), grid)[0]
    near = F.max_pool2d(target[None], 3, stride=1, padding=1)[0]
    return target, 1.0 - (near - target)


class SimpleNetSamples(Dataset):
    """The training samples of a SimpleNet, with its frozen features cached on first use.

    With N good images (or tiles): items [0, N) are the good ones (every patch normal); the next
    N * positive_ratio are synthetic defects on good image i mod N (DefectSynthesizer, drawn with
    np.random.default_rng([seed, index]), so the same at every epoch and after a resume); the last
    len(defects) * real_repeat are the real defects, each shown real_repeat times. Items:
    "features" float32 (D, h, w), "target" and "weight" float32 (1, h, w) (see patch_targets).
    """

    def __init__(self, model: SimpleNet, images: Dataset, defects: Dataset | None, seed: int) -> None:
        if len(images) == 0:
            raise SurfadError("simplenet: no training images")
        c = model.config
        self.model = model
        self.images = images
        self.defects = defects
        self.synthesizer = DefectSynthesizer(c.defect_source, model.image_size, seed)
        self.seed = abs(seed)
        self.n_good = len(images)
        self.n_synthetic = len(images) * c.positive_ratio
        self.n_real = 0 if defects is None else len(defects)
        self.real_repeat = c.real_repeat
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return self.n_good + self.n_synthetic + self.n_real * self.real_repeat

    def source(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(image (C, S, S), defect mask (S, S)) of item `index`."""
        if index < self.n_good:
            image = self.images[index]["image"].numpy()
            return image, np.zeros(image.shape[1:], np.float32)
        if index < self.n_good + self.n_synthetic:
            base = self.images[index % self.n_good]["image"].numpy()
            image, mask = synthetic_defect(base, self.synthesizer, np.random.default_rng([self.seed, index]))
            return image, mask.astype(np.float32)
        item = self.defects[(index - self.n_good - self.n_synthetic) % self.n_real]
        return item["image"].numpy(), item["mask"][0].numpy()

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(index)
        start = self.n_good + self.n_synthetic
        key = index if index < start else start + (index - start) % self.n_real  # repeats share an entry
        if key not in self._cache:
            image, mask = self.source(key)
            with torch.no_grad():
                batch = torch.from_numpy(image)[None].to(self.model.centre.device)
                features = self.model.patch_features(batch)[0].cpu()
            target, weight = patch_targets(torch.from_numpy(mask)[None], tuple(features.shape[-2:]))
            self._cache[key] = (features.half(), target, weight)
        features, target, weight = self._cache[key]
        return {"features": features.float(), "target": target, "weight": weight}


def good_images(images: Dataset) -> Dataset:
    """The images to extract features from: a tiled run's random tiles drawn once (those of the first
    epoch), so the cached features, and a resumed run's, never depend on the epoch."""
    return images.at_epoch(0) if isinstance(images, TileDataset) else images


def simplenet_samples(model: SimpleNet, images: Dataset, seed: int, defects: Dataset | None = None) -> SimpleNetSamples:
    """The training samples of `model` on the good training images (and the real training defects):
    the standardising statistics are set first, from the features of the first statistics_images."""
    images = good_images(images)
    count = min(len(images), model.config.statistics_images)
    with torch.no_grad():
        device = model.centre.device
        batch = torch.stack([images[i]["image"] for i in range(count)]).to(device)
        model.set_statistics(torch.cat([model.features(batch[i : i + 16]) for i in range(0, count, 16)]))
    return SimpleNetSamples(model, images, defects, seed)
