"""The rules that decide a verdict, each checked against values worked out by hand here (never by
calling the rule under test to get the expected value): the threshold and the band at their
boundaries, what a REVIEW verdict carries, and the score's pooling and reduction."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from surfad.config import ScoreConfig
from surfad.detector import Detector
from surfad.metrics import band_rates, rates_at
from surfad import scoring
from surfad.scoring import ImageScorer, masked_scores, pool_and_reduce, roi_mask, tiled_score_fn
from surfad.verdict import find_regions, flagged, judge, verdict


def test_a_score_equal_to_the_threshold_is_ok() -> None:
    """Broken: `score >= threshold`."""
    above = float(np.nextafter(0.5, 1.0))
    assert verdict(0.5, 0.5) == "OK" and verdict(above, 0.5) == "NG"
    assert flagged([0.5, above, 0.4], 0.5).tolist() == [False, True, False]
    rates = rates_at(np.array([0.5, 0.5, above]), np.array([0, 1, 1]), 0.5)
    assert rates["fpr"] == 0.0 and rates["recall"] == 0.5  # the defect at 0.5 is missed, the good one passes


def test_the_band_at_its_boundaries() -> None:
    """Broken: `score >= high` (a part at high goes NG instead of to a person) or `score < low`."""
    low, high = 0.3, 0.7
    assert [verdict(s, 0.5, [low, high]) for s in (low, float(np.nextafter(low, 1)), high, float(np.nextafter(high, 1)))] \
        == ["OK", "REVIEW", "REVIEW", "NG"]
    rates = band_rates(np.array([0.3, 0.7, 0.7, 0.71]), np.array([1, 0, 1, 1]), low, high)
    assert rates["n_review"] == 2 and rates["n_escapes"] == 1 and rates["n_false_rejects"] == 0


def test_at_the_threshold_through_the_detector(tiny_run, tiny_mvtec) -> None:
    """The rule as inspection applies it, on a real score: the threshold equal to it passes the part."""
    detector = Detector.load(tiny_run())
    image = str(sorted((tiny_mvtec / "test" / "good").iterdir())[0])
    score = detector.predict(image).score
    assert detector.predict(image, threshold=score).verdict == "OK"
    assert detector.predict(image, threshold=float(np.nextafter(score, -np.inf))).verdict == "NG"
    banded = dataclasses.replace(detector.calibration, review=[score - 1.0, score])
    detector.calibration = banded
    assert detector.predict(image).verdict == "REVIEW"  # at high: still for a person
    detector.calibration = dataclasses.replace(banded, review=[score, score + 1.0])
    assert detector.predict(image).verdict == "OK"  # at low: OK


def test_review_verdicts_carry_the_mask_and_regions() -> None:
    """Broken: localisation for NG only (`if decided == NG`), or for OK parts too."""
    image = np.zeros((20, 20, 3), np.uint8)
    amap = np.zeros((20, 20), np.float32)
    amap[5:9, 5:10] = 1.0  # 4 x 5 = 20 pixels above the pixel threshold
    for score, expected in ((0.2, "OK"), (0.5, "REVIEW"), (0.9, "NG")):
        prediction = judge(image, amap, score, 0.5, pixel_threshold=0.5, min_area=4, review=[0.3, 0.7])
        assert prediction.verdict == expected
        assert int(prediction.mask.sum()) == (0 if expected == "OK" else 20)
        assert [r.bbox for r in prediction.regions] == ([] if expected == "OK" else [[5, 5, 9, 8]])


def average_pool_by_hand(amap: np.ndarray, k: int) -> np.ndarray:
    """Mean over the k x k window centred on each pixel, counting only the pixels inside the map."""
    h, w = amap.shape
    r = k // 2
    return np.array([[amap[max(0, y - r):y + r + 1, max(0, x - r):x + r + 1].mean() for x in range(w)]
                     for y in range(h)])


@pytest.mark.parametrize("reduce", ["mean", "max", "topk"])
@pytest.mark.parametrize("pool", [1, 3, 5])
def test_pooling_and_reduction_match_a_computation_by_hand(reduce: str, pool: int) -> None:
    """Broken: pooling that counts the padding (lower scores at the border), no pooling, another
    window, or a reduction over the wrong values (top k+1, the unpooled map)."""
    amap = np.random.default_rng(pool).random((9, 11)).astype(np.float32)
    amap[0, 0] = 5.0  # a corner peak: the padding matters there
    pooled = average_pool_by_hand(amap.astype(np.float64), pool)
    expected = {"mean": pooled.mean(), "max": pooled.max(), "topk": np.sort(pooled.ravel())[-4:].mean()}[reduce]
    rule = ScoreConfig(reduce=reduce, pool=pool, topk=4)
    got = pool_and_reduce(torch.from_numpy(amap)[None, None], rule)
    assert got.shape == (1,) and got.item() == pytest.approx(expected, rel=1e-5)
    assert ImageScorer(rule)(torch.from_numpy(amap)[None, None])[1].item() == pytest.approx(expected, rel=1e-5)
    inside = np.zeros((9, 11), bool)
    inside[:, 6:] = True  # the region of interest: the right part only, the corner peak outside
    within = masked_scores(amap[None], inside, rule)
    values = pooled[inside]
    expected_inside = {"mean": values.mean(), "max": values.max(), "topk": np.sort(values)[-4:].mean()}[reduce]
    assert within[0] == pytest.approx(expected_inside, rel=1e-5)


def test_each_image_of_a_batch_is_scored_alone() -> None:
    """Broken: a reduction over the whole batch (dim 0 and 1), or images mixed by the pooling."""
    maps = torch.zeros(3, 1, 6, 6)
    maps[1, 0, 2, 2] = 9.0
    for reduce, expected in (("max", [0.0, 9.0, 0.0]), ("mean", [0.0, 0.25, 0.0])):
        got = pool_and_reduce(maps, ScoreConfig(reduce=reduce, pool=1))
        assert got.tolist() == pytest.approx(expected)


def test_a_pixel_at_the_pixel_threshold_is_not_a_defect_pixel() -> None:
    """Broken: `map >= pixel_threshold` (a flat map at the threshold would become one big region)."""
    amap = np.full((6, 6), 0.5, np.float32)
    amap[4, 4] = float(np.nextafter(np.float32(0.5), np.float32(1)))
    mask, regions = find_regions(amap, pixel_threshold=0.5, min_area=1)
    assert mask.sum() == 1 and mask[4, 4] and [r.bbox for r in regions] == [[4, 4, 4, 4]]


def test_a_region_of_exactly_min_area_is_kept() -> None:
    """Broken: `area <= min_area` (a region the size of --min-area dropped)."""
    amap = np.zeros((10, 10), np.float32)
    amap[1:3, 1:3] = 1.0  # 4 pixels
    amap[6, 6:9] = 1.0  # 3 pixels
    mask, regions = find_regions(amap, pixel_threshold=0.5, min_area=4)
    assert [r.area for r in regions] == [4] and mask.sum() == 4


def test_a_tiled_models_own_score_is_its_largest_tile_score() -> None:
    """Broken: the tiles' mean (a defect in one tile of many would be diluted) or the first tile's."""
    tiles_seen = {"n": 0}

    def numbered(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        first = tiles_seen["n"]
        tiles_seen["n"] += len(batch)
        own = np.zeros(len(batch), np.float32)
        own[(np.arange(first, first + len(batch)) == 1)] = 7.0  # the second tile of the image scores 7
        return np.zeros((len(batch), 16, 16), np.float32), own

    _, scores = tiled_score_fn(numbered, ScoreConfig(reduce="model"), tile=16, stride=10)(np.zeros((1, 1, 16, 36), np.float32))
    assert tiles_seen["n"] == 3 and scores.tolist() == [7.0]


def reduce_by_hand(values: np.ndarray, rule: ScoreConfig) -> float:
    """The score rule's reduction of the pooled values it is given."""
    if rule.reduce == "mean":
        return float(values.mean())
    if rule.reduce == "topk":
        return float(np.sort(values)[-min(rule.topk, values.size):].mean())
    return float(values.max())


