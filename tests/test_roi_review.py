"""A region of interest (the map outside it is ignored) and the OK / REVIEW / NG band."""

from __future__ import annotations

import dataclasses
import html
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from safetensors.torch import load_file

from surfad import bundle
from surfad.batch_predict import JSONL, predict_files
from surfad.calibrate import Calibration, review_band
from surfad.cli import main
from surfad.config import RunConfig
from surfad.data.roi import InputFill, load_roi, resize_roi, roi_fingerprint
from surfad.data.splits import Splits
from surfad.detector import Detector
from surfad.errors import SurfadError
from surfad.metrics import band_rates, pixel_metrics
from surfad.models import available_models
from surfad.serve.app import create_app
from surfad.training import train
from surfad.verdict import verdict
from surfad.visualize import ROI_COLOUR, overlay


def left_half_roi(path: Path, width: int = 128, height: int = 128) -> Path:
    roi = np.zeros((height, width), np.uint8)
    roi[:, : width // 2] = 255
    cv2.imwrite(str(path), roi)
    return path


def with_square(image: np.ndarray, x: int, y: int = 24, side: int = 16) -> np.ndarray:
    out = image.copy()
    out[y : y + side, x : x + side] = 255
    return out


@pytest.fixture(scope="module")
def clean_image(tiny_mvtec: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(sorted((tiny_mvtec / "test" / "good").iterdir())[0])), cv2.COLOR_BGR2RGB)


# --- region of interest -------------------------------------------------------------------------


@pytest.mark.parametrize("model", available_models())
def test_a_defect_outside_the_roi_leaves_the_verdict_and_one_inside_changes_it(model, tiny_run, clean_image,
                                                                              tmp_path: Path):
    """Nothing outside the ROI changes a score, not even through the model's receptive field (the
    square at x=44 starts 12 px from the ROI's edge at 32). Broken: the ROI applied to masks only,
    the input not filled outside it (data.roi_fill), or no ROI at all."""
    roi = left_half_roi(tmp_path / "roi.png")
    for runtime in ("torch", "onnx"):
        # calibrated=False: the run was calibrated on the whole image, and this test sets thresholds itself
        detector = Detector.load(tiny_run(model), runtime=runtime, roi=roi, calibrated=False)
        clean, outside, inside = (p.score for p in detector.predict_batch(
            [clean_image, with_square(clean_image, 44), with_square(clean_image, 4)], threshold=0.0))
        assert outside == pytest.approx(clean, rel=1e-6, abs=1e-6), (runtime, clean, outside)
        # inside, the square reaches the score (a one-epoch recondiff barely reacts, in either direction)
        assert abs(inside - clean) > 1e-6 * max(1.0, abs(clean)), (runtime, clean, inside)
        between = clean + (inside - clean) / 2
        verdicts = [p.verdict for p in detector.predict_batch(
            [clean_image, with_square(clean_image, 44), with_square(clean_image, 4)], threshold=between)]
        assert verdicts == (["OK", "OK", "NG"] if inside > clean else ["NG", "NG", "OK"]), runtime
        no_roi = Detector.load(tiny_run(model), runtime=runtime, roi="none")
        assert no_roi.predict(with_square(clean_image, 44), threshold=0.0).score != outside


def test_masks_regions_and_maps_stay_inside_the_roi(tiny_run, clean_image, tmp_path: Path) -> None:
    """Broken: the map at the image's size not zeroed outside (resizing spreads values across the
    edge), or regions found outside the region (seen when a pixel threshold is at or below zero)."""
    detector = Detector.load(tiny_run(), roi=left_half_roi(tmp_path / "roi.png"), calibrated=False)
    prediction = detector.predict(with_square(with_square(clean_image, 44), 4), threshold=-1.0)
    assert prediction.verdict == "NG" and not prediction.anomaly_map[:, 32:].any()  # zero outside, to the pixel
    assert not prediction.mask[:, 32:].any()
    assert all(r.bbox[2] < 32 for r in prediction.regions)
    detector.calibration = dataclasses.replace(detector.calibration, pixel_threshold=-1.0)  # every pixel above it
    everything = detector.predict(clean_image, threshold=-1.0)
    assert everything.mask[:, :32].all() and not everything.mask[:, 32:].any()
    assert [r.bbox for r in everything.regions] == [[0, 0, 31, 63]]
    picture = overlay(clean_image, prediction.anomaly_map, 1.0, roi=detector.roi)
    assert (picture == ROI_COLOUR).all(axis=2).any()  # the outline is drawn


