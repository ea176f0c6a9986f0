"""recondiff's training samples: augmented normal images and synthetic defects pasted on them."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from surfad.data.defects import DefectSynthesizer
from surfad.errors import SurfadError
from surfad.models.recondiff.model import RecondiffModel


def augment_normal(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random subset (0 to 3, random) of: rotate +-4 deg, scale 0.98-1.02, translate +-2%; edges replicated.

    image float32 (C, S, S); returns a new array of the same shape.
    """
    channels, size = image.shape[0], image.shape[1]
    ops = rng.choice(3, size=int(rng.integers(0, 4)), replace=False)
    if len(ops) == 0:
        return image.copy()
    angle = rng.uniform(-4.0, 4.0) if 0 in ops else 0.0
    scale = rng.uniform(0.98, 1.02) if 1 in ops else 1.0
    shift = rng.uniform(-0.02, 0.02, size=2) * size if 2 in ops else np.zeros(2)
    matrix = cv2.getRotationMatrix2D(((size - 1) / 2.0, (size - 1) / 2.0), angle, scale)
    matrix[:, 2] += shift
    hwc = np.ascontiguousarray(image.transpose(1, 2, 0))
    warped = cv2.warpAffine(hwc, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return np.ascontiguousarray(warped.reshape(size, size, channels).transpose(2, 0, 1), dtype=np.float32)


class RecondiffTrainDataset(Dataset):
    """Training samples of recondiff: augmented normal images, synthetic defects, then real defects.

    With N good images the epoch has N * (neg + pos) items, plus real_repeat times each real
    training defect: indices [0, N * neg) are augmented normal images (input = target, empty mask,
    label 0), the next N * pos synthetic defects on an augmented image (input = defect image,
    target = the clean augmented image, label 1; image = index mod N), the last the real defects as
    they are (input = target = the image, its mask, label 1; no clean image exists, so the
    reconstruction is not trained under the mask and a 3 px margin around it: "recon_weight" 0).
    Items: "image" (C, S, S), "target" (C, S, S), "mask" (1, S, S), "recon_weight" (1, S, S), "label" int64.

    Randomness: item `index` uses np.random.default_rng([seed, epoch, index]). `epoch` is the value
    given to set_epoch() when the training loop calls it (needed for reproducibility with DataLoader
    workers, whose dataset copies are rebuilt every epoch); otherwise it is the number of times this
    index has been drawn before, which equals the epoch when every index is drawn once per epoch in
    the main process. Either way samples differ across epochs and repeat for the same (seed, epoch).
    """

    def __init__(
        self, images: Dataset, synthesizer: DefectSynthesizer, negative_ratio: int, positive_ratio: int, seed: int,
        defects: Dataset | None = None, real_repeat: int = 1,
    ) -> None:
        if len(images) == 0:
            raise SurfadError("recondiff: no training images")
        self.images = images
        self.synthesizer = synthesizer
        self.n_normal = len(images) * negative_ratio
        self.n_generated = len(images) * (negative_ratio + positive_ratio)
        self.defects = defects
        self.length = self.n_generated + (0 if defects is None else len(defects) * real_repeat)
        self.seed = abs(seed)
        self.epoch: int | None = None
        self.draws = np.zeros(self.length, dtype=np.int64)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        index = int(index)
        if not 0 <= index < self.length:
            raise IndexError(index)
        if index >= self.n_generated:
            return self.real_defect((index - self.n_generated) % len(self.defects))
        epoch = self.epoch if self.epoch is not None else int(self.draws[index])
        self.draws[index] += 1
        rng = np.random.default_rng([self.seed, epoch, index])
        base = np.asarray(self.images[index % len(self.images)]["image"], dtype=np.float32)
        clean = augment_normal(base, rng)
        if index < self.n_normal:
            image, mask, label = clean, np.zeros(clean.shape[1:], dtype=np.float32), 0
        else:
            (image, mask), label = self.synthesizer(clean, rng), 1
        return {
            "image": torch.from_numpy(image),
            "target": torch.from_numpy(clean),
            "mask": torch.from_numpy(mask[None].copy()),
            "recon_weight": torch.ones((1, *clean.shape[1:])),
            "label": torch.tensor(label, dtype=torch.int64),
        }

    def real_defect(self, index: int) -> dict[str, torch.Tensor]:
        """Real training defect `index`, with no reconstruction target under (and around) its mask."""
        item = self.defects[index]
        mask = item["mask"]
        near = torch.nn.functional.max_pool2d(mask[None], 7, stride=1, padding=3)[0]
        return {"image": item["image"], "target": item["image"], "mask": mask, "recon_weight": 1.0 - near,
                "label": torch.tensor(1, dtype=torch.int64)}


def recondiff_samples(model: RecondiffModel, images: Dataset, seed: int,
                      defects: Dataset | None = None) -> RecondiffTrainDataset:
    """The training samples of `model` built on the good training images (and the real training defects,
    each shown as often as a good image is: negative + positive ratio times an epoch)."""
    c = model.config
    synthesizer = DefectSynthesizer(c.defect_source, model.image_size, seed)
    return RecondiffTrainDataset(images, synthesizer, c.negative_aug_ratio, c.positive_aug_ratio, seed, defects,
                                 c.negative_aug_ratio + c.positive_aug_ratio)