@pytest.mark.parametrize("reduce", ["max", "mean"])
def test_the_roi_mask_scores_the_inside_only_even_below_zero(reduce: str) -> None:
    """A map below zero everywhere (a discriminator's logits): zero outside must not become the
    score, nor dilute a mean. Broken: the score taken over the whole masked map."""
    rule = ScoreConfig(smoothing_sigma=0.0, pool=1, reduce=reduce)
    roi = np.zeros((8, 8), bool)
    roi[:, :4] = True
    maps = -1.0 - np.random.default_rng(0).random((2, 8, 8), dtype=np.float32)
    masked, scores = roi_mask(rule, roi)(maps)
    assert not masked[:, :, 4:].any()
    expected = [getattr(np, reduce)(m[:, :4]) for m in maps]
    assert scores == pytest.approx(expected, rel=1e-6)


def test_the_roi_mask_resizes_once_per_shape_and_keeps_few(monkeypatch: pytest.MonkeyPatch) -> None:
    """Resized once per map shape, and at most ROI_SHAPES_KEPT shapes kept (tiled images of ever new
    sizes). Broken: resized per call, or the cache never emptied."""
    made = []
    resize = scoring.resize_roi
    monkeypatch.setattr(scoring, "resize_roi", lambda roi, h, w: made.append((h, w)) or resize(roi, h, w))
    mask = roi_mask(ScoreConfig(smoothing_sigma=0.0, pool=1, reduce="max"), np.ones((8, 8), bool))
    mask(np.ones((1, 8, 8), np.float32))
    mask(np.ones((1, 8, 8), np.float32))
    assert made == [(8, 8)]
    for side in range(9, 9 + scoring.ROI_SHAPES_KEPT):
        mask(np.ones((1, side, side), np.float32))
    mask(np.ones((1, 8, 8), np.float32))
    assert made.count((8, 8)) == 2  # dropped with the others once ROI_SHAPES_KEPT more shapes came


