"""The whole CLI path on a tiny synthetic dataset: train -> calibrate -> evaluate -> predict."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file

import surfad.training.gradient
from surfad.cli import main

TINY_MODEL = ["--model", "unet_vae", "--param", "base_width=4", "--param", "depth=2", "--param", "skip_levels=[1]", "--param", "latent_channels=4"]


def train_args(data: Path, out: Path, epochs: int = 2, extra: tuple[str, ...] = ()) -> list[str]:
    return ["train", "--data", str(data), "--image-size", "32", "--epochs", str(epochs), "--batch-size", "4",
            "--threads", "1", "--out", str(out), "--quiet", *TINY_MODEL, *extra]


@pytest.fixture(scope="module")
def trained_run(tiny_mvtec: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "run"
    assert main(train_args(tiny_mvtec, run)) == 0
    return run


def test_train_writes_a_complete_bundle(trained_run: Path):
    for name in ("config.yaml", "meta.json", "splits.json", "model.safetensors", "calibration.json", "history.csv",
                 "checkpoints/last.safetensors", "checkpoints/last_state.pt", "history.png"):
        assert (trained_run / name).is_file(), name
    history = (trained_run / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,lr,loss,recon,kl") and len(history) == 3
    assert "val_auroc" in history[0]
    assert list((trained_run / "grids").glob("*.png"))


def test_calibrate_evaluate_predict(trained_run: Path, tiny_mvtec: Path, tmp_path: Path, capsys):
    assert main(["calibrate", str(trained_run), "--strategy", "youden"]) == 0
    calibration = json.loads((trained_run / "calibration.json").read_text())
    assert calibration["strategy"] == "youden" and calibration["split"] == "val"

    out = tmp_path / "eval"
    assert main(["evaluate", str(trained_run), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("image_auroc", "image_ap", "image_f1_max", "threshold", "accuracy", "precision", "recall", "fpr",
                "pixel_auroc", "pixel_ap", "aupro"):
        assert key in metrics
    assert metrics["threshold"] == pytest.approx(calibration["threshold"])
    rows = (out / "per_image.csv").read_text().splitlines()
    assert rows[0] == "path,label,defect_type,score,verdict" and len(rows) == 1 + 12
    defect_types = {row.split(",")[2] for row in rows[1:] if row.split(",")[1] == "1"}
    assert set(metrics["per_type_image_auroc"]) == defect_types
    assert all(0 <= v <= 1 for v in metrics["per_type_image_auroc"].values())
    assert len(defect_types) == 4 and "image AUROC by type: " in capsys.readouterr().out
    report = (out / "report.html").read_text()
    assert "<img" in report and 'alt="Training curves"' in report  # the run's history.csv, drawn
    assert set(metrics["trade_offs"]) >= {"fpr:0.01", "recall:0.95", "f1"} and "Thresholds by calibration rule" in report

    preds = tmp_path / "preds"
    assert main(["predict", str(trained_run), str(tiny_mvtec / "test"), "--out", str(preds), "--quiet", "--threshold", "0"]) == 0
    records = [json.loads(line) for line in (preds / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 12
    for r in records:
        assert set(r) >= {"path", "score", "threshold", "verdict", "regions", "heatmap", "overlay", "mask"}
        assert r["verdict"] == "NG" and r["threshold"] == 0  # --threshold overrides the calibration
        assert Path(r["overlay"]).is_file()
        for region in r["regions"]:
            x0, y0, x1, y1 = region["bbox"]
            assert 0 <= x0 <= x1 < 64 and 0 <= y0 <= y1 < 64  # original-image pixels (64 px), not model input (32)


def test_export_with_skip_connections_agrees_with_torch(trained_run: Path, tiny_mvtec: Path, tmp_path: Path):
    """The tiny preset has no skips; this run (skip level 1) checks their concatenation in the export."""
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    assert yaml.safe_load((run / "config.yaml").read_text())["model_params"]["skip_levels"] == [1]
    assert main(["export", str(run)]) == 0
    images = sorted((tiny_mvtec / "test").rglob("*.png"))[:4]
    from surfad import Detector

    for a, b in zip(Detector.load(run).predict_batch(images), Detector.load(run, runtime="onnx").predict_batch(images)):
        assert b.score == pytest.approx(a.score, abs=1e-4) and a.verdict == b.verdict


def test_scoring_shows_progress_unless_quiet(trained_run: Path, tmp_path: Path, capsys):
    """calibrate and evaluate show a bar (images done of the split, rate) on stderr; --quiet hides it."""
    assert main(["evaluate", str(trained_run), "--out", str(tmp_path / "loud")]) == 0
    err = capsys.readouterr().err
    assert f"score {trained_run.name}" in err and "/12 " in err and "img/s" in err  # the test split: 12 images
    assert main(["calibrate", str(trained_run), "--strategy", "youden"]) == 0
    assert f"score {trained_run.name}" in capsys.readouterr().err
    for verb in (["evaluate", str(trained_run), "--out", str(tmp_path / "quiet")], ["calibrate", str(trained_run)]):
        assert main([*verb, "--quiet"]) == 0
        assert capsys.readouterr().err == ""


def test_info_describes_the_run(trained_run: Path, capsys):
    assert main(["info", str(trained_run)]) == 0
    info = json.loads(capsys.readouterr().out)
    calibration = json.loads((trained_run / "calibration.json").read_text())
    assert info["model"] == "unet_vae" and info["image_size"] == 32 and info["channels"] == 3
    assert info["parameters"] == json.loads((trained_run / "meta.json").read_text())["parameters"] > 0
    assert info["threshold"] == pytest.approx(calibration["threshold"])
    history = list(csv.DictReader((trained_run / "history.csv").open()))
    shipped = [row for row in history if row["best"] == "1"][-1]
    assert info["training"]["epochs_trained"] == 2 and info["training"]["shipped_epoch"] == int(shipped["epoch"])
    assert info["training"]["shipped_validation"]["val_auroc"] == pytest.approx(float(shipped["val_auroc"]))


def test_info_on_a_run_still_training(trained_run: Path, tmp_path: Path, capsys):
    """Before calibration (training still going) info shows the model and progress, no thresholds."""
    run = tmp_path / "training"
    shutil.copytree(trained_run, run)
    (run / "calibration.json").unlink()
    assert main(["info", str(run)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model"] == "unet_vae" and info["threshold"] is None and info["training"]["epochs_trained"] == 2
    assert main(["info", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_detector_in_a_fresh_process(trained_run: Path, tiny_mvtec: Path):
    from surfad import Detector

    image = sorted((tiny_mvtec / "test" / "knot").iterdir())[0]
    expected = Detector.load(trained_run).predict(image)
    code = (f"import json; from surfad import Detector; p = Detector.load({str(trained_run)!r}).predict({str(image)!r}); "
            "print(json.dumps(p.to_dict()))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    got = json.loads(done.stdout)
    assert got["score"] == pytest.approx(expected.score, abs=1e-6)
    assert got["verdict"] == expected.verdict


@pytest.mark.parametrize("extra", [(), ("--ema-decay", "0.9"), ("--tile-scale", "1.0")],
                         ids=["raw", "weight-average", "tiles"])
def test_resume_continues_exactly(tiny_mvtec: Path, tmp_path: Path, monkeypatch, extra: tuple[str, ...]):
    straight = tmp_path / "straight"
    assert main(train_args(tiny_mvtec, straight, epochs=3, extra=extra)) == 0

    real_validate = surfad.training.gradient.validate
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # during epoch 2, before its checkpoint is written
            raise KeyboardInterrupt
        return real_validate(*args, **kwargs)

    resumed = tmp_path / "resumed"
    monkeypatch.setattr(surfad.training.gradient, "validate", interrupted)
    assert main(train_args(tiny_mvtec, resumed, epochs=3, extra=extra)) == 130
    monkeypatch.setattr(surfad.training.gradient, "validate", real_validate)
    assert main(["train", "--out", str(resumed), "--resume", "--quiet"]) == 0

    for weights in ("checkpoints/last.safetensors", "model.safetensors"):  # training state and shipped weights
        a, b = load_file(straight / weights), load_file(resumed / weights)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{weights}: {key}")
    assert (straight / "history.csv").read_text().count("\n") == (resumed / "history.csv").read_text().count("\n")
    shipped, raw = load_file(straight / "model.safetensors"), load_file(straight / "checkpoints" / "last.safetensors")
    averaged = any(not np.array_equal(shipped[k], raw[k]) for k in raw)
    # 3 epochs < select_after: the last epoch is shipped, so only the average can make them differ
    assert averaged == ("--ema-decay" in extra)


def test_bad_input_gets_a_clear_error(tiny_mvtec: Path, tmp_path: Path, capsys):
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")]) == 2
    assert "nowhere" in capsys.readouterr().err

    broken = tmp_path / "broken"
    shutil.copytree(tiny_mvtec, broken)
    bad = sorted((broken / "train" / "good").iterdir())[0]
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert main(train_args(broken, tmp_path / "r1")) == 2
    err = capsys.readouterr().err
    assert bad.name in err and "Traceback" not in err

    assert main(train_args(broken, tmp_path / "r2", epochs=1) + ["--skip-bad"]) == 0
    assert "skipped bad files: 1" in capsys.readouterr().out


def test_existing_run_is_not_overwritten(trained_run: Path, tiny_mvtec: Path, capsys):
    assert main(train_args(tiny_mvtec, trained_run)) == 2
    assert "--resume" in capsys.readouterr().err


def test_recondiff_cli_path_with_seed_flags(tiny_mvtec: Path, tmp_path: Path):
    """Multi-category training with the seed's flags, then calibrate/evaluate/predict with --model recondiff."""
    root = tmp_path / "mvtec"
    root.mkdir()
    (root / "wood").symlink_to(tiny_mvtec)
    out = tmp_path / "runs"
    args = ["train", "--data", str(root), "--category", "wood", "--model", "recondiff", "--image-size", "32",
            "--epochs", "2", "--batch-size", "4", "--threads", "1", "--out", str(out), "--quiet",
            "--validation-period", "1", "--mblock-size", "4,8", "--positive-aug-ratio", "1", "--negative-aug-ratio", "1",
            "--segnet", "siamese", "--param", "base_width=4", "--param", "rec_depth=3", "--param", "seg_base_width=4",
            "--param", "seg_depth=3"]
    assert main(args) == 0
    run = out / "wood"
    config = (run / "config.yaml").read_text()
    assert "segnet: siamese" in config and "mblock_sizes:\n  - 4\n  - 8" in config
    assert "| wood |" in (out / "summary.md").read_text()
    assert main(["calibrate", str(run), "--strategy", "f1", "--checkpoint", "last"]) == 0  # thresholds of `last`
    assert main(["evaluate", str(run), "--checkpoint", "last", "--out", str(tmp_path / "ev")]) == 0
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["checkpoint"] == "last"
    assert main(["calibrate", str(run), "--strategy", "f1"]) == 0  # the shipped weights' again, to predict with
    assert main(["predict", str(run), str(tiny_mvtec / "test" / "good"), "--out", str(tmp_path / "p"), "--quiet"]) == 0
    assert len((tmp_path / "p" / "predictions.jsonl").read_text().splitlines()) == 4


