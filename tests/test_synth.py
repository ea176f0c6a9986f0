"""The synthetic wood dataset: layout, determinism and that masks mark exactly the defects."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import TINY

from surfad.data.synthetic_wood import (
    DEFECT_TYPES,
    add_defect,
    wood_texture,
    write_synthetic_dataset,
)
from surfad.errors import SurfadError


def files(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_counts(tiny_mvtec):
    assert tiny_mvtec.name == "synthetic_wood"
    count = lambda folder: len(list((tiny_mvtec / folder).glob("*.png")))
    assert count("train/good") == TINY["n_train"] and count("test/good") == TINY["n_test_good"]
    assert count("validation/good") == TINY["n_val_good"]
    for kind in DEFECT_TYPES:
        assert count(f"test/{kind}") == TINY["n_test_defect"] // 4
        assert count(f"validation/{kind}") == TINY["n_val_defect"] // 4
        for split, gt in (("test", "ground_truth"), ("validation", "validation/ground_truth")):
            stems = sorted(p.stem + "_mask" for p in (tiny_mvtec / split / kind).glob("*.png"))
            assert stems == sorted(p.stem for p in (tiny_mvtec / gt / kind).glob("*.png"))
    readme = (tiny_mvtec / "README.txt").read_text()
    assert "seed 0" in readme and "64x64" in readme


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    small = dict(size=48, n_train=3, n_test_good=1, n_test_defect=4, n_val_good=1, n_val_defect=0)
    a = files(write_synthetic_dataset(tmp_path / "a", seed=7, **small))
    b = files(write_synthetic_dataset(tmp_path / "b", seed=7, **small))
    c = files(write_synthetic_dataset(tmp_path / "c", seed=8, **small))
    assert a == b
    assert a.keys() == c.keys() and a["train/good/000.png"] != c["train/good/000.png"]


def test_good_images_vary_in_colour_and_grain(tiny_mvtec):
    paths = sorted((tiny_mvtec / "train/good").glob("*.png"))
    images = [cv2.imread(str(p)).astype(np.float32) for p in paths]
    means = np.array([im.mean(axis=(0, 1)) for im in images])
    assert means.std(axis=0).min() > 3  # colour differs between images
    assert all(np.abs(im[:, :, 2] - im[:, :, 0]).mean() > 20 for im in images)  # colour, not grey
    diffs = [np.abs(images[i] - images[i + 1]).mean() for i in range(len(images) - 1)]
    assert min(diffs) > 5
    columns = images[0].mean(axis=(0, 2))  # grain runs top to bottom: columns vary, rows along it less
    assert columns.std() > 2 * images[0].mean(axis=(1, 2)).std()


@pytest.mark.parametrize("kind", DEFECT_TYPES)
def test_defect_changes_exactly_the_masked_pixels(kind):
    for seed in range(5):
        rng = np.random.default_rng(seed)
        clean = wood_texture(rng, 256)
        defective, mask = add_defect(clean, kind, rng)
        assert mask.dtype == bool and mask.shape == (256, 256)
        assert 0.002 < mask.mean() < 0.08  # visible but a few % of the image at most
        assert np.array_equal(defective[~mask], clean[~mask])
        change = np.abs(defective[mask] - clean[mask]).max(axis=1)
        assert change.mean() > 25 and (change > 8).mean() > 0.95  # the whole masked area visibly changed


def test_mask_files_are_binary_and_image_sized(tiny_mvtec):
    for kind in DEFECT_TYPES:
        for mask_path in (tiny_mvtec / "ground_truth" / kind).glob("*.png"):  # images are 64 px too
            mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
            assert mask.shape == (64, 64) and set(np.unique(mask)) == {0, 255}


def test_rewrites_its_own_output_but_not_other_folders(tmp_path):
    none = dict(n_test_good=0, n_test_defect=0, n_val_good=0, n_val_defect=0)
    small = dict(size=32, n_train=2, **none)
    root = write_synthetic_dataset(tmp_path, size=32, n_train=4, **none)
    assert len(list((root / "train/good").iterdir())) == 4
    write_synthetic_dataset(tmp_path, **small)
    assert len(list((root / "train/good").iterdir())) == 2  # no stale images from the first run
    assert [p.name for p in tmp_path.iterdir()] == ["synthetic_wood"]  # no temporary folder left
    (tmp_path / "other/synthetic_wood").mkdir(parents=True)
    with pytest.raises(SurfadError, match="exists and is not a surfad synthetic dataset"):
        write_synthetic_dataset(tmp_path / "other", **small)
    with pytest.raises(SurfadError, match="n_train must be at least 1"):
        write_synthetic_dataset(tmp_path / "x", n_train=0)
