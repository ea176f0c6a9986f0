"""Threshold calibration: turn validation scores into the image and pixel thresholds of a bundle.

The verdict rule is surfad.verdict's: NG iff ``score > threshold`` (strictly greater), or the OK /
REVIEW / NG band when one is calibrated. A :class:`Calibration` is saved as calibration.json next
to the model weights, with the region of interest its thresholds were chosen in and the SHA-256 of
the weights that made the scores, so thresholds are never used with another run's weights.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from surfad.config import from_dict
from surfad.errors import SurfadError
from surfad.metrics import (
    check_labels,
    check_maps,
    check_maps_masks,
    check_scores,
    f1_max,
    operating_points,
    rates_at,
)
from surfad.utils import atomic_write_json, read_json

DEFECT_STRATEGY = "f1"  # the default rule when the calibration images include real defects
GOOD_ONLY_STRATEGY = "fpr:0.01"  # and when they are all good
STRATEGIES_HELP = 'valid strategies: "f1", "youden", "recall:X" with 0 < X <= 1, "fpr:X" with 0 <= X < 1'
NO_DEFECTS_HINT = f"use --strategy {GOOD_ONLY_STRATEGY} (needs only good images)"
PIXEL_SAMPLE = 2_000_000  # pixels used to choose the pixel threshold (seeded subsample above this)
GOOD_PIXEL_QUANTILE = 0.999  # pixel threshold without defect masks: this quantile of good pixels


@dataclass
class Calibration:
    """Thresholds chosen on one split, with the statistics of its good-image scores."""

    threshold: float  # image score threshold: NG iff score > threshold
    strategy: str  # as given, e.g. "f1", "youden", "recall:0.99", "fpr:0.01"
    pixel_threshold: float  # threshold for defect masks/regions in anomaly maps
    split: str  # which split/data it came from (free text)
    n_good: int
    n_defect: int
    normal_stats: dict[str, float]  # mean, std, min, max, p50, p90, p95, p99 of good scores ({} if none)
    review: list[float] | None = None  # [low, high]: OK iff score <= low, NG iff score > high, else REVIEW
    review_strategy: str | None = None  # the two rules (or numbers) that chose the band, "LOW,HIGH"
    roi: str | None = None  # data.roi.roi_fingerprint of the region scored ("none": whole image; None: not recorded)
    # SHA-256 of the weights that made the scores: one for a run, one per member (ensemble.json's order) for
    # a fused detector; None: not recorded (calibrated before weights were recorded; trusted)
    weights_sha256: list[str] | None = None

    def __post_init__(self) -> None:
        """A non-finite threshold would pass (NaN) or fail (inf) every part without a word: refused."""
        if self.weights_sha256 is not None and not (self.weights_sha256 and all(
                len(h) == 64 and all(c in "0123456789abcdef" for c in h) for h in self.weights_sha256)):
            raise SurfadError(f"calibration.weights_sha256={self.weights_sha256}: expected a list of SHA-256 hex digests")
        for name in ("threshold", "pixel_threshold"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise SurfadError(f"calibration.{name}={value}: must be a finite number")
        if self.review is not None:
            if len(self.review) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in self.review):
                raise SurfadError(f"calibration.review={self.review}: must be two finite numbers [low, high]")
            if self.review[0] > self.review[1]:
                raise SurfadError(f"calibration.review={self.review}: the low threshold is above the high one")
        bad = {k: v for k, v in self.normal_stats.items() if not (isinstance(v, (int, float)) and math.isfinite(v))}
        if bad:
            raise SurfadError(f"calibration.normal_stats: non-finite values {bad}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        """Build from a dict as written by to_dict; errors name the missing or wrong field."""
        if not isinstance(d, dict):
            raise SurfadError(f"calibration: expected a mapping, got {type(d).__name__}")
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in d and f.default is dataclasses.MISSING]
        if missing:
            raise SurfadError(f"calibration: missing field(s) {', '.join(missing)}")
        return from_dict(cls, d, "calibration")

    def save(self, path: str | Path) -> None:
        """Write as JSON, atomically."""
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        """Read a JSON file written by save; errors name the file."""
        return read_json(path, "calibration", cls.from_dict)


def default_strategy(has_defects: bool) -> str:
    """The rule training and `surfad fuse` calibrate with: f1 on real defects, else fpr:0.01 on good images."""
    return DEFECT_STRATEGY if has_defects else GOOD_ONLY_STRATEGY


def parse_strategy(text: str) -> tuple[str, float | None]:
    """Split a strategy string into its name and parameter.

    "f1" and "youden" have no parameter; "recall:X" needs 0 < X <= 1 and "fpr:X" needs
    0 <= X < 1. Anything else raises SurfadError listing the valid forms.
    """
    name, sep, arg = text.strip().partition(":")
    if not sep and name in ("f1", "youden"):
        return name, None
    if sep and name in ("recall", "fpr"):
        try:
            value = float(arg)
        except ValueError:
            value = math.nan
        if (name == "recall" and 0 < value <= 1) or (name == "fpr" and 0 <= value < 1):
            return name, value
    raise SurfadError(f"strategy: {text!r} is not valid; {STRATEGIES_HELP}")


def choose_threshold(scores: object, labels: object, strategy: str) -> float:
    """Image score threshold for NG iff ``score > threshold``, chosen by `strategy`.

    - "f1": the threshold of maximum F1 (:func:`surfad.metrics.f1_max`).
    - "youden": maximum Youden's J = TPR - FPR (the highest threshold among ties).
    - "recall:X": the highest operating point whose recall is at least X, i.e. the one with the
      fewest NG verdicts that still catches a share X of the defects.
    - "fpr:X": uses the good scores only: a threshold that leaves at most floor(X * n_good) good
      scores above it. With the good scores sorted ascending and k = n_good - 1 - floor(X * n_good),
      it lies midway between score k and the next higher distinct score (above the highest score,
      the gap below it is mirrored), so score k and its ties are OK and no image sits exactly on
      the threshold, where a 1e-7 difference between runtimes could flip its verdict.

    f1, youden and recall thresholds lie midway between the lowest NG score and the next lower
    score (see :func:`surfad.metrics.operating_points`). Raises SurfadError when the data cannot
    support the strategy (no defects for f1/youden/recall, no good images for youden/fpr).
    """
    name, value = parse_strategy(strategy)
    s = check_scores(scores)
    y = check_labels(labels, s.size)
    n_defect = int(y.sum())
    n_good = s.size - n_defect
    if name in ("youden", "fpr") and n_good == 0:
        raise SurfadError(f"strategy {strategy}: needs good images, but the calibration data has none")
    if name in ("f1", "youden", "recall") and n_defect == 0:
        raise SurfadError(
            f"strategy {strategy}: needs defective images, but the calibration data has only good ones; "
            + NO_DEFECTS_HINT
        )
    if name == "fpr":
        good = np.sort(s[~y])
        allowed = min(math.floor(value * n_good + 1e-9), n_good - 1)  # tolerance: 0.29 * 100 is 28.999...
        kept = good[n_good - 1 - allowed]
        above = good[good > kept]
        if above.size:
            return float(kept + (above[0] - kept) / 2)
        below = good[good < kept]
        gap = kept - below[-1] if below.size else max(abs(float(kept)), 1.0)
        return float(kept + gap / 2)
    if name == "f1":
        return f1_max(s, y)[1]
    thresholds, tp, fp = operating_points(s, y)
    if name == "youden":
        return float(thresholds[int(np.argmax(tp / n_defect - fp / n_good))])
    needed = math.ceil(value * n_defect - 1e-9)  # defects that must be above the threshold
    return float(thresholds[int(np.argmax(tp >= needed))])


TRADE_OFF_STRATEGIES = ("fpr:0", "fpr:0.01", "fpr:0.05", "fpr:0.1", "recall:0.9", "recall:0.95", "recall:0.99",
                        "recall:1", "f1", "youden")


def trade_offs(scores: object, labels: object,
               strategies: tuple[str, ...] = TRADE_OFF_STRATEGIES) -> dict[str, dict[str, float]]:
    """What each strategy would choose on these scores, and what its threshold gives on them.

    Returns {strategy: {"threshold", "fpr", "recall", "precision"}} (precision nan when nothing is
    NG); empty unless both good and defective images are present. Every figure is read off the same
    data the thresholds were chosen on, so it shows the trade-off of that data: a threshold to deploy
    is calibrated on other images than those it is measured on.
    """
    s = check_scores(scores)
    y = check_labels(labels, s.size)
    if y.all() or not y.any():
        return {}
    table = {}
    for strategy in strategies:
        threshold = choose_threshold(s, y, strategy)
        rates = rates_at(s, y, threshold)
        table[strategy] = {"threshold": threshold, **{k: rates[k] for k in ("fpr", "recall", "precision")}}
    return table


def pixel_threshold(maps: object, masks: object | None, labels: object, seed: int = 0,
                    valid: np.ndarray | None = None) -> float:
    """Threshold on anomaly-map values that marks defect pixels (``map > threshold``).

    With ground truth (any mask pixel set): the threshold of maximum pixel F1 over the pixels
    of all images, on a seeded uniform subsample of 2,000,000 pixels when there are more.
    Without (masks None or all empty, e.g. good-only data): the 99.9% quantile (linear
    interpolation) of the good images' pixel values, i.e. about 0.1% of normal pixels exceed it.

    maps: (N, H, W) floats; masks: (N, H, W) bools or None; labels: (N,) with 1 = defect;
    valid: (H, W) bools, the pixels that count (a region of interest), or None for all.
    """
    map_list = check_maps(maps)
    if valid is not None:  # only the pixels inside the region of interest
        map_list = [m[valid][None] for m in map_list]
        masks = None if masks is None else [np.asarray(k)[valid][None] for k in masks]
    y = check_labels(labels, len(map_list))
    if masks is not None:
        _, mask_list = check_maps_masks(map_list, masks)
        if any(k.any() for k in mask_list):
            values = np.concatenate([m.ravel() for m in map_list])
            truth = np.concatenate([k.ravel() for k in mask_list])
            if values.size > PIXEL_SAMPLE:
                keep = np.random.default_rng(seed).choice(values.size, size=PIXEL_SAMPLE, replace=False)
                values, truth = values[keep], truth[keep]
            return f1_max(values, truth)[1]
    good = [m.ravel() for m, label in zip(map_list, y) if not label]
    if not good:
        raise SurfadError(
            "pixel threshold: needs defect masks or good images, but the calibration data has neither"
        )
    return float(np.quantile(np.concatenate(good), GOOD_PIXEL_QUANTILE))


def normal_stats(good_scores: np.ndarray) -> dict[str, float]:
    """Summary of the good images' scores (empty dict without good images)."""
    if good_scores.size == 0:
        return {}
    p50, p90, p95, p99 = np.percentile(good_scores, [50, 90, 95, 99])
    return {
        "mean": float(good_scores.mean()),
        "std": float(good_scores.std()),
        "min": float(good_scores.min()),
        "max": float(good_scores.max()),
        "p50": float(p50),
        "p90": float(p90),
        "p95": float(p95),
        "p99": float(p99),
    }