def test_model_flags_belong_to_their_model(tiny_mvtec: Path, tmp_path: Path, capsys):
    assert main(train_args(tiny_mvtec, tmp_path / "r") + ["--segnet", "siamese"]) == 2
    assert "--segnet is an option of model recondiff" in capsys.readouterr().err


def test_preview_defects(tiny_mvtec: Path, tmp_path: Path):
    out = tmp_path / "preview.png"
    assert main(["preview-defects", str(tiny_mvtec / "train" / "good"), "--out", str(out), "-n", "4", "--image-size", "32"]) == 0
    assert out.stat().st_size > 0


def test_test_halves_are_seeded_stratified_and_disjoint():
    from surfad.data.samples import Sample
    from surfad.data.splits import Splits
    from surfad.evaluate import select_split

    test = [Sample(Path(f"g{i}.png"), 0) for i in range(10)] + [Sample(Path(f"d{i}.png"), 1, "x") for i in range(7)]
    splits = Splits(layout="mvtec", root=".", train=[], val=[], test=test, skipped=[])
    a, b = select_split(splits, "test_a", seed=0), select_split(splits, "test_b", seed=0)
    assert {s.path for s in a}.isdisjoint({s.path for s in b}) and len(a) + len(b) == 17
    assert sum(s.label for s in a) == 4 and sum(s.label for s in b) == 3  # stratified by label
    other = select_split(splits, "test_a", seed=1)
    assert {s.path for s in other} != {s.path for s in a}  # the seed matters
    assert {s.path for s in a if s.label == 0} != {Path(f"g{i}.png") for i in range(0, 10, 2)}  # not every other file


