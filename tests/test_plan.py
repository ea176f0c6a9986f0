"""`surfad train --dry-run`: the data survey, the cost estimate and the advice, with nothing written."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from surfad.cli import main
from surfad.config import DataConfig, RunConfig
from surfad.data.samples import Sample
from surfad.data.splits import Splits
from surfad.data.survey import DataSurvey, input_scale, region_widths
from surfad.plan import TrainingPlan

TINY_MODEL = ["--model", "unet_vae", "--param", "base_width=4", "--param", "depth=2", "--param", "skip_levels=[1]", "--param", "latent_channels=4"]


def test_region_widths_measure_each_region_where_it_is_thickest():
    mask = np.zeros((40, 40), dtype=bool)
    mask[5, 2:30] = True  # a one-pixel line
    mask[20:25, 20:25] = True  # a 5x5 square
    mask[30:33, 2:38] = True  # a three-pixel band
    assert sorted(region_widths(mask)) == pytest.approx([1.0, 3.0, 5.0], abs=0.1)
    assert region_widths(np.zeros((8, 8), dtype=bool)).size == 0


def test_input_scale_follows_preprocessing():
    assert input_scale((512, 128), DataConfig(image_size=128)) == pytest.approx(0.5)  # sqrt(1/4 * 1)
    assert input_scale((512, 128), DataConfig(image_size=128, tile_scale=0.75)) == 0.75


def plan_with(val: list[Sample], test: list[Sample], survey: DataSurvey, minutes: float = 10.0,
              model: str = "unet_vae", image_size: int = 128, n_train: int = 500, **train: float) -> TrainingPlan:
    """A plan with the given splits and survey, whose run takes `minutes` (one step per epoch, no validation cost)."""
    config = RunConfig.from_dict({"model": model, "data": {"channels": 1, "image_size": image_size},
                                  "train": {"epochs": 10, **train}})
    splits = Splits("folder", "data", [Sample(Path(f"t{i}.png"), 0) for i in range(n_train)], val, test)
    return TrainingPlan(config, splits, survey, parameters=1000, steps_per_epoch=1, batch_size=8,
                        step_seconds=minutes * 6, validation_seconds=0.0, writing_seconds=0.0)


GOOD = [Sample(Path(f"g{i}.png"), 0) for i in range(20)]
DEFECT = [Sample(Path("d.png"), 1, "crack", Path("d_mask.png"))]
SQUARE = DataSurvey(Counter({(256, 256): 30}), np.full(10, 6.0), masks=10, cross_split_copies=[])


def test_advice_names_what_the_run_will_rely_on():
    quiet = plan_with(GOOD + DEFECT, GOOD + DEFECT, SQUARE)
    assert quiet.advice() == []
    assert "advice: none" in quiet.report()

    no_real_defects = plan_with(GOOD, GOOD + DEFECT, SQUARE).advice()
    assert any("no real defects" in line for line in no_real_defects)
    assert any("20 good validation images" in line and "highest score" in line for line in no_real_defects)

    assert any("no defective images" in line for line in plan_with(GOOD + DEFECT, GOOD, SQUARE).advice())

    varied = DataSurvey(Counter({(300, 100): 5, (100, 300): 5}), np.full(10, 6.0), masks=10, cross_split_copies=[])
    assert any("--tile-scale" in line for line in plan_with(GOOD + DEFECT, GOOD + DEFECT, varied).advice())

    thin = DataSurvey(Counter({(256, 256): 30}), np.array([1.0, 1.5, 6.0, 6.0]), masks=4, cross_split_copies=[])
    assert any("50% of defect regions" in line for line in plan_with(GOOD + DEFECT, GOOD + DEFECT, thin).advice())

    few = plan_with(GOOD + DEFECT, GOOD + DEFECT, SQUARE, n_train=35).advice()
    assert any(line.startswith("with 35 good training images, see `surfad curve`") for line in few)
    assert not any("surfad curve" in line for line in plan_with(GOOD + DEFECT, GOOD + DEFECT, SQUARE, n_train=100).advice())

    long = plan_with(GOOD + DEFECT, GOOD + DEFECT, SQUARE, minutes=90)
    assert any("--time-budget" in line for line in long.advice())

    for model in ("padim", "patchcore"):  # pretrained features were best at 224 px or more on real data
        small = plan_with(GOOD + DEFECT, GOOD + DEFECT, SQUARE, model=model, image_size=128).advice()
        assert any("--image-size 224" in line and "3.1x" in line for line in small)
        assert plan_with(GOOD + DEFECT, GOOD + DEFECT, SQUARE, model=model, image_size=224).advice() == []


def test_estimate_and_time_budget():
    plan = plan_with(GOOD + DEFECT, GOOD + DEFECT, SQUARE, minutes=10)
    assert plan.minutes == pytest.approx(10.0)
    assert plan.validations == 11  # every epoch, plus the calibration at the end
    assert plan.epochs_in_budget is None
    budgeted = plan_with(GOOD + DEFECT, GOOD + DEFECT, SQUARE, minutes=10, time_budget_min=4.5)
    assert budgeted.epochs_in_budget == 5  # training stops at the first epoch end past the budget
    assert "stops it after about 5 of 10 epochs" in budgeted.report()


def test_dry_run_checks_and_times_without_writing(tiny_mvtec: Path, tmp_path: Path, monkeypatch, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_mvtec, data)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    monkeypatch.chdir(tmp_path)
    args = ["train", "--data", str(data), "--image-size", "32", "--epochs", "3", "--batch-size", "4",
            "--threads", "1", "--dry-run", "--quiet", *TINY_MODEL]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "split  images" in out and "train      10" in out  # the splits training would use
    assert "images: 30, 64x64" in out and "defects:" in out
    assert "estimated run: about" in out and "for 3 epochs (4 validations" in out
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written

    copied = sorted((data / "train" / "good").iterdir())[-1]
    shutil.copy(copied, data / "test" / "good" / "copy_of_a_training_image.png")
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "identical files in two splits: 1 pairs" in out and "copy_of_a_training_image.png" in out
    assert "byte-identical copies" in out  # and the advice says what it does to the metrics

    bad = sorted((data / "train" / "good").iterdir())[0]
    bad.write_bytes(b"not an image")
    assert main(args) == 2  # the same file checks as training, with the same clear error
    assert bad.name in capsys.readouterr().err

    assert main([*args, "--resume"]) == 2
    assert "--dry-run checks new runs" in capsys.readouterr().err


def test_dry_run_of_several_categories(tiny_mvtec: Path, tmp_path: Path, capsys):
    for category in ("wood_a", "wood_b"):
        shutil.copytree(tiny_mvtec, tmp_path / category)
    args = ["train", "--data", str(tmp_path), "--category", "wood_a,wood_b", "--image-size", "32", "--epochs", "1",
            "--threads", "1", "--dry-run", "--quiet", *TINY_MODEL]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "=== wood_a ===" in out and "=== wood_b ===" in out and out.count("estimated run: about") == 2
    assert "all 2 categories: about" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wood_a", "wood_b"]  # nothing written


def test_folder_layout_from_flags(tiny_mvtec: Path, tmp_path: Path, capsys):
    """Plain folders of good and defective images need no YAML file: --good-dir and --defect-dir name them."""
    shutil.copytree(tiny_mvtec / "train" / "good", tmp_path / "ok")
    shutil.copytree(tiny_mvtec / "test" / "crack", tmp_path / "ng")
    args = ["train", "--data", str(tmp_path), "--layout", "folder", "--image-size", "32", "--epochs", "1",
            "--threads", "1", "--dry-run", "--quiet", *TINY_MODEL]
    assert main(args) == 2
    assert "--good-dir" in capsys.readouterr().err  # the error says which flag names the folder
    assert main([*args, "--good-dir", "ok", "--defect-dir", "ng"]) == 0
    out = capsys.readouterr().out
    assert "(layout folder)" in out and "ng 2" in out and "estimated run: about" in out
