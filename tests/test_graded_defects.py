"""The graded validation defects: each kind and level drawn as declared (size, contrast), nothing
changed outside its mask, the validation set balanced over kinds and levels, inside the ROI."""

from __future__ import annotations

from collections import Counter

import cv2
import numpy as np
import pytest
from skimage.morphology import skeletonize

from surfad.data.graded_defects import GRADES, KINDS, LEVELS, graded_defect, graded_plan, measured_contrast
from surfad.data.survey import region_widths


def surface(seed: int, size: int = 128, channels: int = 1) -> np.ndarray:
    """A mid-grey textured surface (C, S, S) in [0, 1]."""
    noise = np.random.default_rng(seed).normal(0.45, 0.08, (size, size)).astype(np.float32)
    grain = cv2.GaussianBlur(noise, (0, 0), 1.0)
    return np.clip(np.repeat(grain[None], channels, axis=0), 0, 1)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("level", LEVELS)
def test_each_kind_and_level_is_drawn_within_its_declared_ranges(kind: str, level: str) -> None:
    """Broken: a level whose contrast or size leaves its range (validation would no longer be graded),
    or a defect that changes pixels outside its mask."""
    grade = GRADES[kind][level]
    rng = np.random.default_rng(1)
    sizes = []
    for i in range(12):
        image = surface(i, channels=3 if i % 2 else 1)
        out, mask = graded_defect(image, kind, level, rng)
        assert out.shape == image.shape and out.dtype == np.float32 and mask.any()
        low, high = grade.contrast
        assert low * 0.97 <= measured_contrast(image, out, mask) <= high * 1.03
        if kind != "crack":  # a crack's edge pixels are partly covered: they blend in, outside the mask
            assert np.array_equal(out[:, ~mask], image[:, ~mask])
        if kind == "crack":
            sizes.append(mask.sum() / skeletonize(mask).sum())  # mean width: area over length
        elif kind == "pit":
            sizes.append(region_widths(mask).max() / 2)  # radius
        else:
            sizes.append(mask.mean())  # share of the image
    low, high = grade.size
    if kind in ("crack", "pit"):  # in pixels, measured on a pixel grid
        assert low - 0.75 <= np.median(sizes) <= high + 1.0, sizes
    else:
        assert all(low * 0.9 <= s <= high * 1.1 for s in sizes), sizes


def test_harder_levels_are_thinner_and_fainter() -> None:
    for kind in KINDS:
        contrasts = [GRADES[kind][level].contrast for level in LEVELS]
        sizes = [GRADES[kind][level].size for level in LEVELS]
        assert contrasts == sorted(contrasts, reverse=True) and sizes == sorted(sizes, reverse=True)


def test_a_defect_stays_inside_the_region_it_may_lie_in() -> None:
    inside = np.zeros((128, 128), bool)
    inside[:, :40] = True
    rng = np.random.default_rng(0)
    for kind in KINDS:
        for _ in range(5):
            image = surface(3)
            out, mask = graded_defect(image, kind, "medium", rng, inside)
            assert mask.any() and not mask[:, 40:].any() and np.array_equal(out[:, :, 40:], image[:, :, 40:])


def test_the_plan_balances_kinds_and_levels() -> None:
    plan = graded_plan(30, 2)
    assert len(plan) == 60 and Counter(i for i, _, _ in plan) == {i: 2 for i in range(30)}
    assert set(Counter(k for _, k, _ in plan).values()) == {15}
    assert set(Counter((k, lvl) for _, k, lvl in plan).values()) == {5}
