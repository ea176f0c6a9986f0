import numpy as np
import pytest
import torch

from surfad.config import ScoreConfig
from surfad.scoring import ImageScorer
from surfad.verdict import find_regions


def test_regions_boxes_areas_and_min_area():
    amap = np.zeros((20, 30), dtype=np.float32)
    amap[2:6, 3:10] = 0.8  # 4 x 7 = 28 px
    amap[4, 5] = 0.9
    amap[15:17, 20:22] = 0.6  # 4 px, below min_area
    mask, regions = find_regions(amap, pixel_threshold=0.5, min_area=5)
    assert len(regions) == 1
    r = regions[0]
    assert r.bbox == [3, 2, 9, 5]  # inclusive corners
    assert r.area == 28 and mask.sum() == 28
    assert r.max_score == pytest.approx(0.9)
    assert r.mean_score == pytest.approx((27 * 0.8 + 0.9) / 28)
    _, both = find_regions(amap, pixel_threshold=0.5, min_area=1)
    assert [x.area for x in both] == [28, 4]  # largest first


def test_diagonal_pixels_are_one_region():
    amap = np.eye(6, dtype=np.float32)
    _, regions = find_regions(amap, 0.5, 1)
    assert len(regions) == 1 and regions[0].bbox == [0, 0, 5, 5]


def test_scorer_reductions():
    amap = torch.zeros(1, 1, 8, 8)
    amap[0, 0, 0, :4] = torch.tensor([4.0, 3.0, 2.0, 1.0])
    mean = ImageScorer(ScoreConfig(reduce="mean"))(amap)[1]
    top = ImageScorer(ScoreConfig(reduce="topk", topk=2))(amap)[1]
    peak = ImageScorer(ScoreConfig(reduce="max"))(amap)[1]
    assert mean.item() == pytest.approx(10 / 64)
    assert top.item() == pytest.approx(3.5)
    assert peak.item() == pytest.approx(4.0)


def test_scorer_smoothing_preserves_mass_and_shape():
    amap = torch.zeros(1, 1, 21, 21)
    amap[0, 0, 10, 10] = 1.0
    smoothed, score = ImageScorer(ScoreConfig(smoothing_sigma=1.5, reduce="max"))(amap)
    assert smoothed.shape == amap.shape
    assert smoothed.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert score.item() < 0.2 and smoothed[0, 0, 10, 10] == smoothed.max()
