"""The real datasets in ../shared/data load with the counts their README states."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from surfad.config import DataConfig
from surfad.data.splits import make_splits

DATA = Path(__file__).parents[1] / ".." / "shared" / "data"
MT = DATA / "magnetic-tile"
WOOD = DATA / "wood-vsb-256" / "wood"

pytestmark = pytest.mark.realdata


def need(folder: Path) -> None:
    if not folder.is_dir():
        pytest.skip(f"real data not available: {folder.resolve()} is missing")


def test_magnetic_tile_with_the_standard_train_list():
    need(MT)
    cfg = DataConfig(path=str(MT), train_list=str(MT / "splits/train_good.txt"), val_ratio=0.15)
    splits = make_splits(cfg)  # decodes all 1344 images and their masks
    assert splits.layout == "mt" and splits.skipped == []
    assert len(splits.train) + len(splits.val) == 761 and len(splits.val) == round(0.15 * 761)
    assert all(s.label == 0 and s.path.parent.parent.name == "MT_Free" for s in splits.train + splits.val)
    assert sum(s.label == 0 for s in splits.test) == 191
    assert Counter(s.defect_type for s in splits.test if s.label) == {
        "blowhole": 115, "break": 85, "crack": 57, "fray": 32, "uneven": 103
    }
    assert all(s.mask_path is not None and s.mask_path.suffix == ".png" for s in splits.test if s.label)


def test_wood_vsb_256():
    need(WOOD)
    splits = make_splits(DataConfig(path=str(WOOD), val_ratio=0.0))
    assert splits.layout == "mvtec" and splits.skipped == []
    assert len(splits.train) == 70 and splits.val == []
    assert sum(s.label == 0 for s in splits.test) == 70
    defects = [s for s in splits.test if s.label]
    assert len(defects) == 71 and {s.defect_type for s in defects} == {"defect"}
    assert all(s.mask_path is not None and s.mask_path.suffix == ".jpg" for s in defects)