def test_a_roi_given_at_training_is_kept_and_used_everywhere(tiny_mvtec: Path, tmp_path: Path, capsys) -> None:
    roi = left_half_roi(tmp_path / "mask.png", 64, 64)
    run = tmp_path / "run"
    args = ["train", "--data", str(tiny_mvtec), "--out", str(run), "--epochs", "1", "--preset", "tiny",
            "--image-size", "32", "--batch-size", "4", "--quiet", "--roi", str(roi)]
    assert main(args) == 0
    roi.unlink()  # the run keeps its own copy
    assert (run / bundle.ROI).is_file()
    assert Detector.load(run).roi is not None and Detector.load(run, roi="none", calibrated=False).roi is None
    assert main(["evaluate", str(run), "--out", str(tmp_path / "eval"), "--quiet"]) == 0
    out = tmp_path / "pred"
    assert main(["predict", str(run), str(tiny_mvtec / "test"), "--out", str(out), "--quiet", "--threshold", "-1"]) == 0
    for record in map(json.loads, (out / JSONL).read_text().splitlines()):
        assert all(r["bbox"][2] < 32 for r in record["regions"])


def test_a_tiled_run_validates_calibrates_and_inspects_inside_its_roi(tiny_mvtec: Path, tmp_path: Path,
                                                                     clean_image) -> None:
    """Broken: the ROI dropped by the tiled scoring path, or validation (and so the calibration's
    good-score statistics) computed on the whole image while inspection uses the ROI."""
    roi = left_half_roi(tmp_path / "roi.png", 64, 64)
    config = RunConfig.from_dict({
        "model": "padim", "model_params": {"preset": "tiny"},
        "data": {"path": str(tiny_mvtec), "image_size": 16, "tile_scale": 0.5, "roi": str(roi)},
        "train": {"threads": 1, "device": "cpu"},
        # The mean of the map, not its maximum: it changes with the region whatever the images hold.
        "score": {"reduce": "mean"},
    })
    run = train(config, tmp_path / "run", progress=False)
    detector = Detector.load(run)
    clean, outside, inside = (p.score for p in detector.predict_batch(
        [clean_image, with_square(clean_image, 44), with_square(clean_image, 4)], threshold=0.0))
    assert outside == pytest.approx(clean, rel=1e-6) and inside - clean > 1e-3 * abs(clean), (clean, outside, inside)
    assert not detector.predict(with_square(clean_image, 44), threshold=0.0).anomaly_map[:, 33:].any()
    # The shipped calibration's good-score statistics are those of the ROI's scores, not the whole image's.
    good = [s for s in Splits.load(run / bundle.SPLITS).val if s.label == 0]
    calibration = Calibration.load(run / bundle.CALIBRATION)
    within = detector.score_samples(good)[0].scores
    whole = Detector.load(run, roi="none", calibrated=False).score_samples(good)[0].scores
    assert calibration.normal_stats["mean"] == pytest.approx(float(within.mean()), rel=1e-4)
    assert abs(float(whole.mean()) - float(within.mean())) > 1e-3 * abs(float(within.mean()))


@pytest.mark.parametrize("mode", ["nearest", "mean"])
def test_the_input_fill_depends_on_the_inside_only(mode: str) -> None:
    """Broken: a fill that keeps some outside pixels, reads them, or changes pixels inside."""
    rng = np.random.default_rng(0)
    roi = np.zeros((20, 30), bool)
    roi[4:15, 5:20] = True
    image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)  # the ROI is resized to the image (2x)
    other = rng.integers(0, 256, image.shape, dtype=np.uint8)
    inside = resize_roi(roi, 40, 60)
    other[inside] = image[inside]
    fill = InputFill(roi, mode)
    filled = fill(image)
    assert np.array_equal(filled, fill(other))
    assert np.array_equal(filled[inside], image[inside])
    if mode == "nearest":
        assert np.array_equal(filled[0, 0], image[8, 10]) and np.array_equal(filled[20, 59], image[20, 39])
    else:
        assert np.allclose(filled[~inside], image[inside].mean(axis=0), atol=0.5)


