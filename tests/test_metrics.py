"""Metrics: agreement with sklearn and brute force, and AUPRO on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from surfad.errors import SurfadError
from surfad.metrics import (
    aupro,
    f1_max,
    image_metrics,
    operating_points,
    per_type_auroc,
    pixel_metrics,
)


def _f1_at(scores: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    ng = scores > threshold
    tp = np.sum(ng & (labels == 1))
    return 2 * tp / (ng.sum() + labels.sum())


def _random_scores(seed: int, n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.4).astype(int)
    scores = rng.normal(size=n) + labels
    scores[::7] = np.round(scores[::7], 1)  # some ties
    return scores, labels


@pytest.mark.parametrize("seed", range(5))
def test_image_metrics_agree_with_sklearn(seed: int) -> None:
    scores, labels = _random_scores(seed)
    m = image_metrics(scores, labels, threshold=0.5)
    assert m["image_auroc"] == pytest.approx(roc_auc_score(labels, scores))
    assert m["image_ap"] == pytest.approx(average_precision_score(labels, scores))
    ng = scores > 0.5
    assert m["recall"] == pytest.approx(np.mean(ng[labels == 1]))
    assert m["fpr"] == pytest.approx(np.mean(ng[labels == 0]))
    assert m["precision"] == pytest.approx(np.mean(labels[ng]))
    assert m["accuracy"] == pytest.approx(np.mean(ng == labels.astype(bool)))
    assert (m["n_good"], m["n_defect"]) == (int(np.sum(labels == 0)), int(labels.sum()))
    assert m["threshold"] == 0.5


def test_image_metrics_verdict_is_strictly_greater() -> None:
    m = image_metrics([0.2, 0.5, 0.5, 0.9], [0, 0, 1, 1], threshold=0.5)
    # 0.5 is not > 0.5: only 0.9 is NG -> recall 1/2, no false positive, precision 1.
    assert (m["recall"], m["fpr"], m["precision"], m["accuracy"]) == (0.5, 0.0, 1.0, 0.75)


def test_image_metrics_undefined_values_are_nan() -> None:
    good_only = image_metrics([0.1, 0.2, 0.3], [0, 0, 0], threshold=1.0)
    for key in ("image_auroc", "image_ap", "image_f1_max", "precision", "recall"):
        assert math.isnan(good_only[key]), key
    assert good_only["fpr"] == 0.0 and good_only["accuracy"] == 1.0
    defect_only = image_metrics([0.1, 0.2], [1, 1], threshold=0.15)
    assert math.isnan(defect_only["image_auroc"]) and math.isnan(defect_only["fpr"])
    assert defect_only["recall"] == 0.5


def test_image_metrics_rejects_bad_input() -> None:
    with pytest.raises(SurfadError, match="labels"):
        image_metrics([0.1, 0.2], [0, 2], threshold=0.1)
    with pytest.raises(SurfadError, match="labels"):
        image_metrics([0.1, 0.2], [0], threshold=0.1)
    with pytest.raises(SurfadError, match="NaN"):
        image_metrics([0.1, float("nan")], [0, 1], threshold=0.1)


@pytest.mark.parametrize("seed", range(8))
def test_f1_max_matches_brute_force(seed: int) -> None:
    scores, labels = _random_scores(seed, n=40)
    best, threshold = f1_max(scores, labels)
    values = np.unique(scores)
    candidates = np.concatenate([[values[0] - 1], (values[1:] + values[:-1]) / 2, [values[-1]]])
    assert best == pytest.approx(max(_f1_at(scores, labels, t) for t in candidates))
    # The threshold reproduces that F1 under the `score > threshold` rule.
    assert _f1_at(scores, labels, threshold) == pytest.approx(best)


def test_f1_max_ties_go_to_the_highest_threshold() -> None:
    """Broken: among equally good thresholds, the lowest (more parts called NG for the same F1)."""
    # NG = {0.9}: F1 = 2/(1 + 0 + 2) = 2/3; NG = all four: F1 = 4/(4 + 2) = 2/3 too; between, lower.
    f1, threshold = f1_max([0.9, 0.8, 0.7, 0.6], [1, 0, 0, 1])
    assert f1 == pytest.approx(2 / 3) and threshold == pytest.approx(0.85)


def test_f1_max_threshold_is_midpoint_between_scores() -> None:
    # Best split: NG = {0.8, 0.9} (F1 = 1); midway between 0.8 and the next lower score 0.4.
    assert f1_max([0.1, 0.4, 0.8, 0.9], [0, 0, 1, 1]) == (1.0, pytest.approx(0.6))
    # A tie between a good and a defect cannot be split: F1 = 2*2/(3+2) = 0.8, NG = {0.5, 0.5, 0.9}.
    assert f1_max([0.1, 0.5, 0.5, 0.9], [0, 0, 1, 1]) == (pytest.approx(0.8), pytest.approx(0.3))
    assert all(math.isnan(v) for v in f1_max([0.1, 0.2], [0, 0]))


def test_f1_max_threshold_splits_adjacent_float32_scores() -> None:
    low = np.float32(1.0)
    high = np.nextafter(low, np.float32(2))  # no float32 strictly between the two
    scores = np.array([low, high], dtype=np.float32)
    best, threshold = f1_max(scores, [0, 1])
    assert best == 1.0
    assert list(scores > threshold) == [False, True]  # float32 comparison
    assert list(scores.astype(np.float64) > threshold) == [False, True]


def test_operating_points_cover_no_ng_to_all_ng() -> None:
    thresholds, tp, fp = operating_points([0.3, 0.1, 0.3, 0.7], [1, 0, 0, 1])
    # 0.7 (nothing NG); midway 0.7/0.3 -> 0.5; 0.3/0.1 -> 0.2; below 0.1 by half the last gap -> 0.0
    np.testing.assert_allclose(thresholds, [0.7, 0.5, 0.2, 0.0], atol=1e-12)
    assert tp.tolist() == [0, 1, 2, 2] and fp.tolist() == [0, 0, 1, 2]


# ---------------------------------------------------------------- AUPRO on hand-computed cases


def test_aupro_perfect_map_on_one_2x2_image() -> None:
    mask = np.array([[[1, 0], [0, 0]]], dtype=bool)
    perfect = mask.astype(float)
    # Threshold between 0 and 1: the region is fully covered (PRO 1) with FPR 0 -> area 0.3 / 0.3.
    assert aupro(perfect, mask) == pytest.approx(1.0)


def test_aupro_region_half_covered_at_fpr_zero() -> None:
    # One 1x4 image: a 2-pixel region (values 0.9, 0.1) and 2 background pixels (0.5, 0.2).
    # t below 0.9: PRO 1/2, FPR 0; below 0.5: FPR 1/2; below 0.2: FPR 1; below 0.1: PRO 1.
    # PRO stays 0.5 on FPR [0, 0.3]: area 0.5 * 0.3 = 0.15, / 0.3 = 0.5.
    maps = np.array([[[0.9, 0.1, 0.5, 0.2]]])
    masks = np.array([[[1, 1, 0, 0]]], dtype=bool)
    assert aupro(maps, masks) == pytest.approx(0.5)


def test_aupro_interpolates_at_the_fpr_limit() -> None:
    # One 1x7 image: region = first 2 pixels (0.7, 0.5); background = 0.9, 0.5, 0.3, 0.2, 0.1 (5 px).
    # Curve points (FPR, PRO): (0, 0) -> below 0.9: (0.2, 0) -> below 0.7: (0.2, 0.5)
    #   -> below 0.5 (a background and a region pixel tie): (0.4, 1.0), a diagonal segment.
    # PRO at FPR 0.3 on that diagonal: 0.5 + (1.0 - 0.5) * (0.3 - 0.2) / (0.4 - 0.2) = 0.75.
    # Area: 0 on [0, 0.2], then (0.5 + 0.75) / 2 * 0.1 = 0.0625 -> 0.0625 / 0.3 = 5/24.
    maps = np.array([[[0.7, 0.5, 0.9, 0.5, 0.3, 0.2, 0.1]]])
    masks = np.array([[[1, 1, 0, 0, 0, 0, 0]]], dtype=bool)
    assert aupro(maps, masks) == pytest.approx(5 / 24)


def test_aupro_averages_regions_not_pixels_and_uses_8_connectivity() -> None:
    # Image 1: pixels (0,0) and (1,1) touch diagonally -> ONE region of 2 pixels, fully detected.
    # Image 2: one 1-pixel region, never above any background pixel (value 0 = lowest).
    # At FPR 0 PRO = (1 + 0) / 2 = 0.5 (per pixel it would be 2/3); it stays 0.5 until the
    # background is all above threshold (FPR 1), so the area is 0.5 * 0.3 / 0.3 = 0.5.
    maps = [np.array([[1.0, 0.2], [0.2, 1.0]]), np.array([[0.0, 0.3], [0.3, 0.3]])]
    masks = [np.array([[1, 0], [0, 1]], bool), np.array([[1, 0], [0, 0]], bool)]
    assert aupro(maps, masks) == pytest.approx(0.5)


@pytest.mark.parametrize("limit", [0.3, 1.0])
def test_aupro_constant_map_is_half_the_limit(limit: float) -> None:
    # All pixels tie: the curve jumps from (0, 0) to (1, 1), so PRO = FPR on [0, limit]:
    # area limit^2 / 2, normalised: limit / 2 (0.15 for the default 0.3).
    masks = np.zeros((3, 8, 8), bool)
    masks[0, 2:5, 2:5] = True
    masks[2, 6:, :3] = True
    assert aupro(np.full(masks.shape, 0.4), masks, fpr_limit=limit) == pytest.approx(limit / 2)
    assert aupro(np.full(masks.shape, 0.4), masks, fpr_limit=limit, num_thresholds=50) == pytest.approx(limit / 2)


def _random_maps(seed: int, n: int = 4, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), bool)
    for i in range(n - 1):
        y, x = rng.integers(0, size - 4, size=2)
        masks[i, y : y + rng.integers(1, 5), x : x + rng.integers(1, 5)] = True
    masks[0, -2:, -2:] = True  # a second region in image 0
    maps = rng.random(masks.shape) + 0.6 * masks
    return np.round(maps, 2), masks  # rounding makes ties between regions and background


def _aupro_brute_force(maps: np.ndarray, masks: np.ndarray, limit: float) -> float:
    """Straight from the definition: every distinct threshold, then the clipped polyline area."""
    regions = []  # (image index, region pixels)
    for i, mask in enumerate(masks):
        labelled, count = ndimage.label(mask, np.ones((3, 3)))
        regions += [(i, labelled == r) for r in range(1, count + 1)]
    background = ~masks
    points = [(0.0, 0.0)]
    for v in np.unique(maps)[::-1]:
        on = maps >= v  # i.e. map > t for a t just below v
        pro = np.mean([on[i][r].mean() for i, r in regions])
        points.append((on[background].mean(), pro))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 >= limit:
            break
        if x1 > limit:
            y1, x1 = y0 + (y1 - y0) * (limit - x0) / (x1 - x0), limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / limit


@pytest.mark.parametrize("seed", range(4))
def test_aupro_exact_matches_brute_force_and_binned_is_close(seed: int) -> None:
    maps, masks = _random_maps(seed)
    exact = aupro(maps, masks)
    assert exact == pytest.approx(_aupro_brute_force(maps, masks, 0.3), abs=1e-12)
    assert aupro(maps, masks, num_thresholds=500) == pytest.approx(exact, abs=0.01)
    assert aupro(list(maps), list(masks)) == exact  # list input


def test_aupro_perfect_random_map_is_one_and_undefined_cases_are_nan() -> None:
    _, masks = _random_maps(0)
    perfect = np.where(masks, 1.0 + np.random.default_rng(1).random(masks.shape), 0.5)
    assert aupro(perfect, masks) == pytest.approx(1.0)
    assert math.isnan(aupro(perfect, np.zeros_like(masks)))  # no region
    assert math.isnan(aupro(perfect, np.ones_like(masks)))  # no background
    with pytest.raises(SurfadError, match="fpr_limit"):
        aupro(perfect, masks, fpr_limit=0)
    with pytest.raises(SurfadError, match=r"masks\[0\]"):
        aupro(perfect, masks[:, :8])
    perfect[1, 0, 0] = np.nan
    with pytest.raises(SurfadError, match=r"maps\[1\]: contains NaN"):
        aupro(perfect, masks)


def test_pixel_metrics_agree_with_sklearn_and_subsample() -> None:
    maps, masks = _random_maps(2)
    m = pixel_metrics(maps, masks, max_pixels=None)
    assert m["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))
    assert m["pixel_ap"] == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()))
    assert m["aupro"] == aupro(maps, masks)
    sub = pixel_metrics(maps, masks, max_pixels=600, seed=3)
    assert sub == pixel_metrics(maps, masks, max_pixels=600, seed=3)  # seeded
    assert sub["pixel_auroc"] == pytest.approx(m["pixel_auroc"], abs=0.1)
    assert sub["aupro"] == m["aupro"]  # AUPRO never subsamples
    empty = pixel_metrics(maps, np.zeros_like(masks))
    assert all(math.isnan(v) for v in empty.values())


def test_per_type_auroc_by_hand():
    scores = [0.1, 0.2, 0.3, 0.25, 0.9, 0.05, 0.15]
    labels = [0, 0, 0, 1, 1, 1, 1]
    types = ["good", "good", "good", "crack", "crack", "pit", "pit"]
    # crack 0.25 beats 2 of 3 good, 0.9 beats all: (2 + 3) / 6. pit 0.05 beats none, 0.15 beats one: 1 / 6.
    assert per_type_auroc(scores, labels, types) == pytest.approx({"crack": 5 / 6, "pit": 1 / 6})
    assert per_type_auroc([0.5, 0.6], [1, 1], ["crack", "pit"]) == {}  # no good images
    with pytest.raises(ValueError, match="types"):
        per_type_auroc(scores, labels, types[:-1])
