"""Batch prediction to files: inputs, outputs, corrupt files and resuming."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import cv2
import pytest

from surfad.batch_predict import CSV, ERRORS, JSONL, predict_files
from surfad.cli import main
from surfad.data.layouts import expand_inputs
from surfad.detector import Detector
from surfad.errors import SurfadError

KEYS = {"path", "score", "threshold", "verdict", "review", "regions", "heatmap", "overlay", "mask"}


@pytest.fixture(scope="module")
def detector(tiny_run) -> Detector:
    return Detector.load(tiny_run())


@pytest.fixture
def images(tiny_mvtec: Path, tmp_path: Path) -> Path:
    """A folder of 6 test images: 3 at the top, 3 in a sub-folder, plus a text file to ignore."""
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    sources = sorted((tiny_mvtec / "test").rglob("*.png"))[:6]
    for i, src in enumerate(sources):
        shutil.copy(src, root / ("sub" if i >= 3 else "") / f"img{i}.png")
    (root / "notes.txt").write_text("not an image")
    return root


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / JSONL).read_text().splitlines()]


def test_outputs(detector: Detector, images: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    counts = predict_files(detector, [str(images)], out, batch_size=4, progress=False)
    assert counts == {"images": 6, "already_done": 0, "done": 6, "failed": 0, "ng": counts["ng"], "review": 0}
    rows = records(out)
    # NG images' regions have nearest good examples (the run keeps training examples), cropped beside them
    assert len(rows) == 6 and all(set(r) == (KEYS | {"crops"} if r["regions"] else KEYS) for r in rows)
    for r in rows:
        source = cv2.imread(r["path"])
        for key in ("heatmap", "overlay", "mask"):
            written = cv2.imread(r[key], cv2.IMREAD_UNCHANGED)
            assert written is not None and written.shape[:2] == source.shape[:2]
        assert r["verdict"] == ("NG" if r["score"] > r["threshold"] else "OK")
        assert r["threshold"] == detector.threshold
    with (out / CSV).open() as f:
        table = list(csv.DictReader(f))
    assert [t["path"] for t in table] == [r["path"] for r in rows]
    assert {"score", "verdict", "n_regions", "regions", "heatmap", "overlay", "mask"} <= set(table[0])
    assert (out / ERRORS).read_text() == ""


def test_resume_skips_done_images_after_a_truncated_line(detector: Detector, images: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    predict_files(detector, [str(images / "sub")], out, progress=False)
    first = records(out)
    assert len(first) == 3
    text = (out / JSONL).read_text()
    (out / JSONL).write_text(text[: text.rindex("\n", 0, -1) + 1] + text.splitlines()[-1][:25])  # cut the last record
    counts = predict_files(detector, [str(images)], out, progress=False)
    assert counts["already_done"] == 2 and counts["done"] == 4
    rows = records(out)  # every line parses again
    assert sorted(r["path"] for r in rows) == sorted(str(p.resolve()) for p in images.rglob("*.png"))
    assert predict_files(detector, [str(images)], out, progress=False)["done"] == 0


def test_resume_after_a_record_without_newline(detector: Detector, images: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    predict_files(detector, [str(images / "img0.png")], out, progress=False)
    (out / JSONL).write_text((out / JSONL).read_text().rstrip("\n"))
    counts = predict_files(detector, [str(images / "img0.png"), str(images / "img1.png")], out, progress=False)
    assert counts["already_done"] == 1 and counts["done"] == 1
    assert len(records(out)) == 2


def test_corrupt_file_is_reported_and_the_batch_continues(detector: Detector, images: Path, tmp_path: Path) -> None:
    good = (images / "img1.png").read_bytes()
    (images / "broken.png").write_bytes(good[: len(good) // 2])
    (images / "text.png").write_text("a text file named .png")
    out = tmp_path / "out"
    counts = predict_files(detector, [str(images)], out, batch_size=3, progress=False)
    assert counts["done"] == 6 and counts["failed"] == 2
    errors = [json.loads(line) for line in (out / ERRORS).read_text().splitlines()]
    assert sorted(Path(e["path"]).name for e in errors) == ["broken.png", "text.png"]
    assert all("not a readable image" in e["error"] for e in errors)
    assert len(records(out)) == 6


def test_inputs_expand_files_folders_and_globs(images: Path) -> None:
    top = sorted(str(p.resolve()) for p in images.glob("*.png"))
    assert [str(p) for p in expand_inputs([str(images / "*.png")])] == top
    everything = expand_inputs([str(images), str(images / "**" / "*.png"), str(images / "img0.png")])
    assert len(everything) == 6  # recursive, de-duplicated, notes.txt left out
    assert len(expand_inputs([str(images / "**" / "img*.png")])) == 6
    assert len(expand_inputs([str(images)], exclude=images / "sub")) == 3
    with pytest.raises(SurfadError, match="no such file, folder or matching pattern"):
        expand_inputs([str(images / "missing")])
    with pytest.raises(SurfadError, match="no images found"):
        expand_inputs([str(images / "*.txt")])


def test_outputs_inside_the_input_folder_are_not_inputs(detector: Detector, images: Path) -> None:
    out = images / "results"
    predict_files(detector, [str(images)], out, progress=False)
    counts = predict_files(detector, [str(images)], out, progress=False)
    assert counts["images"] == 6 and counts["already_done"] == 6


def test_cli_predict_with_onnx(tiny_run, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tiny_run()
    out = tmp_path / "out"
    assert main(["predict", str(run), str(images / "sub"), "--out", str(out), "--runtime", "onnx", "--quiet"]) == 0
    assert "3 predicted" in capsys.readouterr().out and len(records(out)) == 3


def test_index_page_shows_ng_first_then_the_most_doubtful_ok(detector: Detector, images: Path, tmp_path: Path) -> None:
    scores = sorted(detector.predict(str(p)).score for p in sorted(images.rglob("*.png")))
    threshold = (scores[2] + scores[3]) / 2  # three NG, three OK
    out = tmp_path / "out"
    predict_files(detector, [str(images)], out, threshold=threshold, batch_size=4, progress=False)
    page = (out / "index.html").read_text()
    assert "6 images, 3 NG" in page
    links = re.findall(r'<a href="([^"]+)">', page)
    assert len(links) == 6 and all((out / link).is_file() and not Path(link).is_absolute() for link in links)
    ng_part, ok_part = page.split("<h2>OK")
    for part, expected in ((ng_part, scores[3:]), (ok_part, scores[:3])):  # NG first, then OK; each highest first
        shown = [float(x) for x in re.findall(r"score ([0-9.e+-]+) \(threshold", part)]
        assert shown == pytest.approx(sorted(expected, reverse=True), rel=1e-3)  # shown with 4 digits


def test_sort_into_copies_each_image_by_verdict(detector: Detector, images: Path, tmp_path: Path) -> None:
    sources = sorted(images.rglob("*.png"))
    scores = sorted(detector.predict(str(p)).score for p in sources)
    threshold = (scores[2] + scores[3]) / 2  # three NG, three OK
    out, sorted_dir = tmp_path / "out", images / "sorted"  # inside the input folder: its copies are not inputs
    for _ in range(2):  # the second run resumes: nothing new to copy
        predict_files(detector, [str(images)], out, threshold=threshold, progress=False, sort_into=sorted_dir)
    ng, ok = sorted((sorted_dir / "NG").iterdir()), sorted((sorted_dir / "OK").iterdir())
    assert len(ng) == 3 and len(ok) == 3 and len(records(out)) == 6
    by_stem = {Path(r["overlay"]).stem: r for r in records(out)}
    for folder, copies in (("NG", ng), ("OK", ok)):
        for copy in copies:
            record = by_stem[copy.stem]  # named as its outputs
            assert record["verdict"] == folder and copy.read_bytes() == Path(record["path"]).read_bytes()


def test_errors_list_each_failing_image_once_and_drop_it_once_it_succeeds(detector: Detector, images: Path,
                                                                         tmp_path: Path) -> None:
    """Before: every rerun appended the same failures again, and an image fixed since stayed listed."""
    good = (images / "img1.png").read_bytes()
    (images / "broken.png").write_bytes(good[: len(good) // 2])
    (images / "text.png").write_text("a text file named .png")
    out = tmp_path / "out"
    for _ in range(3):
        predict_files(detector, [str(images)], out, progress=False)
    errors = [json.loads(line) for line in (out / ERRORS).read_text().splitlines()]
    assert sorted(Path(e["path"]).name for e in errors) == ["broken.png", "text.png"]
    (images / "broken.png").write_bytes(good)  # repaired
    counts = predict_files(detector, [str(images)], out, progress=False)
    assert counts["done"] == 1 and counts["failed"] == 1
    errors = [json.loads(line) for line in (out / ERRORS).read_text().splitlines()]
    assert [Path(e["path"]).name for e in errors] == ["text.png"]


def test_a_broken_link_is_counted_and_reported(detector: Detector, images: Path, tmp_path: Path) -> None:
    """Before: a symbolic link to a missing file was silently left out of the inputs."""
    (images / "gone.png").symlink_to(tmp_path / "missing.png")
    (images / "sub" / "moved.png").symlink_to("nowhere.png")
    out = tmp_path / "out"
    counts = predict_files(detector, [str(images), str(images / "gone.png")], out, progress=False)
    assert counts["images"] == 8 and counts["done"] == 6 and counts["failed"] == 2
    errors = {Path(e["path"]).name: e["error"] for e in map(json.loads, (out / ERRORS).read_text().splitlines())}
    assert set(errors) == {"gone.png", "moved.png"}
    assert "broken symbolic link" in errors["gone.png"] and "missing.png" in errors["gone.png"]
    assert str(images / "gone.png") in errors["gone.png"]  # the link named, not its target


def test_predict_fails_when_no_image_could_be_read(tiny_run, tmp_path: Path, capsys) -> None:
    """Before: exit 0 with "0 predicted"."""
    folder = tmp_path / "unreadable"
    folder.mkdir()
    (folder / "a.png").write_text("not a picture")
    (folder / "b.png").symlink_to(tmp_path / "missing.png")
    out = tmp_path / "out"
    assert main(["predict", str(tiny_run()), str(folder), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "none of the 2 input image(s) could be read" in err and str(out / ERRORS) in err
    assert len((out / ERRORS).read_text().splitlines()) == 2
    assert main(["predict", str(tiny_run()), str(tmp_path / "empty*"), "--out", str(out), "--quiet"]) == 2
    assert "no such file, folder or matching pattern" in capsys.readouterr().err


def test_hidden_files_and_folders_are_not_inputs(images: Path) -> None:
    """Before: a folder input listed hidden files (.thumbnail.png, .git/...) that training's
    list_images leaves out."""
    from surfad.data.layouts import list_images

    (images / ".hidden.png").write_bytes((images / "img0.png").read_bytes())
    (images / ".cache").mkdir()
    (images / ".cache" / "thumb.png").write_bytes((images / "img0.png").read_bytes())
    (images / "sub" / ".x.png").write_bytes(b"")
    found = expand_inputs([str(images)])
    assert len(found) == 6 and not any(part.startswith(".") for p in found for part in p.relative_to(images.resolve()).parts)
    assert [p.resolve() for p in list_images(images)] == [p for p in found if p.parent == images.resolve()]
    assert len(expand_inputs([str(images / "**" / "*.png")])) == 6  # glob patterns skip hidden names too
    assert expand_inputs([str(images / ".hidden.png")]) == [(images / ".hidden.png").resolve()]  # named: kept
