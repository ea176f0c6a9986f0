"""Images kept at their own shape: data.geometry decides between squashing and tiling from the
training images, the dry run says what and why, and a wide (4:1) dataset works end to end."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from surfad import bundle
from surfad.cli import main
from surfad.config import DataConfig, RunConfig
from surfad.data.geometry import TILE_ASPECT, choose_geometry
from surfad.detector import Detector
from surfad.data.splits import Splits
from surfad.errors import SurfadError
from surfad.training import resolve_config


def test_near_square_images_are_squashed_and_far_from_square_ones_tiled() -> None:
    square = choose_geometry([(300, 280), (250, 260), (400, 300)], 224, "auto", 0.0)
    assert (square.mode, square.tile_scale) == ("squash", 0.0) and "near square" in square.why
    wide = choose_geometry([(1250, 500)] * 5, 224, "auto", 0.0)
    assert wide.mode == "tile" and wide.tile_scale == pytest.approx(224 / 500, rel=1e-3)
    assert "far from square" in wide.why and "2.50" in wide.why
    tall = choose_geometry([(500, 1250)] * 3 + [(520, 1300)] * 2, 224, "auto", 0.0)
    assert tall.mode == "tile" and tall.tile_scale == pytest.approx(224 / 500, rel=1e-3)
    edge = choose_geometry([(int(100 * TILE_ASPECT), 100)], 50, "auto", 0.0)
    assert edge.mode == "tile"  # the limit itself tiles
    assert choose_geometry([(1250, 500)], 224, "squash", 0.0).mode == "squash"
    assert choose_geometry([(300, 300)], 224, "tile", 0.0).tile_scale == pytest.approx(224 / 300, rel=1e-3)
    assert choose_geometry([(300, 300)], 224, "auto", 0.5).tile_scale == 0.5
    with pytest.raises(SurfadError, match="geometry=squash with data.tile_scale"):
        resolve_config(RunConfig(data=DataConfig(path="x", geometry="squash", tile_scale=0.5, channels=1)),
                       Splits("folder", "x", [], [], []))


@pytest.fixture(scope="module")
def wide_data(tiny_mvtec: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny_mvtec as 256 x 64 boards: four of its images side by side (a defect image first, then
    good ones), with the masks placed the same way."""
    root = tmp_path_factory.mktemp("wide") / "boards"
    goods = sorted((tiny_mvtec / "train" / "good").glob("*.png"))
    read = lambda p: cv2.imread(str(p))  # noqa: E731
    for i in range(len(goods)):
        row = [read(goods[(i + k) % len(goods)]) for k in range(4)]
        (root / "train/good").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "train/good" / f"{i:03d}.png"), np.concatenate(row, axis=1))
    for folder in sorted((tiny_mvtec / "test").iterdir()):
        for j, path in enumerate(sorted(folder.glob("*.png"))):
            row = [read(path)] + [read(goods[(j + k) % len(goods)]) for k in range(3)]
            (root / "test" / folder.name).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / "test" / folder.name / path.name), np.concatenate(row, axis=1))
            mask = tiny_mvtec / "ground_truth" / folder.name / f"{path.stem}_mask.png"
            if mask.is_file():
                wide = np.zeros((64, 256), np.uint8)
                wide[:, :64] = cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE)
                (root / "ground_truth" / folder.name).mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(root / "ground_truth" / folder.name / mask.name), wide)
    return root


def test_a_wide_dataset_is_tiled_end_to_end_in_both_runtimes(wide_data: Path, tmp_path: Path, capsys) -> None:
    """Broken: wide images squashed by default, a dry run that does not say so, tiles that do not
    cover the image (maps or masks at another size than the image's), or runtimes that disagree."""
    args = ["--data", str(wide_data), "--model", "padim", "--preset", "tiny", "--image-size", "32", "--threads", "1",
            "--quiet"]
    assert main(["train", *args, "--dry-run"]) == 0
    assert "far from square (median long/short side 4.00" in capsys.readouterr().out
    run = tmp_path / "run"
    assert main(["train", *args, "--out", str(run)]) == 0
    config = RunConfig.load(run / bundle.CONFIG)
    assert config.data.geometry == "tile" and config.data.tile_scale == pytest.approx(0.5)
    assert main(["export", str(run)]) == 0
    roi = np.zeros((16, 64), np.uint8)
    roi[:, :40] = 255
    cv2.imwrite(str(tmp_path / "roi.png"), roi)
    assert main(["calibrate", str(run), "--roi", str(tmp_path / "roi.png"), "--strategy", "fpr:0.1", "--quiet"]) == 0
    images = sorted((wide_data / "test").rglob("*.png"))
    results = {}
    for runtime in ("torch", "onnx"):
        detector = Detector.load(run, runtime=runtime, roi=tmp_path / "roi.png")
        results[runtime] = detector.predict_batch(images)
    for torch_pred, onnx_pred in zip(results["torch"], results["onnx"]):
        assert torch_pred.anomaly_map.shape == torch_pred.mask.shape == (64, 256)
        assert abs(torch_pred.score - onnx_pred.score) <= 1e-4 * max(1.0, abs(torch_pred.score))
        assert torch_pred.verdict == onnx_pred.verdict
        assert not torch_pred.mask[:, 161:].any() and not torch_pred.anomaly_map[:, 161:].any()
    metrics_out = tmp_path / "eval"
    assert main(["evaluate", str(run), "--roi", str(tmp_path / "roi.png"), "--out", str(metrics_out), "--quiet"]) == 0
    assert json.loads((metrics_out / "metrics.json").read_text())["image_auroc"] >= 0.7
