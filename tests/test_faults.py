"""Bad input, faults and tampering: each gets a clear error or a safe default, nothing is lost or
silently wrong. Every test here failed before its fix (the issue that listed them says how).

Classes kept covered: corrupt, truncated and oversized images in every entry point; tampered run
folders (thresholds, checkpoints, history, config against weights and export); kill points during
training and prediction; bad flags and configs; the service's exposure (paths, origins, hosts).
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import shutil
import stat
import struct
import zlib
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from fastapi.testclient import TestClient
from safetensors import SafetensorError
from safetensors.numpy import load_file

from surfad import bundle
from surfad.batch_predict import JSONL, LOCK, predict_files
from surfad.calibrate import Calibration
from surfad.cli import main
from surfad.data.io import decode_image, read_image
from surfad.detector import Detector
from surfad.errors import BadInputError, ImageTooLarge, SurfadError
from surfad.report import write_gallery
from surfad.serve.app import create_app, served_hosts
from surfad.training import checkpoint
from surfad.utils import atomic_write_text, exclusive

TINY = ["--model", "unet_vae", "--preset", "tiny", "--image-size", "32", "--batch-size", "4", "--threads", "1", "--quiet", "--grid-every", "0"]


def train_args(data: Path, out: Path, epochs: int = 2, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--epochs", str(epochs), *TINY, *extra]


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height pixels (OpenCV's limit is 2^30)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def copy_run(run: Path, dest: Path) -> Path:
    return Path(shutil.copytree(run, dest / "run"))


# --- 1. non-finite thresholds ---------------------------------------------------------------------


@pytest.mark.parametrize("field,value", [("threshold", "NaN"), ("threshold", "Infinity"), ("pixel_threshold", "NaN")])
def test_a_non_finite_threshold_is_refused_everywhere_it_is_read(tiny_run, tmp_path: Path, field: str, value: str):
    """Before: every image came back OK, predictions.jsonl held bare NaN, serve answered threshold null."""
    run = copy_run(tiny_run(), tmp_path)
    text = (run / bundle.CALIBRATION).read_text()
    original = json.loads(text)[field]
    (run / bundle.CALIBRATION).write_text(text.replace(f'"{field}": {json.dumps(original)}', f'"{field}": {value}'))
    for runtime in ("torch", "onnx"):
        with pytest.raises(SurfadError, match=f"calibration.{field}=.*finite"):
            Detector.load(run, runtime=runtime)
    assert main(["predict", str(run), str(tmp_path), "--out", str(tmp_path / "p"), "--quiet"]) == 2
    assert main(["serve", str(run), "--runtime", "torch", "--port", "9"]) == 2


@pytest.mark.parametrize("content", ['{"threshold": NaN}', "{not json", '{"strategy": "f1"}', ""])
def test_calibrate_replaces_a_corrupt_calibration_and_other_verbs_point_to_it(tiny_run, tiny_mvtec: Path,
                                                                              tmp_path: Path, capsys, content: str):
    """Before: `surfad calibrate`, the command that repairs the file, refused it too."""
    run = copy_run(tiny_run(), tmp_path)
    if content.startswith('{"threshold"'):  # the real file with its threshold made NaN
        calibration = json.loads((run / bundle.CALIBRATION).read_text())
        content = json.dumps(calibration).replace(json.dumps(calibration["threshold"]), "NaN", 1)
    (run / bundle.CALIBRATION).write_text(content)
    for args in (["predict", str(run), str(tiny_mvtec / "test"), "--out", str(tmp_path / "p"), "--quiet"],
                 ["evaluate", str(run), "--out", str(tmp_path / "e"), "--quiet"], ["info", str(run)]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert f"{run / bundle.CALIBRATION}: " in err and f"run `surfad calibrate {run}`" in err, err
    assert main(["calibrate", str(run), "--quiet"]) == 0
    captured = capsys.readouterr()
    kept = list((run / bundle.CALIBRATION_HISTORY).glob("calibration_*_corrupt.json"))
    assert len(kept) == 1 and kept[0].read_text() == content  # moved aside unchanged
    assert f"moved it to {kept[0]}" in captured.err and "threshold" in captured.out
    assert Detector.load(run).threshold == Calibration.load(run / bundle.CALIBRATION).threshold
    assert main(["predict", str(run), str(tiny_mvtec / "test"), "--out", str(tmp_path / "p"), "--quiet"]) == 0


def test_a_non_finite_threshold_override_is_refused(tiny_run, tiny_mvtec: Path, tmp_path: Path, capsys):
    assert main(["predict", str(tiny_run()), str(tiny_mvtec / "test"), "--out", str(tmp_path), "--threshold", "nan"]) == 2
    assert "finite" in capsys.readouterr().err and not (tmp_path / JSONL).exists()
    detector = Detector.load(tiny_run())
    with pytest.raises(SurfadError, match="threshold is nan"):
        detector.predict(np.zeros((40, 40, 3), np.uint8), threshold=float("nan"))


def test_a_model_giving_nan_scores_judges_nothing(tiny_run, tmp_path: Path):
    run = copy_run(tiny_run(), tmp_path)
    weights = {k: v * np.nan if v.dtype.kind == "f" else v for k, v in load_file(run / bundle.WEIGHTS).items()}
    from safetensors.numpy import save_file

    save_file(weights, str(run / bundle.WEIGHTS))
    # calibrated=False: past the check that these are not the weights calibrated (test_run_binding.py)
    with pytest.raises(SurfadError, match="image score is nan"):
        Detector.load(run, calibrated=False).predict(np.full((40, 40, 3), 90, np.uint8))


def test_json_outputs_are_valid_json(tmp_path: Path):
    path = tmp_path / "m.json"
    from surfad.utils import atomic_write_json

    atomic_write_json(path, {"precision": float("nan"), "nested": [float("inf"), 1.0]})
    assert json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"bare {c}")) == \
        {"precision": None, "nested": [None, 1.0]}


# --- 2, 3, 9, 13. checkpoints and resume -----------------------------------------------------------


def test_a_crash_between_the_checkpoint_writes_resumes_exactly(tiny_mvtec: Path, tmp_path: Path, monkeypatch):
    """Before: last.safetensors and last_state.pt were separate files; a crash between them resumed
    epoch N+1 weights with epoch N optimiser state. Now the state file carries the weights."""
    straight = tmp_path / "straight"
    assert main(train_args(tiny_mvtec, straight, 3)) == 0
    real_save = bundle.save_weights
    calls = {"last": 0}

    def crash_after_state(model, path):
        if Path(path).name == "last.safetensors":
            calls["last"] += 1
            if calls["last"] == 2:  # epoch 2: last_state.pt is written, last.safetensors is not
                raise KeyboardInterrupt
        real_save(model, path)

    resumed = tmp_path / "resumed"
    monkeypatch.setattr(bundle, "save_weights", crash_after_state)
    assert main(train_args(tiny_mvtec, resumed, 3)) == 130
    monkeypatch.setattr(bundle, "save_weights", real_save)
    assert main(["train", "--out", str(resumed), "--resume", "--quiet"]) == 0
    for name in ("model.safetensors", "checkpoints/last.safetensors"):
        a, b = load_file(straight / name), load_file(resumed / name)
        assert all(np.array_equal(a[k], b[k]) for k in a), name
    assert (straight / "history.csv").read_text().count("\n") == (resumed / "history.csv").read_text().count("\n")


def test_a_run_killed_before_its_first_checkpoint_can_resume_or_restart(tiny_mvtec: Path, tmp_path: Path, capsys):
    """Before: --resume said there was nothing to resume and a fresh start that the folder held a run."""
    run = tmp_path / "run"
    assert main(train_args(tiny_mvtec, run, 1)) == 0
    for name in ("model.safetensors", "calibration.json", "checkpoints", "history.csv"):
        shutil.rmtree(run / name) if (run / name).is_dir() else (run / name).unlink()
    (run / ".config.yaml.abc123.tmp").write_text("half")  # an interrupted atomic write
    assert main(["train", "--out", str(run), "--resume", "--quiet"]) == 0
    assert "training it from the start" in capsys.readouterr().out
    assert (run / bundle.CALIBRATION).is_file() and not list(run.glob(".*.tmp"))
    for name in ("model.safetensors", "calibration.json", "checkpoints", "history.csv"):
        shutil.rmtree(run / name) if (run / name).is_dir() else (run / name).unlink()
    assert main(train_args(tiny_mvtec, run, 1)) == 0
    assert "never trained" in capsys.readouterr().out
    assert main(train_args(tiny_mvtec, run, 1)) == 2  # a run that trained is never replaced
    assert "already holds a run" in capsys.readouterr().err


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_a_corrupt_checkpoint_gets_an_error_naming_it(tiny_mvtec: Path, tmp_path: Path, capsys, content: bytes):
    run = tmp_path / "run"
    assert main(train_args(tiny_mvtec, run, 1)) == 0
    (run / bundle.LAST_STATE).write_bytes(content)
    assert main(["train", "--out", str(run), "--resume", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "last_state.pt: not a usable surfad checkpoint" in err and "weights_only=False" not in err


def test_a_hostile_checkpoint_is_never_unpickled(tiny_mvtec: Path, tmp_path: Path, capsys):
    run = tmp_path / "run"
    assert main(train_args(tiny_mvtec, run, 1)) == 0
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"epoch": Payload()}, run / bundle.LAST_STATE)
    assert main(["train", "--out", str(run), "--resume", "--quiet"]) == 2
    assert not marker.exists() and "not a usable surfad checkpoint" in capsys.readouterr().err


@pytest.fixture(scope="module")
def trained_twice(tiny_mvtec: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run whose last_state.pt stands at epoch 2 of 3 (cut back from 3: the fields are what is
    checked here); copy it before changing it."""
    run = tmp_path_factory.mktemp("twice") / "run"
    assert main(train_args(tiny_mvtec, run, 3)) == 0
    state = torch.load(run / bundle.LAST_STATE, weights_only=True)
    state["epoch"], state["history"] = 2, state["history"][:2]
    torch.save(state, run / bundle.LAST_STATE)
    return run


