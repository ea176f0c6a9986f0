"""The whole CLI path with a fitted model (patchcore): fit, calibrate, evaluate, predict, export, fuse,
info and the dry run; on colour, grayscale and tiled data."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from surfad import bundle
from surfad.cli import main
from surfad.detector import Detector
from surfad.export.onnx import parity_bound

FIT = ["--image-size", "32", "--batch-size", "4", "--threads", "1", "--quiet", "--preset", "tiny"]


def fit_args(data: Path, out: Path, model: str = "patchcore", *extra: str) -> list[str]:
    return ["train", "--model", model, "--data", str(data), "--out", str(out), *FIT, *extra]


@pytest.fixture(scope="module")
def fitted_run(tiny_mvtec: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("fitted") / "run"
    assert main(fit_args(tiny_mvtec, run)) == 0
    return run


def test_fit_writes_a_complete_bundle_with_one_history_row(fitted_run: Path, capsys) -> None:
    for name in ("config.yaml", "meta.json", "splits.json", "model.safetensors", "calibration.json", "history.csv",
                 "history.png"):
        assert (fitted_run / name).is_file(), name
    assert not (fitted_run / bundle.LAST_STATE).exists()  # no epochs, no optimiser to resume
    (row,) = list(csv.DictReader((fitted_run / "history.csv").open()))
    assert row["best"] == "1" and float(row["val_auroc"]) > 0 and int(row["bank"]) > 0
    meta = json.loads((fitted_run / "meta.json").read_text())
    assert meta["fit"]["bank"] == int(row["bank"]) and meta["fit"]["patches"] == 10 * 64  # 10 images, an 8x8 grid (stride 4)
    assert main(["info", str(fitted_run)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model"] == "patchcore" and info["training"]["shipped_epoch"] == 1 and info["threshold"] > 0


def test_calibrate_evaluate_predict_export_and_onnx_agree(fitted_run: Path, tiny_mvtec: Path, tmp_path: Path) -> None:
    assert main(["calibrate", str(fitted_run), "--strategy", "youden", "--quiet"]) == 0
    out = tmp_path / "eval"
    assert main(["evaluate", str(fitted_run), "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "patchcore" and 0 <= metrics["aupro"] <= 1
    assert main(["export", str(fitted_run)]) == 0
    parity = json.loads((fitted_run / "export.json").read_text())["parity"]
    assert max(parity["max_abs_diff_map"], parity["max_abs_diff_score"]) <= parity_bound(parity["output_scale"])
    for runtime in ("torch", "onnx"):
        preds = tmp_path / runtime
        assert main(["predict", str(fitted_run), str(tiny_mvtec / "test"), "--out", str(preds), "--runtime", runtime,
                     "--quiet"]) == 0
    torch_records = [json.loads(line) for line in (tmp_path / "torch" / "predictions.jsonl").read_text().splitlines()]
    onnx_records = [json.loads(line) for line in (tmp_path / "onnx" / "predictions.jsonl").read_text().splitlines()]
    assert len(torch_records) == 12
    for a, b in zip(torch_records, onnx_records):
        assert a["verdict"] == b["verdict"] and b["score"] == pytest.approx(a["score"], rel=1e-4, abs=1e-4)


def test_fuse_a_fitted_and_a_trained_run(fitted_run: Path, tiny_run, tmp_path: Path) -> None:
    fused = tmp_path / "fused"
    assert main(["fuse", str(fitted_run), str(tiny_run("unet_vae")), "--out", str(fused), "--quiet"]) == 0
    detector = Detector.load(fused)
    assert detector.name == "fused(patchcore, unet_vae)"
    assert detector.predict(np.full((40, 50, 3), 128, np.uint8)).verdict in ("OK", "NG")


def test_grayscale_data_fits_a_one_channel_model(tiny_gray: Path, tmp_path: Path) -> None:
    run = tmp_path / "gray"
    assert main(fit_args(tiny_gray, run)) == 0
    config = json.loads((run / "meta.json").read_text())
    assert config["channels"] == 1
    assert main(["export", str(run)]) == 0
    image = cv2.imread(str(next((tiny_gray / "test" / "knot").iterdir())), cv2.IMREAD_UNCHANGED)
    torch_prediction = Detector.load(run).predict(image)  # HxW uint8
    onnx_prediction = Detector.load(run, runtime="onnx").predict(image[:, :, None])  # HxWx1
    assert onnx_prediction.score == pytest.approx(torch_prediction.score, rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("model", ["patchcore", "padim"])
def test_tiled_fitting_uses_every_tile(tiny_mvtec: Path, tmp_path: Path, model: str) -> None:
    run = tmp_path / model
    assert main(fit_args(tiny_mvtec, run, model, "--tile-scale", "1.0", "--tile-stride", "16")) == 0
    fit = json.loads((run / "meta.json").read_text())["fit"]
    # 64 px images at scale 1, 32 px tiles 16 apart: 3 x 3 tiles each, 10 training images
    assert fit.get("images", fit.get("patches", 0) // 64) == 90
    prediction = Detector.load(run).predict(np.full((70, 90, 3), 100, np.uint8))
    assert prediction.anomaly_map.shape == (70, 90)


def test_dry_run_shows_the_bank_memory_and_time(tiny_mvtec: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "never"
    assert main(fit_args(tiny_mvtec, out, "patchcore", "--dry-run")) == 0
    text = capsys.readouterr().out
    assert "memory bank:" in text and "GiB" in text and "fitting about" in text and "estimated run" in text
    assert not out.exists()


def test_python_dash_m_runs_the_cli(fitted_run: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "surfad", "info", str(fitted_run)], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0 and json.loads(done.stdout)["model"] == "patchcore"


@pytest.mark.parametrize("model", ["padim", "patchcore"])
def test_categories_and_the_folder_layout_fit_like_any_run(tiny_mvtec: Path, tmp_path: Path, model: str) -> None:
    """Broken: a fitted model assuming the mvtec layout or one run per call (`--category` loops and
    writes summary.md; plain good/defect folders need no YAML)."""
    root = tmp_path / "classes"
    for category in ("wood_a", "wood_b"):
        shutil.copytree(tiny_mvtec, root / category)
    assert main(fit_args(root, tmp_path / "runs", model, "--category", "wood_a,wood_b")) == 0
    summary = (tmp_path / "runs" / "summary.md").read_text()
    assert "wood_a" in summary and "wood_b" in summary
    assert all((tmp_path / "runs" / c / bundle.CALIBRATION).is_file() for c in ("wood_a", "wood_b"))

    folders = tmp_path / "folders"
    shutil.copytree(tiny_mvtec / "train" / "good", folders / "ok")
    shutil.copytree(tiny_mvtec / "test" / "crack", folders / "ng")
    run = tmp_path / "folder_run"
    assert main(fit_args(folders, run, model, "--layout", "folder", "--good-dir", "ok", "--defect-dir", "ng")) == 0
    assert Detector.load(run).config.data.layout == "folder"
    assert main(["evaluate", str(run), "--quiet", "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n_images"] > 0 and 0.0 <= metrics["image_auroc"] <= 1.0