def review_band(scores: object, labels: object, rules: str) -> list[float]:
    """[low, high] thresholds of a review band from "LOW,HIGH": each a strategy (see choose_threshold)
    or a number, e.g. "recall:0.995,fpr:0.005" (OK below a threshold that still catches 99.5% of the
    defects, NG above one that calls at most 0.5% of good parts NG) or "0.3,0.7". Rules that would
    cross (low above high) are an error."""
    parts = [p.strip() for p in rules.split(",")]
    if len(parts) != 2 or not all(parts):
        raise SurfadError(f"--review {rules!r}: expected LOW,HIGH, e.g. recall:0.995,fpr:0.005 or 0.3,0.7")
    numbers = [_number(p) for p in parts]
    band = [n if n is not None else choose_threshold(scores, labels, p) for n, p in zip(numbers, parts)]
    if band[0] > band[1]:
        raise SurfadError(f"--review {rules}: the low threshold {band[0]:.6g} ({parts[0]}) is above the high one "
                          f"{band[1]:.6g} ({parts[1]}) on this data; choose a lower rule for LOW (e.g. a higher "
                          "recall) or a stricter one for HIGH (a lower fpr)")
    return band


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    if not math.isfinite(value):
        raise SurfadError(f"--review: {text} is not a finite threshold")
    return value


def calibrate(
    scores: object, labels: object, maps: object, masks: object | None, strategy: str, split: str,
    valid: np.ndarray | None = None, review: str | None = None, roi_key: str | None = None,
    weights_sha256: list[str] | None = None,
) -> Calibration:
    """Choose image and pixel thresholds on one split (see choose_threshold, pixel_threshold), and the
    review band when `review` gives its rules (see review_band); roi_key: the fingerprint of the region
    of interest the scores were computed in, kept so the thresholds are not used with another;
    weights_sha256: the hashes of the weights that made the scores, kept for the same reason."""
    s = check_scores(scores)
    y = check_labels(labels, s.size)
    threshold = choose_threshold(s, y, strategy)
    return Calibration(
        threshold=threshold,
        strategy=strategy,
        pixel_threshold=pixel_threshold(maps, masks, y, valid=valid),
        split=split,
        n_good=int((~y).sum()),
        n_defect=int(y.sum()),
        normal_stats=normal_stats(s[~y].astype(np.float64)),
        review=None if review is None else review_band(s, y, review),
        review_strategy=review,
        roi=roi_key,
        weights_sha256=weights_sha256,
    )
