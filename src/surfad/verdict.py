"""Scores -> verdicts: the decision rule, the defect mask and regions, and the Prediction of one image.

The rule, used by inspection, evaluation, metrics and reports alike: NG iff score > threshold
(strictly greater). With a review band [low, high] (calibrate --review), OK iff score <= low, NG
iff score > high and REVIEW between: the doubtful parts go to a person. The defect mask is the anomaly map (at the original image size) above the
calibrated pixel threshold; regions are its 8-connected components of at least `min_area` pixels.
Localisation is reported for NG and REVIEW images only: an OK image has an empty mask and no
regions, so an inspector never sees boxes on a part that passed. An NG or REVIEW image with no
region above the pixel threshold gets one region all the same, at the map's peak (peak_region,
flagged below_pixel_threshold; the mask stays empty), so a reviewer always sees where to look.
Each region can carry its nearest good example (surfad.detector.examples).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from surfad.data.roi import resize_roi
from surfad.data.transforms import resize_map
from surfad.errors import SurfadError

OK, REVIEW, NG = "OK", "REVIEW", "NG"
VERDICTS = (OK, REVIEW, NG)


def flagged(scores: Any, threshold: float) -> np.ndarray:
    """The rule on an array of scores: True (NG) where score > threshold."""
    return np.asarray(scores) > threshold


def verdict(score: float, threshold: float, review: list[float] | None = None) -> str:
    """"NG" iff score > threshold, else "OK"; with a review band [low, high] instead: "OK" iff
    score <= low, "NG" iff score > high, "REVIEW" between (for a person to decide)."""
    if review is not None:
        low, high = review
        return NG if score > high else OK if score <= low else REVIEW
    return NG if score > threshold else OK


@dataclass
class NearestGood:
    """The place in a training image that looks most like a region: what good looks like there."""

    image: str  # the training image's file name, relative to the data folder
    box: list[int]  # [x0, y0, x1, y1], inclusive, in that image's original pixels
    distance: float  # between the region's features and that place's (the model's feature space)

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.image, "box": self.box, "distance": self.distance}


@dataclass
class Region:
    """A connected defect region; bbox = [x0, y0, x1, y1], inclusive, in original-image pixels; peak =
    [x, y] of its highest map value. below_pixel_threshold: the map's peak of an image that had no
    region above the pixel threshold (see peak_region). nearest_good: set by the detector for runs
    that keep training examples."""

    bbox: list[int]
    area: int
    max_score: float
    mean_score: float
    peak: list[int] = field(default_factory=lambda: [0, 0])
    below_pixel_threshold: bool = False
    nearest_good: NearestGood | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"bbox": self.bbox, "area": self.area, "max_score": self.max_score,
                               "mean_score": self.mean_score}
        if self.below_pixel_threshold:
            out["below_pixel_threshold"] = True
        if self.nearest_good is not None:
            out["nearest_good"] = self.nearest_good.to_dict()
        return out


@dataclass
class Prediction:
    """The inspection result for one image; maps and masks are at the original image size."""

    score: float
    threshold: float
    verdict: str
    anomaly_map: np.ndarray = field(repr=False)
    mask: np.ndarray = field(repr=False)
    regions: list[Region]
    review: list[float] | None = None  # the review band [low, high] the verdict used, if any

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "threshold": self.threshold,
            "verdict": self.verdict,
            "review": self.review,
            "regions": [r.to_dict() for r in self.regions],
        }


def find_regions(anomaly_map: np.ndarray, pixel_threshold: float, min_area: int) -> tuple[np.ndarray, list[Region]]:
    """Mask (map > pixel_threshold, small components removed) and its 8-connected regions, largest first."""
    above = (anomaly_map > pixel_threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(above, connectivity=8)
    mask = np.zeros(anomaly_map.shape, dtype=bool)
    regions = []
    for k in range(1, count):
        x, y, w, h, area = (int(v) for v in stats[k])
        if area < min_area:
            continue
        inside = labels == k
        mask |= inside
        regions.append(region_of(anomaly_map, inside, [x, y, x + w - 1, y + h - 1], area))
    regions.sort(key=lambda r: r.area, reverse=True)
    return mask, regions


def region_of(anomaly_map: np.ndarray, inside: np.ndarray, bbox: list[int], area: int,
              below_pixel_threshold: bool = False) -> Region:
    """The Region of the pixels `inside` (bool, the map's shape) with their box and area."""
    values = np.where(inside, anomaly_map, -np.inf)
    y, x = np.unravel_index(int(values.argmax()), values.shape)
    return Region(bbox, area, float(values[y, x]), float(anomaly_map[inside].mean()), [int(x), int(y)],
                  below_pixel_threshold)


def peak_region(anomaly_map: np.ndarray, inside: np.ndarray | None = None) -> Region:
    """The region around the map's peak, for an image judged NG or REVIEW without any region above the
    pixel threshold: the 8-connected pixels around the peak at or above the midpoint between the map's
    median and its peak. Only pixels `inside` (bool, the map's shape: a region of interest) count, and
    never values of -inf."""
    if inside is not None:
        anomaly_map = np.where(inside, anomaly_map, -np.inf)
    finite = np.isfinite(anomaly_map)
    values = anomaly_map[finite]
    peak = float(values.max())
    level = (float(np.median(values)) + peak) / 2
    above = (finite & (anomaly_map >= level)).astype(np.uint8)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(above, connectivity=8)
    y, x = np.unravel_index(int(np.where(finite, anomaly_map, -np.inf).argmax()), anomaly_map.shape)
    k = labels[y, x]
    left, top, w, h, area = (int(v) for v in stats[k])
    return region_of(anomaly_map, labels == k, [left, top, left + w - 1, top + h - 1], area, below_pixel_threshold=True)


def check_finite(value: float, what: str) -> float:
    """`value` as a float, or a SurfadError: a NaN compares False with everything, so it would pass every
    part as OK."""
    value = float(value)
    if not math.isfinite(value):
        raise SurfadError(f"{what} is {value}: refusing to judge with a non-finite value")
    return value


def judge(image: np.ndarray, model_map: np.ndarray, score: float, threshold: float, pixel_threshold: float,
          min_area: int, roi: np.ndarray | None = None, review: list[float] | None = None) -> Prediction:
    """The Prediction for one image from its anomaly map (resized to the image here when it is not
    at its size) and score; with a region of interest, the mask and regions are inside it only.
    Regions are found for NG and REVIEW images (a reviewer needs to see where), never for OK ones; one
    without any region above the pixel threshold gets its map's peak as a region (peak_region)."""
    score = check_finite(score, "the model's image score")
    threshold = check_finite(threshold, "the threshold")
    h, w = image.shape[:2]
    amap = model_map if model_map.shape == (h, w) else resize_map(model_map, h, w)
    decided = verdict(score, threshold, review)
    if decided != OK:
        inside = None if roi is None else resize_roi(roi, h, w)
        seen = amap if inside is None else np.where(inside, amap, -np.inf)
        mask, regions = find_regions(seen, pixel_threshold, min_area)
        if not regions and np.isfinite(seen).any():
            regions = [peak_region(seen)]
    else:
        mask, regions = np.zeros((h, w), dtype=bool), []
    return Prediction(score, threshold, decided, amap, mask, regions, review)
