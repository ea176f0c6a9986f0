"""What the README promises, each tested so that a plausible broken implementation fails (named in
each test): detection above chance, what is shipped and selected, that the test split is never
read in training, tiling, grayscale, training controls, masks and preprocessing, the service's
extras and the outputs' arithmetic."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from safetensors.numpy import load_file
from sklearn.metrics import roc_auc_score

from surfad import bundle
from surfad.batch_predict import JSONL, predict_files
from surfad.calibrate import choose_threshold
from surfad.cli import main
from surfad.config import ScoreConfig
from surfad.data.io import read_mask
from surfad.data.splits import Splits
from surfad.data.synthetic_wood import write_synthetic_dataset
from surfad.data.tiles import tile_starts
from surfad.data.transforms import preprocess, resize_mask
from surfad.detector import Detector, fuse_runs
from surfad.errors import SurfadError
from surfad.evaluate import evaluate_run
from surfad.metrics import aupro
from surfad.models import available_models
from surfad.scoring import tiled_score_fn
from surfad.serve.app import create_app
from surfad.serve.record import InspectionLog
from surfad.training import gradient

TINY = ["--model", "unet_vae", "--preset", "tiny", "--image-size", "32", "--batch-size", "4", "--threads", "1", "--quiet", "--grid-every", "0"]


def train_args(data: Path, out: Path, epochs: int = 2, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--epochs", str(epochs), *TINY, *extra]


# --- 1. detection above chance ---------------------------------------------------------------------

EPOCHS = {"unet_vae": 20, "recondiff": 20}  # gradient-trained models (0.86 and 0.84 here); fitted ones fit once


@pytest.fixture(scope="module")
def detection_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough test images that a noise map cannot pass: 30 good and 30 defective (the AUROC of random
    scores has a standard deviation of 0.075 there, so 0.8 is 4 deviations above chance)."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("detect"), seed=1, size=64, n_train=40, n_test_good=30,
                                   n_test_defect=30, n_val_good=4, n_val_defect=4)


@pytest.mark.slow
@pytest.mark.parametrize("model", available_models())
def test_every_model_detects_pasted_defects_well_above_chance(model: str, detection_data: Path, tmp_path: Path):
    """Broken: a model (or export) whose map is noise, or inverted, scores about 0.5."""
    run = tmp_path / model
    args = ["train", "--data", str(detection_data), "--out", str(run), "--epochs", str(EPOCHS.get(model, 1)),
            "--model", model, "--preset", "tiny", "--image-size", "64", "--batch-size", "8", "--threads", "1",
            "--quiet", "--grid-every", "0"]
    assert main(args) == 0
    assert main(["export", str(run)]) == 0
    for runtime in ("torch", "onnx"):
        metrics = evaluate_run(run, split="test", runtime=runtime, out=tmp_path / f"eval_{runtime}")
        assert metrics["n_images"] == 60 and metrics["image_auroc"] >= 0.8, (runtime, metrics["image_auroc"])


# --- 2, 7. what is shipped -------------------------------------------------------------------------


def record_epochs(monkeypatch: pytest.MonkeyPatch, figures_by_epoch: list[dict[str, float]]) -> list[dict]:
    """Replace validation figures by the given ones (one dict per validation) and keep a copy of the
    raw weights at every epoch end; returns that list of copies."""
    real_validate, real_save = gradient.validate, gradient.save_last
    weights: list[dict] = []
    calls = {"n": 0}

    def scripted(*args, **kwargs):
        figures, scored = real_validate(*args, **kwargs)
        calls["n"] += 1
        return {**figures, **figures_by_epoch[calls["n"] - 1]}, scored

    def keeping(out, model, *args):
        weights.append({k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()})
        real_save(out, model, *args)

    monkeypatch.setattr(gradient, "validate", scripted)
    monkeypatch.setattr(gradient, "save_last", keeping)
    return weights


def assert_same_weights(path: Path, expected: dict) -> None:
    saved = load_file(path)
    assert set(saved) == set(expected)
    assert all(np.array_equal(saved[k], expected[k]) for k in saved), path


def test_shipped_and_best_seg_are_the_selected_epochs_weights(tiny_mvtec: Path, tmp_path: Path, monkeypatch):
    """Broken: shipping the last epoch, or saving best_seg on the detection rule, or loading model.safetensors
    whatever --checkpoint says."""
    script = [{"val_auroc": 0.6, "val_aupro": 0.5}, {"val_auroc": 0.9, "val_aupro": 0.4},
              {"val_auroc": 0.7, "val_aupro": 0.8}, {"val_auroc": 0.8, "val_aupro": 0.6}]
    weights = record_epochs(monkeypatch, script)
    run = tmp_path / "run"
    assert main(train_args(tiny_mvtec, run, 4, "--select-after", "0")) == 0
    assert len(weights) == 4
    assert_same_weights(run / bundle.WEIGHTS, weights[1])  # epoch 2: best AUROC
    assert_same_weights(run / bundle.CHECKPOINTS["best_seg"], weights[2])  # epoch 3: best AUPRO
    assert_same_weights(run / bundle.CHECKPOINTS["last"], weights[3])
    for checkpoint, epoch in (("best_detect", 1), ("best_seg", 2), ("last", 3)):
        _, graph = bundle.load_graph(run, checkpoint)
        loaded = {k: v.numpy() for k, v in graph.model.state_dict().items()}
        assert all(np.array_equal(loaded[k], weights[epoch][k]) for k in loaded), checkpoint
    image = sorted((tiny_mvtec / "test" / "knot").iterdir())[0]
    # calibrated=False: the thresholds are best_detect's, and only scores are compared here
    scores = {c: Detector.load(run, checkpoint=c, calibrated=False).predict(str(image)).score
              for c in ("best_detect", "best_seg")}
    assert scores["best_detect"] != scores["best_seg"]


def test_patience_ships_the_best_epochs_weights(tiny_mvtec: Path, tmp_path: Path, monkeypatch):
    """Broken: stopping early but shipping the weights of the epoch it stopped at."""
    weights = record_epochs(monkeypatch, [{"val_auroc": v} for v in (0.5, 0.9, 0.8, 0.7, 0.6, 0.5)])
    run = tmp_path / "run"
    assert main(train_args(tiny_mvtec, run, 6, "--select-after", "0", "--patience", "2")) == 0
    assert len(weights) == 4  # stopped after epoch 4
    assert_same_weights(run / bundle.WEIGHTS, weights[1])


def test_time_budget_stops_at_the_first_epoch_end_past_it(tiny_mvtec: Path, tmp_path: Path, monkeypatch, capsys):
    """Broken: a budget checked only at the end, or stopping in the middle of an epoch."""
    clock = {"now": 0.0}

    def fake_monotonic() -> float:
        clock["now"] += 25.0  # every reading is 25 s later: epoch ends at 25, 50, 75 s of training
        return clock["now"]

    monkeypatch.setattr(gradient.time, "monotonic", fake_monotonic)
    run = tmp_path / "run"
    assert main(train_args(tiny_mvtec, run, 5, "--time-budget", "1")) == 0
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]  # 75 s > 60 s after epoch 3
    assert "time budget of 1.0 min reached after epoch 3" in capsys.readouterr().out


def test_step_minus_one_resumes(tiny_mvtec: Path, tmp_path: Path, monkeypatch):
    real_validate = gradient.validate
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(gradient, "validate", interrupted)
    run = tmp_path / "run"
    assert main(train_args(tiny_mvtec, run, 3)) == 130
    monkeypatch.setattr(gradient, "validate", real_validate)
    assert main(["train", "--out", str(run), "--step", "-1", "--quiet"]) == 0
    assert [r["epoch"] for r in csv.DictReader((run / "history.csv").open())] == ["1", "2", "3"]


def test_resuming_keeps_the_best_so_far(tiny_mvtec: Path, tmp_path: Path, monkeypatch):
    """Broken: the best validation value not restored, so the first epoch after a resume ships
    however bad it is."""
    weights = record_epochs(monkeypatch, [{"val_auroc": 0.9}, {"val_auroc": 0.6}, {"val_auroc": 0.7}])
    scripted = gradient.validate
    calls = {"n": 0}

    def interrupted_at_epoch_2(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return scripted(*args, **kwargs)

    monkeypatch.setattr(gradient, "validate", interrupted_at_epoch_2)
    run = tmp_path / "run"
    assert main(train_args(tiny_mvtec, run, 3, "--select-after", "0")) == 130
    calls["n"] = 2  # the resumed session validates epochs 2 and 3 (0.6, 0.7): neither beats epoch 1's 0.9
    assert main(["train", "--out", str(run), "--resume", "--quiet"]) == 0
    assert len(weights) == 3
    assert_same_weights(run / bundle.WEIGHTS, weights[0])
    assert [r["best"] for r in csv.DictReader((run / "history.csv").open())] == ["1", "", ""]


def test_resuming_keeps_the_time_spent(tiny_mvtec: Path, tmp_path: Path, monkeypatch, capsys):
    """Broken: the elapsed training time not restored, so a resumed run gets its whole --time-budget again."""
    clock = {"now": 0.0}

    def fake_monotonic() -> float:
        clock["now"] += 25.0  # as in test_time_budget...: each epoch takes 25 s of training
        return clock["now"]

    monkeypatch.setattr(gradient.time, "monotonic", fake_monotonic)
    real_validate = gradient.validate
    calls = {"n": 0}

    def interrupted_at_epoch_2(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(gradient, "validate", interrupted_at_epoch_2)
    run = tmp_path / "run"
    assert main(train_args(tiny_mvtec, run, 6, "--time-budget", "1")) == 130  # epoch 1 done: 25 s
    assert main(["train", "--out", str(run), "--resume", "--quiet"]) == 0  # 50 s, then 75 s > 60 s
    assert [r["epoch"] for r in csv.DictReader((run / "history.csv").open())] == ["1", "2", "3"]
    assert "time budget of 1.0 min reached after epoch 3" in capsys.readouterr().out


# --- 3, 4. selection never reads test; validation without real defects -----------------------------


# Runs `surfad ARGS...` with an audit hook that records every file Python opens (builtins.open, io.open,
# os.open: Path.read_bytes, PIL, numpy, torch's Python-side reads), written as JSON to the first argument.
AUDITED_RUN = """
import json, os, sys
opened = []
def hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        opened.append(os.path.realpath(os.fsdecode(args[0])))
sys.addaudithook(hook)
from surfad.cli import main
code = main(sys.argv[2:])
with open(sys.argv[1], "w") as f:
    json.dump(opened, f)