def test_empty_validation_split_is_a_clear_error(tiny_mvtec: Path, tmp_path: Path, capsys):
    data = tmp_path / "no_validation"
    shutil.copytree(tiny_mvtec, data, ignore=shutil.ignore_patterns("validation"))
    assert main(train_args(data, tmp_path / "r") + ["--val-ratio", "0"]) == 2
    assert "validation split is empty" in capsys.readouterr().err


def test_yaml_config_with_flag_overrides_is_saved_resolved(tiny_mvtec: Path, tmp_path: Path):
    config = tmp_path / "run.yaml"
    config.write_text(
        "model: unet_vae\n"
        "model_params: {base_width: 4, depth: 2, skip_levels: [1], latent_channels: 4, beta: 0.05}\n"
        f"data: {{path: {tiny_mvtec}, image_size: 32, val_ratio: 0.3}}\n"
        "train: {epochs: 5, batch_size: 4, threads: 1}\n"
    )
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), "--epochs", "1", "--out", str(run), "--quiet"]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 1  # the flag wins over the file
    assert saved["data"]["val_ratio"] == 0.3 and saved["model_params"]["beta"] == 0.05  # the file wins over defaults
    assert saved["data"]["channels"] == 3 and saved["score"]["reduce"] == "topk"  # resolved, not left to defaults
    assert saved["model_params"]["recon_loss"] == "l1"  # every model parameter written out