@pytest.mark.parametrize("model", ["unet_vae", "padim"])
def test_with_a_roi_the_map_is_zero_outside_and_the_score_sees_the_inside_only(model: str, tiny_run, tiny_mvtec,
                                                                               tmp_path) -> None:
    """Broken: the map kept outside the region at the model's resolution, or the score taken over the
    whole map (the input fill makes what lies outside harmless to the content, but a fill's own
    texture can still raise the map there, and it must not reach the verdict)."""
    import cv2

    from surfad.data.roi import load_roi, resize_roi

    roi_path = tmp_path / "roi.png"
    half = np.zeros((64, 64), np.uint8)
    half[:, :32] = 255
    cv2.imwrite(str(roi_path), half)
    detector = Detector.load(tiny_run(model), roi=roi_path, calibrated=False)
    image = cv2.cvtColor(cv2.imread(str(sorted((tiny_mvtec / "test").glob("[!g]*/*.png"))[0])), cv2.COLOR_BGR2RGB)
    batch = detector.preprocess(image)[None]
    passes = [detector.score_batch(batch)]
    if model == "padim":  # it explains from the scoring pass: that pass's map and score follow the same rule
        passes.append(detector.describe_fn(batch)[:2])
    for maps, scores in passes:
        inside = resize_roi(load_roi(roi_path), *maps.shape[1:])
        assert inside.any() and not inside.all()
        assert not maps[0][~inside].any()  # zero outside, at the model's resolution
        rule = detector.config.score
        pooled = average_pool_by_hand(maps[0].astype(np.float64), rule.pool)
        assert scores[0] == pytest.approx(reduce_by_hand(pooled[inside], rule), rel=1e-5)
        assert maps[0][inside].any()  # something to score: the check is not vacuous
