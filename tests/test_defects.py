"""Synthetic defects: Perlin noise and masks, texture sources, blending only inside the mask, preview."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from surfad.data.defects import (
    SURFACE_DEFECTS,
    TEXTURE_OPS,
    DefectSynthesizer,
    augment_texture,
    perlin_mask,
    perlin_noise,
    procedural_texture,
    write_defect_preview,
)
from surfad.errors import SurfadError


def test_perlin_noise_shape_range_and_determinism():
    a = perlin_noise((40, 24), (4, 3), np.random.default_rng(1))  # shape not a multiple of res
    b = perlin_noise((40, 24), (4, 3), np.random.default_rng(1))
    assert a.shape == (40, 24) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert np.abs(a).max() <= 1.5 and a.std() > 0.05
    # gradient noise is zero on the lattice corners
    assert a[0, 0] == pytest.approx(0.0, abs=1e-6) and a[10, 8] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("size", [8, 32, 128])
def test_perlin_mask_non_empty_and_binary(size):
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = perlin_mask(size, rng)
        assert mask.shape == (size, size) and mask.dtype == np.float32
        assert set(np.unique(mask)) <= {0.0, 1.0}
        assert mask.sum() > 0


def test_texture_ops_keep_shape_and_range():
    rng = np.random.default_rng(0)
    texture = procedural_texture(32, rng)
    assert texture.shape == (32, 32, 3) and 0 <= texture.min() and texture.max() <= 1
    for op in TEXTURE_OPS:
        out = np.clip(op(texture, rng), 0, 1)
        assert out.shape == texture.shape and np.isfinite(out).all()
    assert augment_texture(texture, rng).dtype == np.float32


@pytest.mark.parametrize("source", ["procedural", "self", "surface"])
@pytest.mark.parametrize("channels", [1, 3])
def test_synthesizer_changes_only_inside_the_mask(source, channels):
    rng = np.random.default_rng(3)
    synth = DefectSynthesizer(source, image_size=32, seed=0)
    changed_inside = 0
    for _ in range(10):
        image = rng.random((channels, 32, 32), dtype=np.float32)
        out, mask = synth(image, rng)
        assert out.shape == image.shape and out.dtype == np.float32
        assert mask.shape == (32, 32) and mask.sum() > 0
        assert set(np.unique(mask)) <= {0.0, 1.0}
        assert 0 <= out.min() and out.max() <= 1
        outside = mask == 0
        assert np.array_equal(out[:, outside], image[:, outside])  # exactly equal outside
        changed_inside += int(np.abs(out[:, ~outside] - image[:, ~outside]).max() > 1e-3)
    assert changed_inside >= 8


@pytest.mark.parametrize("kind", SURFACE_DEFECTS, ids=lambda k: k.__name__)
def test_surface_defects_blend_only_inside_a_mask_of_their_shape(kind):
    rng = np.random.default_rng(0)
    image = np.full((1, 128, 128), 0.5, dtype=np.float32)
    for _ in range(10):
        target, weights, mask = kind(image, rng)
        assert target.shape == image.shape and weights.shape == mask.shape == (128, 128)
        assert set(np.unique(mask)) <= {0.0, 1.0} and mask.sum() > 0
        assert weights.min() >= 0 and weights.max() <= 1 and not weights[mask == 0].any()
        assert np.abs(target - image)[0][weights > 0.5].min() > 0.01  # visibly darker or brighter
        if kind.__name__ in ("scratch", "pits"):
            assert mask.mean() < 0.05  # thin lines and small blobs, not regions
        if kind.__name__ == "scratch":  # at most 3 px wide: a 7x7 erosion leaves (almost) nothing
            assert cv2.erode(mask, np.ones((7, 7), np.uint8)).sum() < 0.1 * mask.sum()


def test_synthesizer_is_deterministic_for_a_seeded_rng():
    image = np.full((3, 32, 32), 0.5, dtype=np.float32)
    a = DefectSynthesizer("procedural", 32, seed=1)(image, np.random.default_rng(7))
    b = DefectSynthesizer("procedural", 32, seed=1)(image, np.random.default_rng(7))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_folder_source_reads_recursively(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    rng = np.random.default_rng(0)
    cv2.imwrite(str(tmp_path / "a" / "one.png"), (rng.random((20, 30, 3)) * 255).astype(np.uint8))
    cv2.imwrite(str(tmp_path / "a" / "b" / "two.JPG"), (rng.random((50, 40)) * 255).astype(np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    synth = DefectSynthesizer(str(tmp_path), image_size=32)
    assert len(synth.files) == 2
    image = np.zeros((1, 32, 32), dtype=np.float32)
    out, mask = synth(image, rng)
    assert out.shape == (1, 32, 32) and np.array_equal(out[:, mask == 0], image[:, mask == 0])


def test_bad_sources_are_clear_errors(tmp_path):
    with pytest.raises(SurfadError, match="no images"):
        DefectSynthesizer(str(tmp_path))
    with pytest.raises(SurfadError, match="not one of procedural, self, surface"):
        DefectSynthesizer(str(tmp_path / "missing"))


def test_write_defect_preview(tmp_path):
    images = [np.full((3, 32, 32), 0.5, dtype=np.float32), np.zeros((1, 32, 32), dtype=np.float32)]
    path = write_defect_preview(images, DefectSynthesizer(image_size=32), tmp_path / "sub" / "preview.png", n=3)
    grid = cv2.imread(str(path))
    assert grid.shape == (3 * 32 + 2 * 2, 3 * 32 + 2 * 2, 3)
    mask_row = grid[2 * 34:, :32]
    assert mask_row.max() == 255  # the mask row shows the (non-empty) mask
    with pytest.raises(SurfadError):
        write_defect_preview([], DefectSynthesizer(image_size=32), tmp_path / "x.png")
