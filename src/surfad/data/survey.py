"""What a dataset looks like to a model: image sizes, how wide its defects are at the model's input,
and files that appear in two splits under different names.

Image sizes come from the file headers (no decoding); duplicates from hashes of the file bytes. A defect region is a connected component of
a mask; its width is measured where it is thickest (twice the largest distance from inside it to
its border, less one pixel: 1 for a one-pixel line), then scaled as preprocessing scales the
image: by `tile_scale` when tiling, else by the geometric mean of the two squashing factors.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

from surfad.config import DataConfig
from surfad.data.io import read_mask
from surfad.data.splits import SPLIT_NAMES, Splits

THIN_DEFECT_PX = 2.0  # defect regions narrower than this at the model's input are hard to see


@dataclass
class DataSurvey:
    """Image sizes over every split, and the width of each defect region at the model's input."""

    sizes: Counter[tuple[int, int]]  # (width, height) -> number of images
    defect_widths: np.ndarray  # one per defect region, in model-input pixels
    masks: int  # defective images with a mask (the regions come from these)
    cross_split_copies: list[tuple[str, str]]  # (path, path) of byte-identical files in different splits

    @property
    def aspect_range(self) -> tuple[float, float]:
        """The smallest and largest width / height ratio."""
        ratios = [w / h for w, h in self.sizes]
        return min(ratios), max(ratios)

    @property
    def thin_share(self) -> float:
        """The share of defect regions narrower than THIN_DEFECT_PX at the model's input (nan without masks)."""
        return float(np.mean(self.defect_widths < THIN_DEFECT_PX)) if self.defect_widths.size else float("nan")

    def lines(self) -> list[str]:
        """A few lines for people: image sizes and defect widths."""
        (w0, h0), (w1, h1) = min(self.sizes), max(self.sizes)
        low, high = self.aspect_range
        sizes = f"{w0}x{h0}" if len(self.sizes) == 1 else f"{len(self.sizes)} sizes from {w0}x{h0} to {w1}x{h1}"
        lines = [f"images: {sum(self.sizes.values())}, {sizes} (width/height {low:.2f} to {high:.2f})"]
        if self.defect_widths.size:
            q10, q50 = np.percentile(self.defect_widths, [10, 50])
            lines.append(f"defects: {self.defect_widths.size} regions in {self.masks} masks; width at the model's input: "
                         f"median {q50:.1f} px, 10% under {q10:.1f} px, {self.thin_share:.0%} under {THIN_DEFECT_PX:g} px")
        if self.cross_split_copies:
            first, second = self.cross_split_copies[0]
            lines.append(f"identical files in two splits: {len(self.cross_split_copies)} pairs, e.g. {first} and {second}")
        return lines


def image_size(path: object) -> tuple[int, int]:
    """(width, height) from an image file's header."""
    with Image.open(path) as image:  # type: ignore[arg-type]
        return image.size


def region_widths(mask: np.ndarray) -> np.ndarray:
    """The width of each connected region of a bool mask where it is thickest, in pixels."""
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return np.zeros(0)
    inside = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    deepest = ndimage.maximum(inside, labels, index=np.arange(1, count))
    return np.maximum(2.0 * np.asarray(deepest) - 1.0, 1.0)


def input_scale(size: tuple[int, int], data: DataConfig) -> float:
    """How much preprocessing scales an image of `size` (width, height) on its way to the model."""
    if data.tile_scale > 0:
        return data.tile_scale
    width, height = size
    return float(np.sqrt(data.image_size / width * data.image_size / height))


def survey_data(splits: Splits, data: DataConfig, progress: bool = False) -> DataSurvey:
    """Read every image file of the splits (headers decoded, bytes hashed) and decode every defect mask."""
    samples = [(name, s) for name in SPLIT_NAMES for s in getattr(splits, name)]
    sizes: Counter[tuple[int, int]] = Counter()
    widths: list[np.ndarray] = []
    masks = 0
    first_seen: dict[str, tuple[str, str]] = {}  # hash -> (split, path) of its first file
    copies: list[tuple[str, str]] = []
    for split, sample in tqdm(samples, desc="survey", unit="image", disable=not progress, leave=False):
        digest = hashlib.sha1(sample.path.read_bytes()).hexdigest()
        seen_split, seen_path = first_seen.setdefault(digest, (split, str(sample.path)))
        if seen_split != split:
            copies.append((seen_path, str(sample.path)))
        size = image_size(sample.path)
        sizes[size] += 1
        if sample.mask_path is not None:
            masks += 1
            widths.append(region_widths(read_mask(sample.mask_path)) * input_scale(size, data))
    return DataSurvey(sizes, np.concatenate(widths) if widths else np.zeros(0), masks, copies)
