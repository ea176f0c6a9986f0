"""Scores -> verdicts: the decision rule, the defect mask and regions, and the Prediction of one image.

The rule, used by inspection, evaluation, metrics and reports alike: NG iff score > threshold
(strictly greater). With a review band [low, high] (calibrate --review), OK iff score <= low, NG
iff score > high and REVIEW between: the doubtful parts go to a person. The defect mask is the anomaly map (at the original image size) above the
calibrated pixel threshold; regions are its 8-connected components of at least `min_area` pixels.
Localisation is reported for NG and REVIEW images only: an OK image has an empty mask and no
regions, so an inspector never sees boxes on a part that passed.
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
class Region:
    """A connected defect region; bbox = [x0, y0, x1, y1], inclusive, in original-image pixels."""

    bbox: list[int]
    area: int
    max_score: float
    mean_score: float

    def to_dict(self) -> dict[str, Any]:
        return {"bbox": self.bbox, "area": self.area, "max_score": self.max_score, "mean_score": self.mean_score}


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
        values = anomaly_map[inside]
        regions.append(Region([x, y, x + w - 1, y + h - 1], area, float(values.max()), float(values.mean())))
    regions.sort(key=lambda r: r.area, reverse=True)
    return mask, regions


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
    Regions are found for NG and REVIEW images (a reviewer needs to see where), never for OK ones."""
    score = check_finite(score, "the model's image score")
    threshold = check_finite(threshold, "the threshold")
    h, w = image.shape[:2]
    amap = model_map if model_map.shape == (h, w) else resize_map(model_map, h, w)
    decided = verdict(score, threshold, review)
    if decided != OK:
        inside = None if roi is None else resize_roi(roi, h, w)
        mask, regions = find_regions(amap if inside is None else np.where(inside, amap, -np.inf), pixel_threshold,
                                     min_area)
    else:
        mask, regions = np.zeros((h, w), dtype=bool), []
    return Prediction(score, threshold, decided, amap, mask, regions, review)