def test_what_lies_outside_the_roi_does_not_reach_the_fitted_model(tiny_mvtec: Path, tmp_path: Path) -> None:
    """Training fills the images outside the ROI as inference does: a copy of the dataset whose training
    images hold other things outside the ROI gives exactly the same model. Broken: the fill applied at
    inference only (the model would learn the outside), or not at all."""
    roi = left_half_roi(tmp_path / "roi.png", 64, 64)
    changed = tmp_path / "changed"
    shutil.copytree(tiny_mvtec, changed)
    rng = np.random.default_rng(0)
    for path in (changed / "train" / "good").iterdir():
        image = cv2.imread(str(path))
        image[:, 32:] = rng.integers(0, 256, image[:, 32:].shape, dtype=np.uint8)
        cv2.imwrite(str(path), image)

    def fitted(data: Path, out: Path) -> dict[str, torch.Tensor]:
        config = RunConfig.from_dict({"model": "padim", "model_params": {"preset": "tiny"},
                                      "data": {"path": str(data), "image_size": 32, "roi": str(roi)},
                                      "train": {"threads": 1, "device": "cpu"}})
        return load_file(str(train(config, out, progress=False) / bundle.WEIGHTS))

    same, other = fitted(tiny_mvtec, tmp_path / "a"), fitted(changed, tmp_path / "b")
    assert all(torch.equal(same[k], other[k]) for k in same)


def test_roi_errors_name_the_file_and_the_problem(tiny_run, clean_image, tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    cv2.imwrite(str(empty), np.zeros((64, 64), np.uint8))
    with pytest.raises(SurfadError, match="empty.png: the region of interest is empty"):
        Detector.load(tiny_run(), roi=empty)
    wide = left_half_roi(tmp_path / "wide.png", 200, 50)
    detector = Detector.load(tiny_run(), roi=wide, calibrated=False)
    with pytest.raises(SurfadError, match="the image is 64x64 but the region of interest is 200x50"):
        detector.predict(clean_image)
    with pytest.raises(SurfadError, match="region of interest: .*missing.png: file not found"):
        Detector.load(tiny_run(), roi=tmp_path / "missing.png")


def test_an_image_of_another_shape_than_the_roi_is_a_bad_input(tiny_run, tiny_mvtec: Path, clean_image,
                                                              tmp_path: Path) -> None:
    """Before: the service answered 500 (internal error) and a batch stopped at the image for good."""
    run = Path(shutil.copytree(tiny_run(), tmp_path / "run"))
    roi = left_half_roi(tmp_path / "roi.png")
    assert main(["calibrate", str(run), "--roi", str(roi), "--quiet"]) == 0
    detector = Detector.load(run, roi=roi)
    wide = np.ascontiguousarray(np.concatenate([clean_image, clean_image], axis=1))  # 128 x 64: twice as wide
    client = TestClient(create_app(detector))
    answer = client.post("/predict", files={"file": ("wide.png", cv2.imencode(".png", wide)[1].tobytes(), "image/png")})
    assert answer.status_code == 422 and "wide.png: the image is 128x64" in answer.json()["detail"]
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a_wide.png"), wide)
    cv2.imwrite(str(images / "b_good.png"), clean_image)
    counts = predict_files(detector, [str(images)], tmp_path / "pred", progress=False)
    assert counts["failed"] == 1 and counts["done"] == 1
    assert "a_wide.png" in (tmp_path / "pred" / "errors.jsonl").read_text()


def test_thresholds_are_used_only_with_the_region_they_were_calibrated_in(tiny_run, tiny_mvtec: Path,
                                                                         tmp_path: Path, capsys) -> None:
    """Broken: calibration.json not recording the region, so thresholds chosen on whole-image scores
    judge the lower scores of a smaller region (and pass parts they should not)."""
    run = tiny_run()
    roi = left_half_roi(tmp_path / "roi.png")
    with pytest.raises(SurfadError, match="calibrated on scores in another region of interest"):
        Detector.load(run, roi=roi)
    out = tmp_path / "pred"
    assert main(["predict", str(run), str(tiny_mvtec / "test"), "--roi", str(roi), "--out", str(out), "--quiet"]) == 2
    assert "calibrate with this region first" in capsys.readouterr().err.lower()
    # Calibrated with the region (on a copy), the run judges with it, and no longer without it.
    copy = Path(shutil.copytree(run, tmp_path / "copy"))
    assert main(["calibrate", str(copy), "--roi", str(roi), "--quiet"]) == 0
    assert Calibration.load(copy / bundle.CALIBRATION).roi == roi_fingerprint(load_roi(roi))
    assert main(["predict", str(copy), str(tiny_mvtec / "test"), "--roi", str(roi), "--out", str(out), "--quiet"]) == 0
    first = json.loads((out / JSONL).read_text().splitlines()[0])
    drawn = cv2.cvtColor(cv2.imread(first["overlay"]), cv2.COLOR_BGR2RGB)
    assert (drawn == ROI_COLOUR).all(axis=2).any()  # the gallery's overlays outline the region
    assert main(["evaluate", str(copy), "--roi", str(roi), "--out", str(tmp_path / "eval"), "--quiet"]) == 0
    with pytest.raises(SurfadError, match="another region of interest"):
        Detector.load(copy)
    # A calibration.json written before regions were recorded is trusted with any region.
    legacy = Calibration.load(copy / bundle.CALIBRATION)
    legacy.roi = None
    legacy.save(copy / bundle.CALIBRATION)
    assert Detector.load(copy).roi is None and Detector.load(copy, roi=roi).roi is not None


def test_pixel_metrics_count_only_pixels_inside_the_roi() -> None:
    maps = np.zeros((2, 8, 8))
    masks = np.zeros((2, 8, 8), bool)
    masks[0, 1:3, 1:3] = True
    maps[0, 1:3, 1:3] = 1.0  # found
    masks[1, 1:3, 6:8] = True  # a defect outside the ROI, missed: it must not count
    valid = np.zeros((8, 8), bool)
    valid[:, :5] = True
    inside = pixel_metrics(maps, masks, valid=valid)
    assert inside["pixel_auroc"] == 1.0 and inside["aupro"] == pytest.approx(1.0)
    assert pixel_metrics(maps, masks)["aupro"] < 1.0


# --- review band ----------------------------------------------------------------------------------


def test_three_verdicts_at_the_boundaries() -> None:
    band = [0.3, 0.7]
    assert [verdict(s, 0.5, band) for s in (0.3, 0.3000001, 0.7, 0.7000001, -1.0, 9.0)] == \
        ["OK", "REVIEW", "REVIEW", "NG", "OK", "NG"]
    assert verdict(0.6, 0.5) == "NG"  # without a band, the threshold alone


def test_band_rules_and_their_errors() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.45, 0.7, 0.8, 0.9])
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
    low, high = review_band(scores, labels, "recall:1,fpr:0")
    assert low < 0.45 and 0.6 < high < 0.7  # every defect above low; no good part above high
    assert review_band(scores, labels, "0.2, 0.65") == [0.2, 0.65]
    with pytest.raises(SurfadError, match="low threshold .* is above the high one"):
        review_band(scores, labels, "fpr:0,recall:1")
    with pytest.raises(SurfadError, match="expected LOW,HIGH"):
        review_band(scores, labels, "recall:0.99")
    rates = band_rates(scores, labels, 0.42, 0.65)
    assert rates["n_review"] == 3 and rates["review_share"] == pytest.approx(0.3)  # 0.45, 0.5, 0.6
    assert rates["n_escapes"] == 0 and rates["n_false_rejects"] == 0
    tight = band_rates(scores, labels, 0.5, 0.55)
    assert tight["escapes"] == pytest.approx(1 / 4) and tight["false_rejects"] == pytest.approx(1 / 6)
    with pytest.raises(SurfadError, match="low threshold is above"):
        Calibration(0.5, "f1", 0.5, "val", 6, 4, {}, review=[0.7, 0.3])