@pytest.mark.parametrize("field, value, message", [
    ("epoch", "x", "field epoch='x': must be a whole number of epochs done, from 0 to train.epochs (3)"),
    ("epoch", -5, "field epoch=-5: must be a whole number"),
    ("epoch", 7, "field epoch=7: must be a whole number"),
    ("epoch", 1.5, "field epoch=1.5"),
    ("epoch", True, "field epoch=True"),
    ("history", "nope", "field history='nope': must be a list of one row per epoch done (2)"),
    ("history", [], "field history=[]: must be a list of one row per epoch done (2)"),
    ("history", [{"epoch": 1}, {"epoch": 3}], "field history, row 2: must map names to numbers, with epoch 2"),
    ("history", [{"epoch": 1}, "row"], "field history, row 2"),
    ("history", [{"epoch": 1}, {"epoch": 2, "loss": "low"}], "field history, row 2"),
    ("best", float("nan"), "field best=nan: must be a finite number, or -inf"),
    ("best", "high", "field best='high'"),
    ("best_seg", float("inf"), "field best_seg=inf"),
    ("elapsed", -1.0, "field elapsed=-1.0: must be a finite number of seconds >= 0"),
    ("elapsed", None, "field elapsed=None"),
])
def test_a_hand_edited_resume_state_is_refused_naming_the_field(trained_twice: Path, tmp_path: Path, capsys, field,
                                                               value, message):
    """Before: `epoch: 'x'` or `history: 'nope'` ended in a traceback, and `epoch: -5` trained 7
    epochs numbered -4 to 2."""
    run = copy_run(trained_twice, tmp_path)
    state = torch.load(run / bundle.LAST_STATE, weights_only=True)
    state[field] = value
    torch.save(state, run / bundle.LAST_STATE)
    before = (run / bundle.HISTORY).read_text()
    assert main(["train", "--out", str(run), "--resume", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{run / bundle.LAST_STATE}: {message}" in err and "Traceback" not in err, err
    assert (run / bundle.HISTORY).read_text() == before  # nothing trained


def test_an_intact_resume_state_passes_the_checks(trained_twice: Path, tmp_path: Path):
    run = copy_run(trained_twice, tmp_path)
    assert main(["train", "--out", str(run), "--resume", "--quiet"]) == 0
    assert [r["epoch"] for r in csv.DictReader((run / bundle.HISTORY).open())] == ["1", "2", "3"]
    assert checkpoint.read_last(run)["epoch"] == 3


def test_a_corrupt_history_gets_an_error_naming_it(tiny_run, tmp_path: Path, capsys):
    run = copy_run(tiny_run(), tmp_path)
    with (run / bundle.HISTORY).open("w", newline="") as f:
        csv.writer(f).writerows([["epoch", "best", "val_auroc"], ["one", "1", "high"]])
    assert main(["info", str(run)]) == 2
    assert "history.csv: a value of the shipped epoch's row is not a number" in capsys.readouterr().err
    (run / bundle.HISTORY).write_bytes(b"\xff\xfe\x00garbage")
    assert main(["info", str(run)]) == 2
    assert "history.csv" in capsys.readouterr().err


# --- 4, 5. oversized images -----------------------------------------------------------------------


def test_an_oversized_header_is_a_bad_file_not_a_crash(tmp_path: Path):
    path = tmp_path / "huge.png"
    path.write_bytes(png_claiming(100_000, 100_000))
    with pytest.raises(ImageTooLarge, match="huge.png: image too large"):
        read_image(path)
    with pytest.raises(ImageTooLarge, match=r"x.png: image too large \(2000x1500 pixels; the limit is 1000000\)"):
        decode_image(png_claiming(2000, 1500), name="x.png", max_pixels=1_000_000)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "TIFF", "WEBP"])
