"""`surfad curve`: accuracy against the number of good training images, on fixed validation and test."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from surfad import curve
from surfad.cli import main
from surfad.errors import SurfadError

ARGS = ["--model", "padim", "--preset", "tiny", "--image-size", "32", "--threads", "1", "--batch-size", "4", "--quiet"]


def rows(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((out / "curve.csv").open()))


def test_curve_writes_the_table_and_plot_on_fixed_validation_and_test(tiny_mvtec: Path, tmp_path: Path) -> None:
    out = tmp_path / "curve"
    assert main(["curve", "--data", str(tiny_mvtec), *ARGS, "--sizes", "3,5,all", "--seeds", "2", "--out", str(out),
                 "--keep-runs"]) == 0
    table = rows(out)
    assert [(r["size"], r["seed"]) for r in table] == [("3", "0"), ("3", "1"), ("5", "0"), ("5", "1"), ("10", "0")]
    assert set(table[0]) == set(curve.COLUMNS)
    for r in table:
        assert int(r["train_images"]) == int(r["size"])
        assert 0 <= float(r["val_image_auroc"]) <= 1 and 0 <= float(r["test_image_auroc"]) <= 1
        assert float(r["test_aupro"]) >= 0 and float(r["fit_seconds"]) >= 0
    assert (out / "curve.png").read_bytes().startswith(b"\x89PNG")
    splits = {name: json.loads((out / "runs" / name / "splits.json").read_text())
              for name in ("n3_s0", "n3_s1", "n5_s0", "n5_s1", "n10_s0")}
    trains = {name: [s["path"] for s in split["train"]] for name, split in splits.items()}
    assert len(trains["n3_s0"]) == 3 and len(trains["n10_s0"]) == 10
    assert trains["n3_s0"] != trains["n3_s1"] and trains["n5_s0"] != trains["n5_s1"]  # seeds draw other subsets
    assert set(trains["n3_s0"]) < set(trains["n5_s0"])  # one seed's subsets are nested
    for name in ("val", "test"):  # the same validation and test for every point
        assert len({json.dumps(split[name]) for split in splits.values()}) == 1
    assert not set(trains["n10_s0"]) & {s["path"] for s in splits["n10_s0"]["val"]}


def test_curve_resumes_and_refuses_another_config(tiny_mvtec: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "curve"
    assert main(["curve", "--data", str(tiny_mvtec), *ARGS, "--sizes", "3", "--seeds", "1", "--out", str(out)]) == 0
    assert not (out / "runs" / "n3_s0").exists()  # run folders go once measured, unless --keep-runs
    first = rows(out)

    def refit(*args, **kwargs):
        raise AssertionError("a finished point was fitted again")

    monkeypatch.setattr(curve, "train", refit)
    assert main(["curve", "--data", str(tiny_mvtec), *ARGS, "--sizes", "3", "--seeds", "1", "--out", str(out)]) == 0
    assert rows(out) == first
    assert main(["curve", "--data", str(tiny_mvtec), *ARGS, "--image-size", "64", "--sizes", "3", "--seeds", "1",
                 "--out", str(out)]) == 2


def test_sizes_are_checked() -> None:
    assert curve.parse_sizes("10,all,5,5", 40) == [5, 10, 40]
    for text, words in (("1", "too few"), ("50", "more than the 40"), ("ten", "not a number"), ("", "at least one")):
        with pytest.raises(SurfadError, match=words):
            curve.parse_sizes(text, 40)
    assert curve.points_to_fit([5, 40], 3, 40) == [(5, 0), (5, 1), (5, 2), (40, 0)]
