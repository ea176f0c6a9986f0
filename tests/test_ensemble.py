"""Fused detectors (`surfad fuse`): the mean of members' standardised outputs, through every verb."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from surfad.cli import main
from surfad.data.splits import Splits
from surfad.detector import Detector
from surfad.detector.fused import FusedDetector, read_stats
from surfad.errors import SurfadError


@pytest.fixture(scope="module")
def members(tiny_run, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Copies of the tiny unet_vae and recondiff runs (same data and splits), safe to export into."""
    folder = tmp_path_factory.mktemp("members")
    return [Path(shutil.copytree(tiny_run(model), folder / model)) for model in ("unet_vae", "recondiff")]


@pytest.fixture(scope="module")
def fused(members: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fused") / "fused"
    assert main(["fuse", *map(str, members), "--out", str(out)]) == 0
    return out


def test_fused_outputs_are_the_mean_of_standardised_member_outputs(fused: Path, members: list[Path], tiny_mvtec: Path):
    detector = Detector.load(fused)
    assert isinstance(detector, FusedDetector)
    stats = read_stats(fused)
    images = sorted((tiny_mvtec / "test").rglob("*.png"))[:5]
    singles = [Detector.load(m).predict_batch(images) for m in members]
    for i, result in enumerate(detector.predict_batch(images)):
        score = np.mean([(p[i].score - s.score_mean) / s.score_std for s, p in zip(stats, singles)])
        amap = np.mean([(p[i].anomaly_map - s.map_mean) / s.map_std for s, p in zip(stats, singles)], axis=0)
        assert result.score == pytest.approx(score, rel=1e-5, abs=1e-5)
        np.testing.assert_allclose(result.anomaly_map, amap, rtol=1e-5, atol=1e-5)
        assert result.verdict == ("NG" if result.score > detector.threshold else "OK")


def test_fused_standardisation_comes_from_validation_good_images(fused: Path, members: list[Path]):
    detector = Detector.load(fused)
    good = [s for s in Splits.load(fused / "splits.json").get("val") if s.label == 0]
    for member, stats in zip(detector.members, read_stats(fused)):
        scored, _ = member.score_samples(good)
        assert stats.score_mean == pytest.approx(float(scored.scores.mean()), rel=1e-5)
        assert stats.map_std == pytest.approx(float(scored.maps.std()), rel=1e-4)
    calibration = json.loads((fused / "calibration.json").read_text())
    assert calibration["strategy"] == "f1" and calibration["split"] == "val"  # tiny_mvtec has real validation defects


def test_fused_detector_through_every_verb(fused: Path, members: list[Path], tiny_mvtec: Path, tmp_path: Path, capsys):
    assert main(["info", str(fused)]) == 0
    described = json.loads(capsys.readouterr().out)
    assert [m["model"] for m in described["members"]] == ["unet_vae", "recondiff"]
    assert all(m["training"]["shipped_epoch"] >= 1 for m in described["members"])
    assert main(["calibrate", str(fused), "--strategy", "fpr:0.1"]) == 0
    assert json.loads((fused / "calibration.json").read_text())["strategy"] == "fpr:0.1"
    assert main(["evaluate", str(fused), "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["model"] == "fused(unet_vae, recondiff)" and metrics["n_images"] == 12 and "aupro" in metrics
    assert main(["predict", str(fused), str(tiny_mvtec / "test"), "--out", str(tmp_path / "pred"), "--quiet"]) == 0
    assert len((tmp_path / "pred" / "predictions.jsonl").read_text().splitlines()) == 12

    assert main(["export", str(fused)]) == 0
    assert all((m / "model.onnx").is_file() for m in members)
    images = sorted((tiny_mvtec / "test").rglob("*.png"))
    for a, b in zip(Detector.load(fused).predict_batch(images), Detector.load(fused, runtime="onnx").predict_batch(images)):
        assert abs(a.score - b.score) <= 1e-3 and a.verdict == b.verdict  # standardised units: members' 1e-4 scaled up

    from fastapi.testclient import TestClient

    from surfad.serve.app import create_app

    info = TestClient(create_app(Detector.load(fused))).get("/model").json()
    assert info["model"] == "fused(unet_vae, recondiff)" and len(info["members"]) == 2


def test_runs_with_other_splits_are_refused(members: list[Path], tmp_path: Path, capsys):
    other = Path(shutil.copytree(members[1], tmp_path / "other"))
    splits = json.loads((other / "splits.json").read_text())
    splits["test"] = splits["test"][1:]
    (other / "splits.json").write_text(json.dumps(splits))
    assert main(["fuse", str(members[0]), str(other), "--out", str(tmp_path / "fused")]) == 2
    err = capsys.readouterr().err
    assert "other" in err and "test split" in err and "Traceback" not in err
    assert not (tmp_path / "fused").exists()


@pytest.mark.parametrize("field,value", [("score_std", float("nan")), ("map_mean", float("inf")), ("score_std", 0.0)])
def test_unusable_member_statistics_are_refused_when_read(fused: Path, tmp_path: Path, capsys, field: str, value: float):
    """Before: a NaN spread in ensemble.json loaded, the service started, and every image then failed."""
    tampered = Path(shutil.copytree(fused, tmp_path / "fused"))
    record = json.loads((tampered / "ensemble.json").read_text())
    record["members"][1][field] = value
    (tampered / "ensemble.json").write_text(json.dumps(record))
    with pytest.raises(SurfadError, match=f"{field}="):
        Detector.load(tampered)
    assert main(["info", str(tampered)]) == 2
    assert field in capsys.readouterr().err


def test_members_inspecting_different_regions_are_refused(members: list[Path], tmp_path: Path, capsys):
    """Before: the fused regions and outline followed the first member's ROI while the others' maps
    still counted outside it."""
    other = Path(shutil.copytree(members[1], tmp_path / "other"))
    roi = np.zeros((64, 64), np.uint8)
    roi[:, :32] = 255
    cv2.imwrite(str(other / "roi.png"), roi)
    assert main(["fuse", str(members[0]), str(other), "--out", str(tmp_path / "fused")]) == 2
    assert "different regions of interest" in capsys.readouterr().err
    assert not (tmp_path / "fused").exists()