def test_every_accepted_format_is_size_checked_before_decoding(fmt: str, monkeypatch) -> None:
    """Broken: the pixel limit checked only for PNG, or only after decoding (where a small file of
    another format could still expand into gigabytes)."""
    from PIL import Image

    from surfad.data import io as image_io

    buffer = BytesIO()
    Image.new("L", (1100, 1000), 128).save(buffer, format=fmt)
    decoded: list[str] = []
    monkeypatch.setattr(image_io.cv2, "imdecode", lambda *args: decoded.append(fmt))
    with pytest.raises(ImageTooLarge, match=r"part.x: image too large \(1100x1000 pixels; the limit is 1000000\)"):
        decode_image(buffer.getvalue(), name="part.x", max_pixels=1_000_000)
    assert decoded == []


def test_training_skips_an_oversized_image_with_skip_bad(tiny_mvtec: Path, tmp_path: Path, capsys):
    data = Path(shutil.copytree(tiny_mvtec, tmp_path / "data"))
    (data / "train" / "good" / "huge.png").write_bytes(png_claiming(100_000, 100_000))
    assert main(train_args(data, tmp_path / "strict", 1)) == 2
    assert "huge.png: image too large" in capsys.readouterr().err
    assert main(train_args(data, tmp_path / "lenient", 1, "--skip-bad")) == 0
    assert "huge.png" in capsys.readouterr().out  # listed as skipped


