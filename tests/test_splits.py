"""Splits: seeded validation hold-out, bad-file handling, summary and the saved JSON record."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_layouts import make_mt, write_image, write_mask

from surfad.config import DataConfig
from surfad.data.samples import DEFECT, GOOD, Sample
from surfad.data.splits import Splits, make_splits
from surfad.errors import BadInputError, SurfadError


def cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(path=str(root), **kw)


def paths(samples) -> set[Path]:
    return {s.path for s in samples}


def test_splits_of_the_synthetic_dataset(tiny_mvtec):
    splits = make_splits(cfg(tiny_mvtec, val_ratio=0.25))
    assert splits.layout == "mvtec" and splits.root == str(tiny_mvtec)
    # 12 training images: 3 held out for val, joined by validation/ (2 good + 4 defective)
    assert len(splits.train) == 9 and all(s.label == 0 for s in splits.train)
    assert len(splits.val) == 3 + 6 and sum(s.label for s in splits.val) == 4
    assert len(splits.test) == 12 and sum(s.label for s in splits.test) == 8
    assert not paths(splits.train) & paths(splits.val)
    assert not paths(splits.val) & paths(splits.test)
    assert splits.skipped == []


def test_val_holdout_is_seeded(tiny_mvtec):
    first = make_splits(cfg(tiny_mvtec, val_ratio=0.25, split_seed=3))
    assert make_splits(cfg(tiny_mvtec, val_ratio=0.25, split_seed=3)).to_dict() == first.to_dict()
    others = [make_splits(cfg(tiny_mvtec, val_ratio=0.25, split_seed=s)).val for s in (4, 5, 6)]
    assert any(val != first.val for val in others)


def test_at_least_one_training_image_remains(tmp_path):
    write_image(tmp_path / "train/good/only.png")
    splits = make_splits(cfg(tmp_path, val_ratio=0.9))
    assert len(splits.train) == 1 and splits.val == []
    with pytest.raises(SurfadError, match="data.val_ratio=1.0: must be <= 0.95"):
        make_splits(cfg(tmp_path, val_ratio=1.0))


def test_validation_file_also_in_test_is_an_error(tmp_path):
    write_image(tmp_path / "train/good/a.png")
    write_image(tmp_path / "test/good/b.png")
    (tmp_path / "validation/good").mkdir(parents=True)
    os.symlink(tmp_path / "test/good/b.png", tmp_path / "validation/good/b.png")
    expected = r"validation/good/b\.png \(validation\) and .*test/good/b\.png \(test\) are the same"
    with pytest.raises(SurfadError, match=expected):
        make_splits(cfg(tmp_path))


def dataset_with_problem(root: Path, problem: str) -> Path:
    """An MVTec dataset of good colour/grayscale images with one bad file of the given kind."""
    for i in range(4):
        write_image(root / f"train/good/{i}.png", 20 + 4 * i, 30, channels=1 + 2 * (i % 2))
    write_image(root / "test/good/g.png")
    write_image(root / "test/scratch/s.png", 24, 32)
    write_mask(root / "ground_truth/scratch/s_mask.png", 24, 32)
    if problem == "corrupt":
        (root / "train/good/9.png").write_bytes(b"\x89PNG\r\n\x1a\n but then nothing useful")
    elif problem == "mask size":
        write_image(root / "test/scratch/t.png", 24, 32)
        write_mask(root / "ground_truth/scratch/t_mask.png", 32, 24)
    elif problem == "missing mask":
        write_image(root / "test/scratch/t.png", 24, 32)
    return root


@pytest.mark.parametrize(
    ("problem", "bad_file", "message"),
    [
        ("corrupt", "train/good/9.png", "not a readable image"),
        ("mask size", "test/scratch/t.png", "t_mask.png: mask is 24x32 but its image is 32x24"),
        ("missing mask", "test/scratch/t.png", "mask not found"),
    ],
)
def test_bad_files_raise_or_are_skipped(tmp_path, problem, bad_file, message):
    root = dataset_with_problem(tmp_path, problem)
    with pytest.raises(BadInputError, match=rf"{bad_file}: .*{message}"):
        make_splits(cfg(root))
    splits = make_splits(cfg(root, skip_bad=True, val_ratio=0))
    assert [(p, message in reason) for p, reason in splits.skipped] == [(str(root / bad_file), True)]
    assert root / bad_file not in paths(splits.train + splits.val + splits.test)
    assert len(splits.train) == 4 and len(splits.test) == 2
    summary = splits.summary()
    assert "skipped bad files: 1" in summary and bad_file in summary


def test_all_training_images_bad(tmp_path):
    (tmp_path / "train/good").mkdir(parents=True)
    (tmp_path / "train/good/0.jpg").write_bytes(b"")
    with pytest.raises(BadInputError, match=r"0\.jpg: empty file"):
        make_splits(cfg(tmp_path))
    with pytest.raises(SurfadError, match="no usable training images; all 1 were skipped"):
        make_splits(cfg(tmp_path, skip_bad=True))


def test_empty_test_split_is_allowed_until_asked_for(tmp_path):
    for i in range(3):
        write_image(tmp_path / f"good/{i}.png")
    splits = make_splits(cfg(tmp_path, layout="folder", test_ratio=0.0, val_ratio=0.0))
    assert len(splits.get("train")) == 3 and splits.test == []
    with pytest.raises(SurfadError, match=rf"split 'test' is empty in {tmp_path}"):
        splits.get("test")
    with pytest.raises(SurfadError, match="unknown split 'dev'; valid: train, val, test"):
        splits.get("dev")


def test_summary_counts_per_split_and_type(tmp_path):
    splits = make_splits(cfg(make_mt(tmp_path / "mt"), test_ratio=0.3, val_ratio=0.3))
    lines = splits.summary().splitlines()
    assert "layout mt" in lines[0]
    rows = {line.split()[0]: line.split() for line in lines[2:5]}
    assert rows["train"][:4] == ["train", "5", "5", "0"]
    assert rows["val"][:4] == ["val", "2", "2", "0"]
    assert rows["test"][:4] == ["test", "7", "3", "4"]
    assert "blowhole 3, crack 1" in lines[4]
    assert lines[5] == "skipped bad files: 0"


def test_save_load_round_trip(tmp_path, tiny_mvtec):
    splits = make_splits(cfg(tiny_mvtec))
    splits.skipped = [("/x/y.png", "not a readable image")]
    splits.save(tmp_path / "run/splits.json")
    loaded = Splits.load(tmp_path / "run/splits.json")
    assert loaded == splits
    assert any(s.mask_path is not None for s in loaded.test)
    assert not list((tmp_path / "run").glob(".*tmp"))  # atomic write left no temporary file
    with pytest.raises(SurfadError, match="splits file not found"):
        Splits.load(tmp_path / "nope.json")
    (tmp_path / "broken.json").write_text('{"layout": "mvtec"}')
    with pytest.raises(SurfadError, match=r"broken\.json: not a valid splits record"):
        Splits.load(tmp_path / "broken.json")


def test_a_defective_sample_always_names_a_defect_type():
    """Reports and per-type metrics group by defect_type: a defective image is never typed "good" or ""."""
    assert Sample(Path("a.png"), 1).defect_type == DEFECT
    assert Sample(Path("a.png"), 1, "").defect_type == DEFECT
    assert Sample(Path("a.png"), 1, "crack").defect_type == "crack"
    assert Sample(Path("a.png"), 0).defect_type == GOOD
