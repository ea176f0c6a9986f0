"""Real defects as training signal (data.train_defects): listed images leave validation and test in
every layout that has defects, models that learn from them do, the others take them into validation,
and every split scored later leaves them out and says how many."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from surfad import bundle
from surfad.cli import main
from surfad.config import DataConfig
from surfad.data.splits import Splits, make_splits
from surfad.errors import SurfadError
from test_layouts import make_ksdd2, make_mt, make_mvtec, write_image, write_mask


def make_folder(root: Path) -> Path:
    for i in range(6):
        write_image(root / f"good/{i}.png", seed=i)
    for name in ("x", "y"):
        write_image(root / f"defect/{name}.png")
        write_mask(root / f"masks/{name}_mask.png")
    return root


# (layout maker, data settings, the listed defect relative to the data folder)
LAYOUTS = {
    "mvtec": (make_mvtec, {}, "test/crack/001.png"),
    "mt": (make_mt, {"test_ratio": 0.3}, "MT_Blowhole/Imgs/hole_1.jpg"),
    "folder": (make_folder, {"layout": "folder", "mask_dir": "masks"}, "defect/y.png"),
    "ksdd2": (make_ksdd2, {"val_ratio": 0.34}, "train/tr001.png"),  # a ksdd2 training defect is a validation image
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_listed_defects_reach_neither_validation_nor_test(layout: str, tmp_path: Path) -> None:
    """Broken: a listed defect left in the split it came from (it would be scored after being trained on)."""
    make, options, listed = LAYOUTS[layout]
    root = make(tmp_path / "data")
    (tmp_path / "list.txt").write_text(f"# trained on\n{listed}\n\n")
    before = make_splits(DataConfig(path=str(root), **options))
    assert (root / listed).resolve() in {s.path.resolve() for s in before.val + before.test}
    splits = make_splits(DataConfig(path=str(root), train_defects=str(tmp_path / "list.txt"), **options))
    assert [s.path.resolve() for s in splits.train_defects] == [(root / listed).resolve()]
    assert splits.train_defects[0].label == 1 and splits.train_defects[0].mask_path is not None
    assert (root / listed).resolve() not in {s.path.resolve() for s in splits.train + splits.val + splits.test}
    assert len(splits.val) + len(splits.test) == len(before.val) + len(before.test) - 1
    assert "train defects 1" in splits.summary()
    again = Splits.from_dict(json.loads(json.dumps(splits.to_dict())))
    assert again.train_defects == splits.train_defects


def test_a_listed_path_that_is_not_a_defect_of_the_dataset_is_named(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "data")
    listing = tmp_path / "list.txt"
    for line, problem in (("test/crack/nope.png", "not an image of the dataset"),
                          ("test/good/000.png", "not a defective image"),
                          ("../elsewhere.png", "not an image of the dataset")):
        listing.write_text(f"test/crack/000.png\n{line}\n")
        with pytest.raises(SurfadError, match=rf"list\.txt, line 2: {line}.*{problem}"):
            make_splits(DataConfig(path=str(root), train_defects=str(listing)))
    with pytest.raises(SurfadError, match="cannot read"):
        make_splits(DataConfig(path=str(root), train_defects=str(tmp_path / "missing.txt")))


def test_the_cli_refuses_a_foreign_path_with_exit_2(tiny_mvtec: Path, tmp_path: Path, capsys) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text("test/nothing/here.png\n")
    args = ["train", "--data", str(tiny_mvtec), "--out", str(tmp_path / "run"), "--model", "simplenet", "--preset",
            "tiny", "--image-size", "32", "--quiet", "--train-defects", str(listing)]
    assert main(args) == 2
    assert "test/nothing/here.png is not an image of the dataset" in capsys.readouterr().err
    assert not (tmp_path / "run" / bundle.CONFIG).exists()


def test_a_learning_model_refuses_a_listed_defect_without_a_mask(tmp_path: Path, capsys) -> None:
    """Broken: an empty mask, which would teach simplenet that the listed defect is good."""
    root = make_folder(tmp_path / "data")  # read without --mask-dir: its defects have no masks
    (tmp_path / "list.txt").write_text("defect/y.png\n")
    args = ["train", "--data", str(root), "--layout", "folder", "--model", "simplenet",
            "--preset", "tiny", "--image-size", "32", "--quiet", "--train-defects", str(tmp_path / "list.txt")]
    assert main([*args, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "learns where a defect is from its mask" in err and str(root / "defect" / "y.png") in err
    assert not (tmp_path / "run" / bundle.WEIGHTS).exists()
    args[args.index("simplenet")] = "padim"  # a fitted model takes it into validation, where no mask is needed
    assert main([*args, "--out", str(tmp_path / "fitted")]) == 0


def listed_defects(data: Path, out: Path, n: int = 2) -> tuple[Path, list[Path]]:
    """A list file naming the first defective test image of each of the first n defect types."""
    types = sorted(d for d in (data / "test").iterdir() if d.is_dir() and d.name != "good")[:n]
    paths = [sorted(d.glob("*.png"))[0] for d in types]
    out.write_text("".join(f"{p.relative_to(data)}\n" for p in paths))
    return out, paths


@pytest.mark.parametrize("model", ["simplenet", "padim"])
def test_evaluate_and_calibrate_leave_them_out_and_count_them(model: str, tiny_mvtec: Path, tmp_path: Path,
                                                              capsys) -> None:
    """A model that learns from the listed defects keeps them out of every split it scores later; one
    that cannot takes them into validation (where they choose the threshold), never into test.
    Broken: a listed defect scored by evaluate (its score would be inflated by training on it)."""
    listing, paths = listed_defects(tiny_mvtec, tmp_path / "list.txt")
    run = tmp_path / "run"
    assert main(["train", "--data", str(tiny_mvtec), "--out", str(run), "--model", model, "--preset", "tiny",
                 "--image-size", "32", "--epochs", "1", "--batch-size", "4", "--threads", "1", "--quiet",
                 "--grid-every", "0", "--train-defects", str(listing)]) == 0
    splits = Splits.load(run / bundle.SPLITS)
    in_validation = {s.path for s in splits.val}
    if model == "simplenet":
        assert [s.path for s in splits.train_defects] == paths and not set(paths) & in_validation
    else:
        assert "does not learn from defects" in capsys.readouterr().out
        assert splits.train_defects == [] and set(paths) <= in_validation
    assert not set(paths) & {s.path for s in splits.test}
    capsys.readouterr()
    out = tmp_path / "eval"
    assert main(["evaluate", str(run), "--split", "all", "--out", str(out), "--quiet"]) == 0
    scored = {row.split(",")[0] for row in (out / "per_image.csv").read_text().splitlines()[1:]}
    assert scored.isdisjoint(str(p) for p in paths) == (model == "simplenet")
    left_out = json.loads((out / "metrics.json").read_text())["left_out_train_defects"]
    assert left_out == (2 if model == "simplenet" else 0)
    if model == "simplenet":
        assert "left out the 2 defective images the run was trained on" in capsys.readouterr().err
        # given as folders, they are left out too
        assert main(["calibrate", str(run), "--good", str(tiny_mvtec / "test" / "good"), "--defect",
                     str(paths[0].parent), "--strategy", "f1", "--quiet"]) == 0
        assert "left out the 2 defective images" in capsys.readouterr().err


@pytest.mark.slow
def test_a_real_defect_trained_on_is_detected_better(tmp_path: Path) -> None:
    """simplenet trained with a handful of real defects of one kind (small bright squares, unlike its
    synthetic defects, which are off here) scores new defects of that kind further above the good test
    images than without them, on the same test images. Broken: the listed defects not reaching
    training, or their masks ignored."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    for folder in ("train/good", "test/good", "test/square", "ground_truth/square"):
        (root / folder).mkdir(parents=True)

    def surface(seed: int) -> np.ndarray:
        noise = np.random.default_rng(seed).integers(90, 160, (48, 48), dtype=np.uint8)
        return np.repeat(cv2.GaussianBlur(noise, (0, 0), 1.5)[:, :, None], 3, axis=2)

    for i in range(16):
        cv2.imwrite(str(root / "train/good" / f"{i}.png"), surface(i))
    for i in range(8):
        cv2.imwrite(str(root / "test/good" / f"{i}.png"), surface(200 + i))
    for i in range(12):
        image, mask = surface(100 + i), np.zeros((48, 48), np.uint8)
        y, x = rng.integers(6, 36, 2)
        image[y : y + 6, x : x + 6] = 200
        mask[y : y + 6, x : x + 6] = 255
        cv2.imwrite(str(root / "test/square" / f"{i}.png"), image)
        cv2.imwrite(str(root / "ground_truth/square" / f"{i}_mask.png"), mask)
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"test/square/{i}.png\n" for i in range(4)))

    def separation(out: Path, *extra: str) -> float:
        """(mean defect score - mean good score) / good spread, on the squares not trained on."""
        assert main(["train", "--data", str(root), "--out", str(out), "--model", "simplenet", "--preset", "tiny",
                     "--image-size", "48", "--epochs", "4", "--batch-size", "4", "--threads", "1", "--seed", "0",
                     "--quiet", "--grid-every", "0", "--param", "positive_ratio=0", *extra]) == 0
        assert main(["evaluate", str(out), "--out", str(out / "eval"), "--quiet"]) == 0
        with (out / "eval" / "per_image.csv").open() as f:
            rows = [r for r in csv.DictReader(f) if Path(r["path"]).stem not in {"0", "1", "2", "3"} or r["label"] == "0"]
        good = [float(r["score"]) for r in rows if r["label"] == "0"]
        defects = [float(r["score"]) for r in rows if r["label"] == "1"]
        assert len(good) == 8 and len(defects) == 8
        return (np.mean(defects) - np.mean(good)) / (np.std(good) + 1e-9)

    without = separation(tmp_path / "without")
    with_defects = separation(tmp_path / "with", "--train-defects", str(listing))
    assert with_defects > without + 1.0, (without, with_defects)