sys.exit(code)
"""


def mark_unread(path: Path) -> None:
    """Set the file's access time before its modification time: on a file system that records reads
    (relatime, the Linux default), the next read of its content, by any code, moves it."""
    st = path.stat()
    os.utime(path, ns=(st.st_mtime_ns - 10**10, st.st_mtime_ns))


def records_reads(folder: Path) -> bool:
    probe = folder / "probe"
    probe.write_bytes(b"x")
    mark_unread(probe)
    before = probe.stat().st_atime_ns
    probe.read_bytes()
    return probe.stat().st_atime_ns != before


@pytest.mark.parametrize("model", ["unet_vae", "padim"])
def test_training_never_opens_a_test_image(tiny_mvtec: Path, tmp_path: Path, model: str):
    """Broken: a split check that decodes test files, or a validation set that includes them. Two
    witnesses: an audit hook sees every file Python opens (builtins.open, os.open: not only
    Path.read_bytes), and the test files' access times see a read by any code, C libraries such as
    cv2.imread included, where the file system records reads. The test files are also unreadable
    garbage, so decoding one would fail the run."""
    data = Path(shutil.copytree(tiny_mvtec, tmp_path / "data"))
    test_files = [p for p in (data / "test").rglob("*.png")] + [p for p in (data / "ground_truth").rglob("*.png")]
    for path in test_files:
        path.write_bytes(b"unreadable")
        mark_unread(path)
    accessed = {path: path.stat().st_atime_ns for path in test_files}
    log = tmp_path / "opened.json"
    args = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "2", "--model", model,
            "--preset", "tiny", "--image-size", "32", "--batch-size", "4", "--threads", "1", "--quiet",
            "--grid-every", "0"]
    done = subprocess.run([sys.executable, "-c", AUDITED_RUN, str(log), *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    opened = {Path(p) for p in json.loads(log.read_text())}
    touched = {p for p in opened if p.is_relative_to((data / "test").resolve())
               or p.is_relative_to((data / "ground_truth").resolve())}
    assert not touched, sorted(touched)[:5]
    train_images = {p.resolve() for p in (data / "train").rglob("*.png")}
    assert train_images & opened  # the hook saw the training images being read
    if records_reads(tmp_path):
        read = [path for path, before in accessed.items() if path.stat().st_atime_ns != before]
        assert not read, read[:5]


@pytest.fixture(scope="module")
def no_real_defects(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("novaldefects"), seed=2, size=64, n_train=16,
                                   n_test_good=4, n_test_defect=4, n_val_good=0, n_val_defect=0)


def test_without_real_defects_synthetic_ones_choose_the_epoch_but_never_the_threshold(no_real_defects: Path,
                                                                                    tmp_path: Path):
    """Broken: calibrating on the synthetic defects (their f1 threshold), or validating on good images only."""
    run = tmp_path / "run"
    assert main(train_args(no_real_defects, run, 3, "--select-after", "0")) == 0
    splits = Splits.load(run / bundle.SPLITS)
    assert splits.val and all(s.label == 0 for s in splits.val)
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert all(r["val_auroc"] for r in rows)  # validation had defects to rank: the synthetic ones
    shipped = bundle.shipped_row(rows)  # every epoch eligible: the one the synthetic defects ranked best
    assert float(shipped["val_auroc"]) == max(float(r["val_auroc"]) for r in rows)
    calibration = json.loads((run / bundle.CALIBRATION).read_text())
    assert calibration["strategy"] == "fpr:0.01" and calibration["n_defect"] == 0
    assert calibration["n_good"] == len(splits.val)
    scored, _ = Detector.load(run, calibrated=False).score_samples(splits.val)
    assert calibration["threshold"] == pytest.approx(choose_threshold(scored.scores, scored.labels, "fpr:0.01"))


# --- 5. tiles that disagree ------------------------------------------------------------------------


def test_overlapping_tiles_are_averaged():
    """Broken: a later tile overwriting an earlier one (identity maps cannot tell the two apart)."""
    counter = {"n": 0}

    def numbered(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # tile i's map is i everywhere
        first = counter["n"]
        counter["n"] += len(batch)
        values = np.arange(first, first + len(batch), dtype=np.float32)
        return np.broadcast_to(values[:, None, None], (len(batch), 16, 16)).copy(), values

    maps, _ = tiled_score_fn(numbered, ScoreConfig(reduce="mean"), tile=16, stride=10)(np.zeros((1, 1, 16, 36), np.float32))
    starts = tile_starts(36, 16, 10)  # x starts of the three tiles: 0, 10, 20
    assert starts == [0, 10, 20]
    row = maps[0, 0]
    assert row[5] == 0 and row[12] == pytest.approx(0.5) and row[17] == 1 and row[22] == pytest.approx(1.5) and row[30] == 2


# --- 6. grayscale end to end -----------------------------------------------------------------------


def test_grayscale_end_to_end(tiny_gray: Path, tmp_path: Path):
    """Broken: channels defaulting to 3, an export traced for 3 channels, or HxWx1 input refused."""
    run = tmp_path / "gray"
    assert main(train_args(tiny_gray, run, 1)) == 0
    assert json.loads((run / "meta.json").read_text())["channels"] == 1
    assert main(["export", str(run)]) == 0
    assert json.loads((run / "export.json").read_text())["input"]["shape"][1] == 1
    image = cv2.imread(str(next((tiny_gray / "test" / "knot").iterdir())), cv2.IMREAD_UNCHANGED)
    assert image.ndim == 2
    expected = Detector.load(run).predict(image[:, :, None])
    client = TestClient(create_app(Detector.load(run, runtime="onnx")))
    answer = client.post("/predict", files={"file": ("g.png", cv2.imencode(".png", image)[1].tobytes(), "image/png")})
    assert answer.status_code == 200 and answer.json()["score"] == pytest.approx(expected.score, abs=1e-4)


# --- 8. masks and preprocessing --------------------------------------------------------------------


def test_masks_are_binarised_by_format(tmp_path: Path):
    """Broken: one cut for both (JPEG noise near 0 would become defect pixels, or faint PNG labels lost)."""
    values = np.array([[0, 1, 100, 128, 255]], np.uint8).repeat(8, axis=0).repeat(8, axis=1)
    for suffix, expected in ((".png", [False, True, True, True, True]), (".bmp", [False, True, True, True, True]),
                             (".jpg", [False, False, False, True, True])):
        path = tmp_path / f"mask{suffix}"
        cv2.imwrite(str(path), values, [cv2.IMWRITE_JPEG_QUALITY, 100] if suffix == ".jpg" else [])
        mask = read_mask(path)
        assert [bool(mask[4, 8 * i + 4]) for i in range(5)] == expected, suffix


def test_masks_resize_by_nearest_neighbour_and_images_by_area_or_bilinear():
    """Broken: masks interpolated (grey edges), or images always resized bilinearly (aliasing when shrinking)."""
    mask = np.zeros((64, 64), bool)
    mask[10:13, 20:50] = True
    small = resize_mask(mask, 16)
    assert small.dtype == bool
    np.testing.assert_array_equal(small, cv2.resize(mask.astype(np.uint8), (16, 16), interpolation=cv2.INTER_NEAREST) > 0)
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 1), dtype=np.uint8)
    shrunk = preprocess(image, 16, 1)[0]
    np.testing.assert_allclose(shrunk, cv2.resize(image, (16, 16), interpolation=cv2.INTER_AREA) / 255.0, atol=1e-6)
    assert not np.allclose(shrunk, cv2.resize(image, (16, 16), interpolation=cv2.INTER_LINEAR) / 255.0, atol=1e-3)
    grown = preprocess(image, 100, 1)[0]
    np.testing.assert_allclose(grown, cv2.resize(image, (100, 100), interpolation=cv2.INTER_LINEAR) / 255.0, atol=1e-6)


# --- 9. service extras -----------------------------------------------------------------------------


def png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


@pytest.mark.parametrize("keep", ["all", "none", "ng"])
def test_the_service_keeps_the_chosen_uploads_and_reports_drift(tiny_run, tiny_mvtec: Path, tmp_path: Path, keep: str):
    """Broken: keeping every upload whatever --keep-images says; a drift share counted on the wrong side."""
    detector = Detector.load(tiny_run(), runtime="onnx")
    folder = tmp_path / "rec"
    client = TestClient(create_app(detector, record=InspectionLog(folder, keep)))
    # An odd count: the share above p95 can never equal the share at or below it, so counting the
    # wrong side changes the figure.
    paths = sorted((tiny_mvtec / "test").rglob("*.png"))[:7]
    answers = [client.post("/predict", files={"file": (p.name, p.read_bytes(), "image/png")}).json() for p in paths]
    assert 0 < sum(a["verdict"] == "NG" for a in answers) < len(paths)  # "ng" keeps some, not all nor none
    kept = sorted((folder / "images").rglob("*")) if (folder / "images").exists() else []
    kept_files = [p for p in kept if p.is_file()]
    expected = {"all": len(paths), "none": 0, "ng": sum(a["verdict"] == "NG" for a in answers)}[keep]
    assert len(kept_files) == expected
    p95 = detector.calibration.normal_stats["p95"]
    stats = client.get("/stats").json()["recent_scores"]
    assert stats["above_validation_p95"] == pytest.approx(np.mean([a["score"] > p95 for a in answers]))
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    counted = {s.labels["verdict"]: s.value for s in families["surfad_inspections"].samples
               if s.name == "surfad_inspections_total"}
    assert counted == {v: sum(a["verdict"] == v for a in answers) for v in ("OK", "REVIEW", "NG")}


# --- 10. outputs recomputed ------------------------------------------------------------------------


def test_masks_and_regions_only_for_ng_images(tiny_run, tiny_mvtec: Path, tmp_path: Path):
    """Broken: boxes drawn on parts that passed."""
    detector = Detector.load(tiny_run())
    for threshold in (-1e9, 1e9):
        out = tmp_path / str(threshold)
        predict_files(detector, [str(tiny_mvtec / "test")], out, threshold=threshold, progress=False)
        for record in map(json.loads, (out / JSONL).read_text().splitlines()):
            mask = cv2.imread(record["mask"], cv2.IMREAD_GRAYSCALE)
            if record["verdict"] == "OK":
                assert record["regions"] == [] and not mask.any()
            else:  # regions above the pixel threshold make the mask; without any, the map's peak is shown
                above = [r for r in record["regions"] if not r.get("below_pixel_threshold")]
                assert record["regions"] and bool(mask.any()) == bool(above)
                assert len(above) == len(record["regions"]) or len(record["regions"]) == 1


def test_metrics_json_matches_a_recomputation(tiny_run, tmp_path: Path):
    """Broken: per-type AUROC over the wrong images, or AUPRO from maps at another resolution."""
    run = tiny_run()
    metrics = evaluate_run(run, split="test", out=tmp_path / "eval")
    rows = list(csv.DictReader((tmp_path / "eval" / "per_image.csv").open()))
    scores = np.array([float(r["score"]) for r in rows])
    labels = np.array([int(r["label"]) for r in rows])
    assert metrics["image_auroc"] == pytest.approx(roc_auc_score(labels, scores))
    for defect_type, value in metrics["per_type_image_auroc"].items():
        keep = np.array([r["defect_type"] in ("good", defect_type) for r in rows])
        assert value == pytest.approx(roc_auc_score(labels[keep], scores[keep])), defect_type
    detector = Detector.load(run)
    scored, _ = detector.score_samples(Splits.load(run / bundle.SPLITS).test)
    assert metrics["aupro"] == pytest.approx(aupro(scored.maps, scored.masks), abs=1e-6)


def test_a_fused_export_writes_each_members_onnx(tiny_run, tmp_path: Path):
    members = [Path(shutil.copytree(tiny_run(m), tmp_path / m)) for m in ("unet_vae", "patchcore")]
    for member in members:
        (member / bundle.ONNX).unlink()
    fused = fuse_runs(members, tmp_path / "fused")
    assert main(["export", str(fused)]) == 0
    assert all((member / bundle.ONNX).is_file() for member in members)
    a, b = Detector.load(fused), Detector.load(fused, runtime="onnx")
    image = np.full((40, 44, 3), 120, np.uint8)
    assert a.predict(image).score == pytest.approx(b.predict(image).score, abs=1e-3)


def test_fuse_refuses_members_with_other_validation_splits(tiny_run, tmp_path: Path):
    """Broken: standardising one member on images another was trained on."""
    first, second = (Path(shutil.copytree(tiny_run(m), tmp_path / m)) for m in ("unet_vae", "recondiff"))
    splits = json.loads((second / bundle.SPLITS).read_text())
    splits["val"] = splits["val"][1:]
    (second / bundle.SPLITS).write_text(json.dumps(splits))
    with pytest.raises(SurfadError, match="another val split"):
        fuse_runs([first, second], tmp_path / "fused")


def test_fitted_bank_does_not_come_from_validation_images(tiny_run):
    """Broken: fitting on train + val (validation would then rank its own bank's images)."""
    run = tiny_run("patchcore")
    meta = json.loads((run / "meta.json").read_text())
    splits = Splits.load(run / bundle.SPLITS)
    assert meta["fit"]["patches"] == len(splits.train) * 64  # the tiny preset's 8 x 8 grid per image
