"""Layouts: which files become which samples, for each supported folder convention."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from surfad.config import DataConfig
from surfad.data.layouts import detect_layout, load_layout
from surfad.data.splits import make_splits
from surfad.errors import BadInputError, SurfadError


def write_image(path: Path, h: int = 24, w: int = 32, channels: int = 3, seed: int = 0) -> Path:
    """A random image file of the given size and channel count (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (h, w) if channels == 1 else (h, w, channels)
    assert cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))
    return path


def write_mask(path: Path, h: int = 24, w: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4 : h // 2, w // 4 : w // 2] = 255
    assert cv2.imwrite(str(path), mask)
    return path


def make_mvtec(root: Path) -> Path:
    """MVTec layout with mixed formats, sizes, grayscale/colour, plus files that are not images."""
    write_image(root / "train/good/000.png", 24, 32, channels=1)
    write_image(root / "train/good/001.JPG", 40, 20, channels=3)
    write_image(root / "train/good/002.bmp", 30, 30, channels=3)
    (root / "train/good/notes.txt").write_text("not an image")
    write_image(root / "train/good/._000.png", 8, 8)  # macOS resource fork: hidden, ignored
    write_image(root / "test/good/000.png", 24, 32)
    write_image(root / "test/crack/000.png", 24, 32)
    write_image(root / "test/crack/001.png", 50, 16, channels=1)
    write_mask(root / "ground_truth/crack/000_mask.png", 24, 32)
    write_mask(root / "ground_truth/crack/001_mask.png", 50, 16)
    write_image(root / "test/hole/000.jpg", 24, 32)
    write_mask(root / "ground_truth/hole/000_mask.jpg", 24, 32)  # lossy masks are accepted (wood-vsb-256)
    return root


def cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(path=str(root), **kw)


def names(samples) -> list[str]:
    return [str(s.path.relative_to(s.path.parents[1])) for s in samples]


def test_mvtec_layout_lists_images_labels_and_masks(tmp_path):
    root = make_mvtec(tmp_path / "cat")
    index = load_layout(cfg(root))
    assert index.layout == "mvtec" and index.root == root
    assert names(index.train) == ["good/000.png", "good/001.JPG", "good/002.bmp"]
    assert all(s.label == 0 and s.mask_path is None for s in index.train)
    assert names(index.test) == ["crack/000.png", "crack/001.png", "good/000.png", "hole/000.jpg"]
    by_name = {n: s for n, s in zip(names(index.test), index.test)}
    assert by_name["good/000.png"].label == 0 and by_name["good/000.png"].mask_path is None
    crack = by_name["crack/001.png"]
    assert (crack.label, crack.defect_type) == (1, "crack")
    assert crack.mask_path == root / "ground_truth/crack/001_mask.png"
    assert by_name["hole/000.jpg"].mask_path == root / "ground_truth/hole/000_mask.jpg"
    assert index.validation == [] and index.skipped == []


def test_mvtec_defect_type_without_mask_folder_has_image_labels_only(tmp_path):
    root = make_mvtec(tmp_path / "cat")
    write_image(root / "test/dent/000.png")
    dent = [s for s in load_layout(cfg(root)).test if s.defect_type == "dent"]
    assert len(dent) == 1 and dent[0].label == 1 and dent[0].mask_path is None


def test_mvtec_missing_mask_raises_or_is_skipped(tmp_path):
    root = make_mvtec(tmp_path / "cat")
    write_image(root / "test/crack/002.png")
    expected = r"crack/002\.png: mask not found: expected .*ground_truth/crack/002_mask"
    with pytest.raises(BadInputError, match=expected):
        load_layout(cfg(root))
    index = load_layout(cfg(root, skip_bad=True))
    assert [Path(p).name for p, _ in index.skipped] == ["002.png"]
    assert "mask not found" in index.skipped[0][1]
    assert len([s for s in index.test if s.defect_type == "crack"]) == 2


def test_mvtec_validation_folder_masks_in_either_place(tmp_path):
    root = make_mvtec(tmp_path / "cat")
    write_image(root / "validation/good/v0.png")
    write_image(root / "validation/crack/v1.png")
    write_mask(root / "validation/ground_truth/crack/v1_mask.png")  # MVTec AD 2 style: inside the split
    write_image(root / "validation/hole/v2.png")
    write_mask(root / "ground_truth/hole/v2_mask.png")  # MVTec AD style: shared ground_truth
    val = load_layout(cfg(root)).validation
    assert [(s.path.name, s.label, s.defect_type) for s in val] == [
        ("v1.png", 1, "crack"), ("v0.png", 0, "good"), ("v2.png", 1, "hole")
    ]
    assert val[0].mask_path == root / "validation/ground_truth/crack/v1_mask.png"
    assert val[2].mask_path == root / "ground_truth/hole/v2_mask.png"


def test_mvtec_ad2_test_public(tmp_path):
    root = tmp_path / "can"
    write_image(root / "train/good/a.png")
    write_image(root / "test_public/good/b.png")
    write_image(root / "test_public/bad/c.png")
    write_mask(root / "test_public/ground_truth/bad/c_mask.png")
    test = load_layout(cfg(root, layout="mvtec")).test
    assert [(s.path.name, s.label) for s in test] == [("c.png", 1), ("b.png", 0)]
    assert test[0].mask_path == root / "test_public/ground_truth/bad/c_mask.png"


def make_mt(root: Path, n_free: int = 10) -> Path:
    """Magnetic-tile layout: jpg images with same-stem png masks, also beside the good images."""
    for i in range(n_free):
        h, w = 20 + 3 * i, 40 - 2 * i
        write_image(root / f"MT_Free/Imgs/free_{i:02d}.jpg", h, w, channels=1, seed=i)
        write_mask(root / f"MT_Free/Imgs/free_{i:02d}.png", h, w)
    for i in range(3):
        write_image(root / f"MT_Blowhole/Imgs/hole_{i}.jpg", 30, 25, channels=1)
        write_mask(root / f"MT_Blowhole/Imgs/hole_{i}.png", 30, 25)
    write_image(root / "MT_Crack/Imgs/crack_0.jpg", 16, 60, channels=1)
    write_mask(root / "MT_Crack/Imgs/crack_0.png", 16, 60)
    return root


def test_mt_layout_seeded_test_share(tmp_path):
    root = make_mt(tmp_path / "mt")
    index = load_layout(cfg(root, test_ratio=0.3, split_seed=0))
    assert index.layout == "mt"
    good_test = [s for s in index.test if s.label == 0]
    defects = [s for s in index.test if s.label == 1]
    assert len(index.train) == 7 and len(good_test) == 3
    assert all(s.path.suffix == ".jpg" for s in index.train + index.test)  # png files are masks
    assert sorted((s.path.name, s.defect_type, s.mask_path.name) for s in defects) == [
        ("crack_0.jpg", "crack", "crack_0.png"),
        ("hole_0.jpg", "blowhole", "hole_0.png"),
        ("hole_1.jpg", "blowhole", "hole_1.png"),
        ("hole_2.jpg", "blowhole", "hole_2.png"),
    ]
    again = load_layout(cfg(root, test_ratio=0.3, split_seed=0))
    assert again.train == index.train and again.test == index.test
    other_seeds = [load_layout(cfg(root, test_ratio=0.3, split_seed=s)).train for s in (1, 2, 3)]
    assert any(train != index.train for train in other_seeds)


def test_mt_train_list(tmp_path):
    root = make_mt(tmp_path / "mt")
    (root / "splits").mkdir()
    (root / "splits/train.txt").write_text("# training images\nfree_00.jpg\n\nfree_03.jpg\nfree_07.jpg\n")
    index = load_layout(cfg(root, train_list="splits/train.txt"))  # relative to the dataset folder
    assert [s.path.name for s in index.train] == ["free_00.jpg", "free_03.jpg", "free_07.jpg"]
    assert sum(s.label == 0 for s in index.test) == 7 and sum(s.label == 1 for s in index.test) == 4
    (root / "splits/train.txt").write_text("free_00.jpg\nnot_there.jpg\n")
    expected = r"train\.txt: listed image\(s\) not found in .*MT_Free.*not_there\.jpg"
    with pytest.raises(SurfadError, match=expected):
        load_layout(cfg(root, train_list=str(root / "splits/train.txt")))
    with pytest.raises(SurfadError, match="data.train_list: cannot read nope.txt"):
        load_layout(cfg(root, train_list="nope.txt"))


def test_mt_defect_without_mask(tmp_path):
    root = make_mt(tmp_path / "mt")
    write_image(root / "MT_Crack/Imgs/crack_1.jpg", channels=1)
    with pytest.raises(BadInputError, match=r"crack_1\.jpg: mask not found: expected .*crack_1\.png"):
        load_layout(cfg(root))
    assert [Path(p).name for p, _ in load_layout(cfg(root, skip_bad=True)).skipped] == ["crack_1.jpg"]


def test_folder_layout(tmp_path):
    root = tmp_path / "parts"
    for i in range(5):
        write_image(root / f"ok/{i}.png", 20 + i, 30, channels=1 if i % 2 else 3)
    write_image(root / "bad/x.png")
    write_image(root / "bad/y.tif")
    write_mask(root / "masks/x.png")
    write_mask(root / "masks/y.png")
    options = {"layout": "folder", "good_dir": "ok", "defect_dir": "bad", "test_ratio": 0.4}
    index = load_layout(cfg(root, mask_dir="masks", mask_name="{stem}.png", **options))
    assert len(index.train) == 3 and sum(s.label == 0 for s in index.test) == 2
    defects = [s for s in index.test if s.label == 1]
    assert [(s.path.name, s.defect_type, s.mask_path) for s in defects] == [
        ("x.png", "bad", root / "masks/x.png"), ("y.tif", "bad", root / "masks/y.png")
    ]
    no_masks = load_layout(cfg(root, **options))
    assert [s.mask_path for s in no_masks.test if s.label == 1] == [None, None]
    (root / "masks/y.png").unlink()
    with pytest.raises(BadInputError, match=r"y\.tif: mask not found: expected .*masks/y\.png"):
        load_layout(cfg(root, mask_dir="masks", mask_name="{stem}.png", **options))
    with pytest.raises(SurfadError, match="data.mask_name"):
        load_layout(cfg(root, mask_dir="masks", mask_name="{name}.png", **options))
    with pytest.raises(SurfadError, match=r"data.good_dir: .*parts/good not found"):
        load_layout(cfg(root, layout="folder"))
    with pytest.raises(SurfadError, match="data.train_list: only used by"):
        load_layout(cfg(make_mvtec(tmp_path / "cat"), train_list="x.txt"))


def test_folder_layout_validation_folders(tmp_path):
    """Given validation folders, their good and defective images (with masks) are validation images."""
    root = tmp_path / "parts"
    for i in range(4):
        write_image(root / f"good/{i}.png", seed=i)
    write_image(root / "val_ok/a.png")
    write_image(root / "val_ng/b.png")
    write_mask(root / "masks/b_mask.png")
    options = {"layout": "folder", "val_good_dir": "val_ok", "val_defect_dir": "val_ng", "mask_dir": "masks"}
    index = load_layout(cfg(root, **options))
    assert [(s.path.name, s.label, s.defect_type) for s in index.validation] == [("a.png", 0, "good"), ("b.png", 1, "val_ng")]
    assert index.validation[1].mask_path == root / "masks/b_mask.png"
    splits = make_splits(cfg(root, **options))
    assert {"a.png", "b.png"} <= {s.path.name for s in splits.val}
    assert not {"a.png", "b.png"} & {s.path.name for s in splits.train + splits.test}
    with pytest.raises(SurfadError, match=r"data.val_defect_dir: validation folder .*parts/nope not found"):
        load_layout(cfg(root, **{**options, "val_defect_dir": "nope"}))


def make_dagm(cls: Path) -> Path:
    """A DAGM 2007 class folder: Train and Test, each with Label/Labels.txt and *_label.PNG masks."""
    for split, flags in (("Train", [0, 1, 0, 0]), ("Test", [0, 1, 1, 0])):
        rows = [str(len(flags))]  # DAGM files start with a count line
        for i, flag in enumerate(flags):
            name = f"{i:04d}.PNG"
            write_image(cls / split / name, 32, 32, channels=1, seed=i)
            mask_name = f"{i:04d}_label.PNG" if flag else "0"
            if flag:
                write_mask(cls / split / "Label" / mask_name, 32, 32)
            rows.append(f"{i + 1}\t{flag}\t{name}\t0\t{mask_name}")
        (cls / split / "Label" / "Labels.txt").write_text("\n".join(rows) + "\n")
    return cls


def test_dagm_layout(tmp_path):
    cls = make_dagm(tmp_path / "DAGM/Class1")
    index = load_layout(cfg(cls))
    assert index.layout == "dagm"
    assert [s.path.name for s in index.train] == ["0000.PNG", "0002.PNG", "0003.PNG"]
    assert [(s.path.name, s.label, s.defect_type) for s in index.test] == [
        ("0000.PNG", 0, "good"), ("0001.PNG", 1, "defect"), ("0002.PNG", 1, "defect"), ("0003.PNG", 0, "good")
    ]
    assert index.test[1].mask_path == cls / "Test/Label/0001_label.PNG"
    with pytest.raises(SurfadError, match="point the data path at one class folder \\(Class1\\)"):
        load_layout(cfg(tmp_path / "DAGM", layout="dagm"))
    (cls / "Test/Label/0002_label.PNG").unlink()
    with pytest.raises(BadInputError, match=r"Test/0002\.PNG: mask not found"):
        load_layout(cfg(cls))


def make_ksdd2(root: Path) -> Path:
    """A KolektorSDD2 folder: train/ and test/ with <name>.png and <name>_GT.png (empty mask = good)."""
    for split, flags in (("train", [0, 1, 0, 0]), ("test", [1, 0, 1])):
        for i, flag in enumerate(flags):
            name = f"{split[:2]}{i:03d}"
            write_image(root / split / f"{name}.png", 40, 16, seed=i)
            if flag:
                write_mask(root / split / f"{name}_GT.png", 40, 16)
            else:
                assert cv2.imwrite(str(root / split / f"{name}_GT.png"), np.zeros((40, 16), np.uint8))
    return root


def test_ksdd2_layout(tmp_path):
    root = make_ksdd2(tmp_path / "KolektorSDD2")
    index = load_layout(cfg(root))
    assert index.layout == "ksdd2"
    assert [s.path.name for s in index.train] == ["tr000.png", "tr002.png", "tr003.png"]
    # a defective training image is never trained on: it is a real validation defect
    assert [(s.path.name, s.label, s.mask_path.name) for s in index.validation] == [("tr001.png", 1, "tr001_GT.png")]
    assert [(s.path.name, s.label) for s in index.test] == [("te001.png", 0), ("te000.png", 1), ("te002.png", 1)]
    assert all(s.mask_path is None for s in index.test if s.label == 0)
    splits = make_splits(cfg(root, val_ratio=0.34))
    assert {s.path.name for s in splits.val} >= {"tr001.png"} and not {s.path.name for s in splits.train} & {"tr001.png"}
    (root / "test/te002_GT.png").unlink()
    with pytest.raises(BadInputError, match=r"test/te002\.png: mask not found: expected .*te002_GT\.png"):
        load_layout(cfg(root))
    assert [s.path.name for s in load_layout(cfg(root, skip_bad=True)).test] == ["te001.png", "te000.png"]


def test_detect_layout_and_unknown_names(tmp_path):
    assert detect_layout(make_mvtec(tmp_path / "a/cat")) == "mvtec"
    assert detect_layout(make_mt(tmp_path / "mt", n_free=2)) == "mt"
    assert detect_layout(make_dagm(tmp_path / "Class1")) == "dagm"
    assert detect_layout(make_ksdd2(tmp_path / "ksdd2")) == "ksdd2"
    expected = r"/a: cannot tell the dataset layout; expected mvtec .* mt .* dagm.*subfolders cat"
    with pytest.raises(SurfadError, match=expected):
        detect_layout(tmp_path / "a")
    with pytest.raises(SurfadError, match="not found"):
        detect_layout(tmp_path / "missing")
    with pytest.raises(SurfadError, match="data.layout='voc': choose one of auto, mvtec, mt, folder, dagm, ksdd2"):
        load_layout(cfg(tmp_path / "a/cat", layout="voc"))


def test_empty_training_folder_names_the_folder(tmp_path):
    root = tmp_path / "cat"
    (root / "train/good").mkdir(parents=True)
    write_image(root / "test/good/0.png")
    with pytest.raises(SurfadError, match=r"cat/train/good: no training images found"):
        load_layout(cfg(root))