@pytest.fixture()
def banded_run(tiny_run, tmp_path: Path) -> Path:
    run = Path(shutil.copytree(tiny_run(), tmp_path / "run"))
    assert main(["calibrate", str(run), "--split", "test", "--review", "recall:1,fpr:0", "--quiet"]) == 0
    return run


def by_hand(score: float, low: float, high: float) -> str:
    """The band's verdict spelled out here, not taken from surfad.verdict: OK at or below low, NG above high."""
    if score > high:
        return "NG"
    return "OK" if score <= low else "REVIEW"


def test_review_band_through_calibrate_predict_evaluate(banded_run: Path, tiny_mvtec: Path, tmp_path: Path) -> None:
    calibration = json.loads((banded_run / bundle.CALIBRATION).read_text())
    low, high = calibration["review"]
    assert calibration["review_strategy"] == "recall:1,fpr:0" and low <= high
    sort = tmp_path / "sorted"
    out = tmp_path / "pred"
    counts = predict_files(Detector.load(banded_run), [str(tiny_mvtec / "test")], out, progress=False, sort_into=sort)
    records = [json.loads(line) for line in (out / JSONL).read_text().splitlines()]
    for record in records:
        assert record["review"] == [low, high]
        assert record["verdict"] == by_hand(record["score"], low, high)
    # The band was chosen on these images: every defect at or above low, every good part at or below high.
    for record in records:
        defective = "/good/" not in record["path"]
        assert record["verdict"] != ("OK" if defective else "NG"), record
    in_review = [r for r in records if r["verdict"] == "REVIEW"]
    assert in_review and counts["review"] == len(in_review)  # this split's scores overlap: some go to a person
    for name in ("OK", "REVIEW", "NG"):
        assert len(list((sort / name).iterdir())) == sum(r["verdict"] == name for r in records)
    page = (out / "index.html").read_text()
    review_part = page[page.index(f"REVIEW ({len(in_review)})"):page.index("NG (")]  # grouped first
    assert review_part.count('class="card"') == len(in_review)
    assert all(html.escape(r["path"]) in review_part for r in in_review)
    metrics_out = tmp_path / "eval"
    assert main(["evaluate", str(banded_run), "--out", str(metrics_out), "--quiet"]) == 0
    metrics = json.loads((metrics_out / "metrics.json").read_text())
    band = metrics["review_band"]
    assert band["escapes"] == 0 and band["false_rejects"] == 0  # the rules were chosen on this test split
    assert band["n_review"] == len(in_review)
    assert "Review band" in (metrics_out / "report.html").read_text()
    assert main(["calibrate", str(banded_run), "--split", "test", "--review", "fpr:0,recall:1", "--quiet"]) == 2