@pytest.mark.parametrize("verb", ["calibrate", "evaluate"])
@pytest.mark.parametrize("bad", ["truncated", "oversized"])
def test_calibrate_and_evaluate_name_a_bad_image(tiny_run, tiny_mvtec: Path, tmp_path: Path, capsys, verb, bad):
    """Before: only train, predict and serve were checked; a bad file among the images to score
    must stop with its name, not a traceback (nor be scored as a black image)."""
    data = Path(shutil.copytree(tiny_mvtec, tmp_path / "data"))
    good = min((data / "test" / "good").glob("*.png"))
    target = data / "test" / "good" / "bad.png"
    target.write_bytes(good.read_bytes()[:60] if bad == "truncated" else png_claiming(100_000, 100_000))
    run = copy_run(tiny_run(), tmp_path)
    assert main([verb, str(run), "--data", str(data), "--split", "test", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "bad.png" in err and "Traceback" not in err


def test_batch_prediction_records_an_oversized_image_and_goes_on(tiny_run, tiny_mvtec: Path, tmp_path: Path):
    images = Path(shutil.copytree(tiny_mvtec / "test" / "good", tmp_path / "images"))
    (images / "huge.png").write_bytes(png_claiming(100_000, 100_000))
    counts = predict_files(Detector.load(tiny_run()), [str(images)], tmp_path / "out", progress=False)
    assert counts["failed"] == 1 and counts["done"] == counts["images"] - 1
    again = predict_files(Detector.load(tiny_run()), [str(images)], tmp_path / "out", progress=False)
    assert again["failed"] == 1 and again["done"] == 0  # the re-run is not stopped by it either


@pytest.mark.parametrize("payload", [b"P5\n30000 30000\n255\n" + b"\x00" * 64, b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n"
                                     b"-Y 20000 +X 20000\n" + b"\x00" * 64])
def test_the_service_refuses_formats_whose_header_it_does_not_check(tiny_run, payload: bytes):
    """Before: PGM or Radiance files (which OpenCV decodes, Pillow's header check did not know) were
    decoded in full before the pixel limit applied."""
    client = TestClient(create_app(Detector.load(tiny_run(), runtime="onnx"), max_pixels=100_000))
    response = client.post("/predict", files={"file": ("big.img", payload, "application/octet-stream")})
    assert response.status_code == 415 and "PNG, JPEG" in response.json()["detail"]
    response = client.post("/predict", files={"file": ("huge.png", png_claiming(100_000, 100_000), "image/png")})
    assert response.status_code == 413


# --- 6. config edited after training or export ----------------------------------------------------


@pytest.mark.parametrize("edit", [("data", "image_size", 64), ("data", "tile_scale", 0.5), ("model", None, "recondiff")])
def test_an_edited_config_is_refused_at_load(tiny_run, tmp_path: Path, edit):
    run = copy_run(tiny_run(), tmp_path)
    config = yaml.safe_load((run / bundle.CONFIG).read_text())
    section, key, value = edit
    if key is None:
        config[section] = value
    else:
        config[section][key] = value
    (run / bundle.CONFIG).write_text(yaml.safe_dump(config))
    for runtime in ("torch", "onnx"):
        with pytest.raises(SurfadError, match="no longer matches what .* was made for"):
            Detector.load(run, runtime=runtime)


def test_resuming_with_an_edited_config_is_refused(tiny_run, capsys, tmp_path: Path):
    """Before: --resume loaded the edited config.yaml, trained and calibrated on, and the finished
    run was then refused at load."""
    run = copy_run(tiny_run(), tmp_path)
    config = yaml.safe_load((run / bundle.CONFIG).read_text())
    config["score"]["pool"] = 5
    (run / bundle.CONFIG).write_text(yaml.safe_dump(config))
    assert main(["train", "--out", str(run), "--resume", "--quiet"]) == 2
    assert "no longer matches what" in capsys.readouterr().err


def test_a_stray_weights_file_in_a_fresh_folder_is_not_taken_for_a_fit(tiny_run, tiny_mvtec: Path, tmp_path: Path,
                                                                       capsys):
    """Before: a fresh --out holding some model.safetensors (and no run) was 'already fitted' from it."""
    out = tmp_path / "fresh"
    out.mkdir()
    (out / bundle.WEIGHTS).write_bytes((tiny_run("padim") / bundle.WEIGHTS).read_bytes())
    assert main(["train", "--data", str(tiny_mvtec), "--out", str(out), "--model", "padim", "--preset", "tiny",
                 "--image-size", "32", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "already fitted" not in printed and "fitted: positions" in printed
    assert bundle.read_meta(out)["fit"]["images"] > 0


# --- 7. numbers in flags and configs --------------------------------------------------------------


@pytest.mark.parametrize("flags,message", [
    (["--batch-size", "0"], "train.batch_size=0: must be >= 1"),
    (["--batch-size", "-3"], "train.batch_size=-3"),
    (["--image-size", "0"], "data.image_size=0"),
    (["--lr", "-1"], "train.lr=-1.0"),
    (["--epochs", "0"], "train.epochs=0"),
    (["--epochs", "-1"], "train.epochs=-1"),
    (["--param", "depth=0"], "model_params.depth=0: must be >= 1"),
    (["--val-ratio", "1.5"], "data.val_ratio=1.5"),
    (["--sync-bn", "--device", "cpu"], "train.sync_bn: synchronised batch norm needs CUDA"),
])
def test_numeric_flags_are_checked_naming_the_field(tiny_mvtec: Path, tmp_path: Path, capsys, flags, message):
    args = ["train", "--data", str(tiny_mvtec), "--out", str(tmp_path / "r"), "--quiet", "--model", "unet_vae", *flags]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("text,message", [("train:\n  lr: .nan\n", "train.lr=nan: must be a finite number"),
                                          ("train: [1, 2]\n", "config.train: expected a mapping"),
                                          ("data:\n  image_size: big\n", "config.data.image_size: expected int")])
def test_bad_config_files_are_refused_naming_the_field(tiny_mvtec: Path, tmp_path: Path, capsys, text, message):
    config = tmp_path / "run.yaml"
    config.write_text(text)
    assert main(["train", "--data", str(tiny_mvtec), "--out", str(tmp_path / "r"), "--config", str(config)]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("args", [["predict", "RUN", "x", "--batch-size", "-1"], ["serve", "RUN", "--port", "99999"],
                                  ["serve", "RUN", "--workers", "0"], ["predict", "RUN", "x", "--threshold", "inf"]])
def test_bad_numbers_on_other_verbs_are_refused(args, capsys):
    assert main(args) == 2
    assert "must be" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["-inf", "-nan", "-Infinity", "nan"])
def test_a_negative_or_nan_infinity_is_read_as_a_value_and_refused(value: str, capsys):
    """Before: `--threshold -inf` was taken for an unknown option ("expected one argument")."""
    assert main(["predict", "RUN", "x", "--threshold", value]) == 2
    assert f"argument --threshold: must be a finite number, got {value}" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["-3.5", "-1e-3", "-5.", "-2"])
def test_negative_thresholds_are_values(tiny_run, tiny_mvtec: Path, tmp_path: Path, value: str):
    """A threshold below every score: every image NG (the value reached the verdict, not argparse's
    option matching)."""
    out = tmp_path / "p"
    assert main(["predict", str(tiny_run()), str(tiny_mvtec / "test" / "good"), "--out", str(out), "--quiet",
                 "--threshold", value]) == 0
    records = [json.loads(line) for line in (out / JSONL).read_text().splitlines()]
    assert records and all(r["threshold"] == float(value) and r["verdict"] == "NG" for r in records)


def test_a_yaml_error_names_the_file_once(tiny_run, tmp_path: Path, capsys):
    run = copy_run(tiny_run(), tmp_path)
    (run / bundle.CONFIG).write_text("model: [unclosed\n")
    assert main(["info", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count(str(run / bundle.CONFIG)) == 1 and "not valid YAML (line 2, column 1: " in err, err
    assert len(err.strip().splitlines()) == 1  # one line, where the problem is


# --- 8. file-system errors ------------------------------------------------------------------------


def test_an_output_that_cannot_be_written_is_an_error_not_a_traceback(tiny_run, tiny_mvtec: Path, tmp_path: Path,
                                                                      capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    run = copy_run(tiny_run(), tmp_path)
    for args in (train_args(tiny_mvtec, blocker / "run", 1),
                 ["predict", str(run), str(tiny_mvtec / "test"), "--out", str(blocker / "p"), "--quiet"],
                 ["evaluate", str(run), "--out", str(blocker / "e"), "--quiet"],
                 ["serve", str(run), "--runtime", "torch", "--record", str(blocker)]):
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert "error:" in err and "Traceback" not in err and "a_file" in err, (args, err)


NO_SPACE = os.strerror(errno.ENOSPC)  # "No space left on device"


class FullAfter(io.RawIOBase):
    """A file that takes `room` bytes, then fails as a full disk does (OSError ENOSPC, naming no file)."""

    def __init__(self, file: io.BufferedWriter, room: int) -> None:
        super().__init__()
        self.file, self.room = file, room

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.room -= len(data)
        if self.room < 0:
            raise OSError(errno.ENOSPC, NO_SPACE)
        return self.file.write(data)


def fill_the_disk_at(monkeypatch, target: str) -> None:
    """Make the second write of `target` (a run file's name: epoch 2's) fail as on a full disk, the way
    each writer meets it: torch.save through its file, safetensors with its own error (the text a full
    disk gives it), any other file as the OSError of its write."""
    writes = {"n": 0}

    def due(path) -> bool:
        if not Path(path).name.startswith(f".{target}."):
            return False
        writes["n"] += 1
        return writes["n"] == 2

    real_torch_save, real_save_file, real_write_bytes = checkpoint.torch.save, bundle.save_file, Path.write_bytes
    monkeypatch.setattr(checkpoint.torch, "save", lambda obj, f: real_torch_save(
        obj, FullAfter(f, 1000) if due(f.name) else f))

    def save_file(state, path):
        if due(path):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        real_save_file(state, path)

    def write_bytes(self, data):
        if due(self):
            raise OSError(errno.ENOSPC, NO_SPACE)
        return real_write_bytes(self, data)

    monkeypatch.setattr(bundle, "save_file", save_file)
    monkeypatch.setattr(Path, "write_bytes", write_bytes)


@pytest.mark.parametrize("target, epoch_kept", [("last_state.pt", 1), ("last.safetensors", 2), ("history.png", 1)])
def test_a_full_disk_during_training_names_the_file_and_keeps_the_last_checkpoint(tiny_mvtec: Path, tmp_path: Path,
                                                                                  monkeypatch, capsys, target: str,
                                                                                  epoch_kept: int):
    """Before: a traceback (torch's "RuntimeError: [enforce fail at inline_container.cc:672]", or
    "SafetensorError ... os error 28"); now exit 2 naming the file, and the run resumes."""
    run = tmp_path / "run"
    fill_the_disk_at(monkeypatch, target)
    assert main(train_args(tiny_mvtec, run, 3)) == 2
    err = capsys.readouterr().err
    written = run / {"last_state.pt": bundle.LAST_STATE, "last.safetensors": bundle.CHECKPOINTS["last"],
                     "history.png": bundle.HISTORY_PLOT}[target]
    assert f"error: {written}: {NO_SPACE}" in err and "--resume" in err and "Traceback" not in err, err
    assert checkpoint.read_last(run)["epoch"] == epoch_kept  # the last good checkpoint, whole
    assert not list(run.rglob("*.tmp"))
    monkeypatch.undo()  # space freed
    assert main(["train", "--out", str(run), "--resume", "--quiet"]) == 0
    assert [r["epoch"] for r in csv.DictReader((run / bundle.HISTORY).open())] == ["1", "2", "3"]


@pytest.mark.parametrize("verb, target", [("predict", "overlays"), ("calibrate", "calibration.json"),
                                          ("evaluate", "metrics.json")])
def test_a_full_disk_in_other_verbs_names_the_file(tiny_run, tiny_mvtec: Path, tmp_path: Path, monkeypatch, capsys,
                                                   verb: str, target: str):
    """Before: "No space left on device" alone, without the file."""
    run = copy_run(tiny_run(), tmp_path)
    real_write_text, real_write_bytes = Path.write_text, Path.write_bytes

    def full(real):
        def write(self, data, *args, **kwargs):
            if target in self.parts or self.name.startswith(f".{target}."):
                raise OSError(errno.ENOSPC, NO_SPACE)
            return real(self, data, *args, **kwargs)
        return write

    monkeypatch.setattr(Path, "write_text", full(real_write_text))
    monkeypatch.setattr(Path, "write_bytes", full(real_write_bytes))
    args = {"predict": ["predict", str(run), str(tiny_mvtec / "test"), "--out", str(tmp_path / "p")],
            "calibrate": ["calibrate", str(run)], "evaluate": ["evaluate", str(run), "--out", str(tmp_path / "e")]}[verb]
    assert main([*args, "--quiet"]) == 2
    err = capsys.readouterr().err
    named = {"predict": str(tmp_path / "p" / "overlays"), "calibrate": str(run / bundle.CALIBRATION),
             "evaluate": str(tmp_path / "e" / "metrics.json")}[verb]
    assert f"error: {named}" in err and err.strip().endswith(NO_SPACE), err


def test_a_full_disk_during_export_names_the_file_and_keeps_the_previous_export(tiny_run, tmp_path: Path, monkeypatch,
                                                                                capsys):
    """Before: "ONNX export of model ... failed: [Errno 28]", naming the run folder, not the file."""
    run = copy_run(tiny_run(), tmp_path)
    before = (run / bundle.ONNX).read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, NO_SPACE)

    monkeypatch.setattr(torch.onnx, "export", full_disk)
    assert main(["export", str(run), "--format", "onnx"]) == 2
    err = capsys.readouterr().err
    assert f"error: {run / bundle.ONNX}" in err and err.strip().endswith(NO_SPACE), err
    assert (run / bundle.ONNX).read_bytes() == before
    assert not list(run.glob(".model.onnx.*"))


# --- 10, 11. what the service shows and to whom ---------------------------------------------------


def test_the_service_shows_no_file_system_paths(tiny_run, tmp_path: Path, tiny_mvtec: Path):
    from surfad.serve.record import InspectionLog

    client = TestClient(create_app(Detector.load(tiny_run(), runtime="onnx"), record=InspectionLog(tmp_path / "rec")))
    text = client.get("/model").text + client.get("/stats").text
    assert str(tiny_mvtec) not in text and str(tmp_path) not in text and "/tmp" not in text


def test_cross_site_requests_and_foreign_hosts_are_refused(tiny_run):
    detector = Detector.load(tiny_run(), runtime="onnx")
    hosts = served_hosts("127.0.0.1", api_key=None, allow_hosts=["inspect.plant.local"])
    client = TestClient(create_app(detector, allowed_hosts=hosts), base_url="http://127.0.0.1:8000")
    assert client.get("/model").status_code == 200
    assert client.get("/model", headers={"Origin": "http://127.0.0.1:8000"}).status_code == 200  # the page itself
    assert client.get("/model", headers={"Origin": "https://evil.example"}).status_code == 403
    assert client.post("/predict", headers={"Origin": "null"}).status_code == 403
    assert client.get("/model", headers={"Host": "evil.example:8000"}).status_code == 403  # DNS rebinding
    assert client.get("/model", headers={"Host": "inspect.plant.local"}).status_code == 200
    assert served_hosts("0.0.0.0", api_key="k", allow_hosts=[]) is None  # with a key, any host; origins still checked
    keyed = TestClient(create_app(detector, api_key="k"), base_url="http://10.0.0.5:8000")
    assert keyed.get("/model", headers={"X-API-Key": "k"}).status_code == 200
    assert keyed.get("/model", headers={"X-API-Key": "k", "Origin": "https://evil.example"}).status_code == 403


LOCAL_ORIGINS = ["http://localhost:3000", "http://127.0.0.1:8001", "https://127.0.0.1:8000", "http://[::1]:8080",
                 "http://localhost", "http://127.0.0.1", "http://inspect.plant.local:9000"]


@pytest.mark.parametrize("origin", LOCAL_ORIGINS)
@pytest.mark.parametrize("api_key", [None, "k"])
def test_another_local_origin_is_refused(tiny_run, origin: str, api_key: str | None):
    """Before: an Origin passed on its host alone, so a page on another port (or scheme) of the same
    machine could post uploads and read /model."""
    detector = Detector.load(tiny_run(), runtime="onnx")
    hosts = served_hosts("127.0.0.1", api_key=api_key, allow_hosts=["inspect.plant.local"])
    client = TestClient(create_app(detector, api_key=api_key, allowed_hosts=hosts), base_url="http://127.0.0.1:8000",
                        headers={"X-API-Key": "k"} if api_key else {})
    for response in (client.get("/model", headers={"Origin": origin}),
                     client.post("/predict", headers={"Origin": origin}, files={"file": ("a.png", b"x")})):
        assert response.status_code == 403 and "cross-origin request" in response.json()["detail"], origin


@pytest.mark.parametrize("host, origin", [("127.0.0.1:8000", "http://127.0.0.1:8000"),
                                          ("localhost:8000", "http://localhost:8000"),
                                          ("LocalHost:8000", "http://localhost:8000/"),
                                          ("inspect.plant.local:8000", "http://inspect.plant.local:8000"),
                                          ("inspect.plant.local", "http://inspect.plant.local:80"),
                                          ("[::1]:8000", "http://[::1]:8000")])
def test_the_page_works_from_the_origin_it_was_opened_at(tiny_run, host: str, origin: str):
    hosts = served_hosts("127.0.0.1", api_key=None, allow_hosts=["inspect.plant.local"])
    client = TestClient(create_app(Detector.load(tiny_run(), runtime="onnx"), allowed_hosts=hosts))
    assert client.get("/model", headers={"Host": host, "Origin": origin}).status_code == 200


def test_behind_an_https_proxy_the_page_keeps_working(tiny_run):
    """The scheme is the request's own: https where the connection (a trusted proxy's
    X-Forwarded-Proto, which uvicorn applies) says so, so http://NAME is then another origin."""
    client = TestClient(create_app(Detector.load(tiny_run(), runtime="onnx"), api_key="k"),
                        base_url="https://inspect.plant.local", headers={"X-API-Key": "k"})
    assert client.get("/model", headers={"Origin": "https://inspect.plant.local"}).status_code == 200
    assert client.get("/model", headers={"Origin": "http://inspect.plant.local"}).status_code == 403


@pytest.mark.parametrize("given", [["--api-key", ""], ["--api-key", "  "], "env"])
def test_an_empty_api_key_is_refused(tiny_run, given, monkeypatch, capsys):
    """Before: `--api-key "$KEY"` with KEY unset served without any key."""
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: pytest.fail("served with an empty key"))
    if given == "env":
        monkeypatch.setenv("SURFAD_API_KEY", "")
        given = []
    assert main(["serve", str(tiny_run()), "--port", "9", *given]) == 2
    assert "the API key is empty" in capsys.readouterr().err
    with pytest.raises(SurfadError, match="API key is empty"):
        create_app(Detector.load(tiny_run(), runtime="onnx"), api_key="")


# --- 12, 14, 15. prediction outputs ----------------------------------------------------------------


def test_a_second_writer_into_the_same_output_is_refused(tiny_run, tiny_mvtec: Path, tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    with exclusive(out / LOCK, "busy"):  # as a running `surfad predict` holds it
        with pytest.raises(SurfadError, match="another `surfad predict` is writing into it"):
            predict_files(Detector.load(tiny_run()), [str(tiny_mvtec / "test")], out, progress=False)
    assert predict_files(Detector.load(tiny_run()), [str(tiny_mvtec / "test")], out, progress=False)["done"] == 12


def test_gallery_links_are_url_encoded(tmp_path: Path):
    for name in ("a#b", "50%", "x?y"):
        (tmp_path / "overlays").mkdir(exist_ok=True)
        (tmp_path / "overlays" / f"{name}.png").write_bytes(b"")
    records = [{"path": n, "score": 1.0, "threshold": 0.5, "verdict": "NG", "regions": [],
                "overlay": str(tmp_path / "overlays" / f"{n}.png")} for n in ("a#b", "50%", "x?y")]
    page = write_gallery(tmp_path, records).read_text()
    for encoded in ("overlays/a%23b.png", "overlays/50%25.png", "overlays/x%3Fy.png"):
        assert f'href="{encoded}"' in page


def test_written_files_respect_the_umask(tmp_path: Path):
    atomic_write_text(tmp_path / "a.txt", "x")  # mkstemp alone makes 0600 files
    mode = stat.S_IMODE((tmp_path / "a.txt").stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask and mode & stat.S_IRGRP == (0 if umask & 0o040 else stat.S_IRGRP)


def test_bad_image_arrays_get_a_clear_error(tiny_run):
    detector = Detector.load(tiny_run())
    for bad in (np.zeros((0, 10, 3), np.uint8), np.zeros((10, 10, 2), np.uint8), np.zeros((10, 10), np.float32)):
        with pytest.raises(BadInputError, match="image array must be"):
            detector.predict(bad)


def test_checkpoint_writes_are_one_file(tiny_mvtec: Path, tmp_path: Path):
    """The resume state carries the weights, so the pair cannot disagree."""
    run = tmp_path / "run"
    assert main(train_args(tiny_mvtec, run, 1)) == 0
    state = checkpoint.read_last(run)
    weights = load_file(run / "checkpoints" / "last.safetensors")
    assert set(state["model"]) == set(weights)
    assert all(np.array_equal(state["model"][k].numpy(), weights[k]) for k in weights)