def test_grayscale_and_odd_sized_images_with_a_colour_model(trained_run: Path):
    from surfad import Detector

    detector = Detector.load(trained_run)
    gray = np.full((45, 130), 128, dtype=np.uint8)
    gray[10:20, 60:80] = 255
    result = detector.predict(gray, threshold=0.0)
    assert result.anomaly_map.shape == (45, 130) and result.mask.shape == (45, 130)
    for region in result.regions:
        x0, y0, x1, y1 = region.bbox
        assert x1 < 130 and y1 < 45


def test_early_epochs_are_not_shipped(tiny_mvtec: Path, tmp_path: Path):
    run = tmp_path / "run"
    assert main(train_args(tiny_mvtec, run, epochs=4) + ["--select-after", "3"]) == 0
    with (run / "history.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert all(not r["best"] for r in rows[:3])  # epochs 1-3 validated but not eligible
    assert rows[3]["best"] == "1" and rows[0]["val_auroc"]


def test_validation_ties_ship_the_later_epoch(tiny_mvtec: Path, tmp_path: Path, monkeypatch):
    real_validate = surfad.training.gradient.validate

    def saturated(*args, **kwargs):
        figures, scored = real_validate(*args, **kwargs)
        return {**figures, "val_auroc": 1.0}, scored  # a validation set every epoch separates perfectly

    monkeypatch.setattr(surfad.training.gradient, "validate", saturated)
    run = tmp_path / "run"
    assert main(train_args(tiny_mvtec, run, epochs=3) + ["--select-after", "0"]) == 0
    with (run / "history.csv").open() as f:
        assert [r["best"] for r in csv.DictReader(f)] == ["1", "1", "1"]
    last = load_file(run / "checkpoints" / "last.safetensors")
    shipped = load_file(run / "model.safetensors")
    for key in last:
        np.testing.assert_array_equal(last[key], shipped[key])


def test_patience_stops_early_and_resume_keeps_it_stopped(tiny_mvtec: Path, tmp_path: Path, monkeypatch, capsys):
    """Validation AUROC falls after epoch 2: with --patience 2 training stops after epoch 4, ships
    epoch 2, and --resume does not train further."""
    real_validate = surfad.training.gradient.validate
    calls = []

    def falling(*args, **kwargs):
        figures, scored = real_validate(*args, **kwargs)
        calls.append(1)
        return {**figures, "val_auroc": [0.5, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3][len(calls) - 1]}, scored

    monkeypatch.setattr(surfad.training.gradient, "validate", falling)
    run = tmp_path / "run"
    assert main(train_args(tiny_mvtec, run, epochs=8) + ["--select-after", "0", "--patience", "2"]) == 0
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"] and rows[1]["best"] == "1"
    assert "stopping early: no better validation for 2 validations (best: epoch 2)" in capsys.readouterr().out
    assert main(["info", str(run)]) == 0
    assert json.loads(capsys.readouterr().out)["training"]["shipped_epoch"] == 2
    assert main(["train", "--out", str(run), "--resume", "--quiet"]) == 0
    assert len(list(csv.DictReader((run / "history.csv").open()))) == 4  # nothing trained
    assert main(train_args(tiny_mvtec, tmp_path / "bad", epochs=2) + ["--patience", "-1"]) == 2


def test_calibrate_and_evaluate_on_folders_of_reviewed_images(trained_run: Path, tiny_mvtec: Path, tmp_path: Path, capsys):
    """Images outside the dataset layout (say, inspections reviewed by people) calibrate and evaluate a run."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    good, defect = tmp_path / "ok", tmp_path / "ng"
    shutil.copytree(tiny_mvtec / "test" / "good", good)
    defect.mkdir()
    for path in sorted((tiny_mvtec / "test").glob("[!g]*/*.png")):
        shutil.copy(path, defect / f"{path.parent.name}_{path.name}")

    before, kept = (run / "calibration.json").read_text(), set((run / "calibrations").glob("*.json"))
    assert main(["calibrate", str(run), "--good", str(good), "--defect", str(defect), "--strategy", "f1", "--quiet"]) == 0
    added = set((run / "calibrations").glob("*.json")) - kept
    assert [p.read_text() for p in added] == [before]  # the replaced calibration is kept
    calibration = json.loads((run / "calibration.json").read_text())
    assert (calibration["n_good"], calibration["n_defect"]) == (4, 8) and str(good) in calibration["split"]
    assert main(["evaluate", str(run), "--good", str(good), "--defect", str(defect), "--quiet"]) == 0
    metrics = json.loads((run / "eval_folders" / "metrics.json").read_text())
    assert metrics["n_images"] == 12 and 0 <= metrics["image_auroc"] <= 1
    capsys.readouterr()

    assert main(["calibrate", str(run), "--good", str(tiny_mvtec / "train" / "good"), "--strategy", "fpr:0.1", "--quiet"]) == 0
    assert "10 of these 12 images were trained on" in capsys.readouterr().err  # the held-out 2 were not
    assert main(["evaluate", str(run), "--good", str(good), "--split", "val"]) == 2
    assert "drop --data, --layout and --split" in capsys.readouterr().err
    assert main(["calibrate", str(run), "--defect", str(tmp_path / "empty")]) == 2
    assert "no images directly in this folder" in capsys.readouterr().err