def test_review_images_get_their_mask_and_regions(banded_run: Path, tiny_mvtec: Path) -> None:
    """Broken: localisation only for NG (`if decided == NG`), so a reviewer sees no boxes."""
    detector = Detector.load(banded_run)
    low, high = detector.calibration.review
    reviewed = [p for p in sorted((tiny_mvtec / "test").rglob("*.png")) if detector.predict(str(p)).verdict == "REVIEW"]
    assert reviewed
    for path in reviewed:
        # A pixel threshold this image's map passes (the calibrated one may mark nothing on this tiny model).
        pixel = float(np.percentile(detector.predict(str(path)).anomaly_map, 90))
        detector.calibration = dataclasses.replace(detector.calibration, pixel_threshold=pixel)
        prediction = detector.predict(str(path))
        as_ng = detector.predict(str(path), threshold=low)  # the same map judged NG without the band
        assert prediction.verdict == "REVIEW" and as_ng.verdict == "NG"
        assert prediction.regions and [r.to_dict() for r in prediction.regions] == [r.to_dict() for r in as_ng.regions]
        assert prediction.mask.any() and np.array_equal(prediction.mask, as_ng.mask)


def test_the_service_answers_and_counts_review(banded_run: Path, tiny_mvtec: Path) -> None:
    client = TestClient(create_app(Detector.load(banded_run)))
    answers = [client.post("/predict", files={"file": (p.name, p.read_bytes(), "image/png")}).json()
               for p in sorted((tiny_mvtec / "test").rglob("*.png"))]
    low, high = json.loads((banded_run / bundle.CALIBRATION).read_text())["review"]
    assert all(a["review"] == [low, high] for a in answers)
    expected = {v: sum(a["verdict"] == v for a in answers) for v in ("OK", "REVIEW", "NG")}
    stats = client.get("/stats").json()
    assert stats["counts"] == expected and stats["review"] == expected["REVIEW"]
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    counted = {s.labels["verdict"]: s.value for s in families["surfad_inspections"].samples
               if s.name == "surfad_inspections_total"}
    assert counted == expected


def test_a_threshold_override_replaces_the_band(banded_run: Path, clean_image) -> None:
    prediction = Detector.load(banded_run).predict(clean_image, threshold=1e9)
    assert prediction.verdict == "OK" and prediction.review is None


def test_the_resized_roi_is_made_once_per_image_size(tiny_run, tmp_path: Path) -> None:
    """A line's camera gives one image size: the ROI is resized for it once, not per image (nor
    kept for every size a service was ever sent)."""
    roi = left_half_roi(tmp_path / "roi.png")
    detector = Detector.load(tiny_run(), roi=roi, calibrated=False)
    first = detector.roi_at(64, 64)
    assert detector.roi_at(64, 64) is first and np.array_equal(first, resize_roi(load_roi(roi), 64, 64))
    for side in range(20, 60, 2):
        detector.roi_at(side, side)
    assert detector.roi_at(64, 64) is not first and np.array_equal(detector.roi_at(64, 64), first)
    assert Detector.load(tiny_run(), calibrated=False).roi_at(64, 64) is None
