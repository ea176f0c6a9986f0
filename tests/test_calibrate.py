"""Threshold strategies on data with known answers, errors, and calibration.json round trips."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from surfad.calibrate import (
    Calibration,
    calibrate,
    choose_threshold,
    parse_strategy,
    pixel_threshold,
    trade_offs,
)
from surfad.errors import SurfadError

# Good: 0.1 0.2 0.3 0.55; defect: 0.5 0.6 0.7 0.8 (one defect below the worst good image).
SCORES = np.array([0.1, 0.2, 0.3, 0.55, 0.5, 0.6, 0.7, 0.8])
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1])


def _rates(threshold: float) -> tuple[float, float]:
    ng = SCORES > threshold
    return ng[LABELS == 1].mean(), ng[LABELS == 0].mean()


def test_parse_strategy() -> None:
    assert parse_strategy("f1") == ("f1", None)
    assert parse_strategy(" youden ") == ("youden", None)
    assert parse_strategy("recall:0.99") == ("recall", 0.99)
    assert parse_strategy("recall:1") == ("recall", 1.0)
    assert parse_strategy("fpr:0") == ("fpr", 0.0)
    for bad in ("", "F1x", "f1:0.5", "recall", "recall:0", "recall:1.5", "fpr:1", "fpr:-0.1", "fpr:abc", "fpr:nan", "auc"):
        with pytest.raises(SurfadError, match="valid strategies"):
            parse_strategy(bad)


def test_f1_strategy() -> None:
    # F1 = 2TP / (#NG + #defects) for NG = scores >= 0.8, 0.7, 0.6, 0.55, 0.5, 0.3:
    # 2/5, 4/6, 6/7, 6/8, 8/9, 8/10 -> best 8/9 with NG down to 0.5 (and the good 0.55);
    # the threshold sits midway between 0.5 and the next lower score 0.3 -> 0.4.
    t = choose_threshold(SCORES, LABELS, "f1")
    assert t == pytest.approx(0.4)
    assert _rates(t) == (1.0, 0.25)


def test_youden_strategy() -> None:
    # J at NG >= 0.6: 3/4 - 0 = 0.75; at NG >= 0.5: 1 - 1/4 = 0.75 too; the higher threshold wins
    # among ties: midway between 0.6 and 0.55 -> 0.575.
    t = choose_threshold(SCORES, LABELS, "youden")
    assert t == pytest.approx(0.575)
    assert _rates(t) == (0.75, 0.0)


@pytest.mark.parametrize(
    ("strategy", "expected", "recall"),
    [
        ("recall:0.5", 0.65, 0.5),  # 2 of 4 defects: NG = {0.7, 0.8}, midway 0.7/0.6
        ("recall:0.75", 0.575, 0.75),  # NG down to 0.6, midway 0.6/0.55
        ("recall:0.76", 0.4, 1.0),  # needs all 4: NG down to 0.5, midway 0.5/0.3
        ("recall:1", 0.4, 1.0),
    ],
)
def test_recall_strategy(strategy: str, expected: float, recall: float) -> None:
    t = choose_threshold(SCORES, LABELS, strategy)
    assert t == pytest.approx(expected)
    assert _rates(t)[0] == recall


def test_fpr_strategy_lies_midway_above_an_order_statistic_of_good_scores() -> None:
    good = np.arange(1, 101) / 100  # 0.01 .. 1.00
    labels = np.zeros(100)
    # fpr:0.01 allows 1 good score above: the second highest (0.99) is kept OK, midway to 1.00.
    assert choose_threshold(good, labels, "fpr:0.01") == pytest.approx(0.995)
    # fpr:0: nothing above; the 0.01 gap below the top score is mirrored above it.
    assert choose_threshold(good, labels, "fpr:0") == pytest.approx(1.005)
    # 0.29 * 100 is 28.999... in floating point: still 29 allowed above -> midway 0.71 .. 0.72.
    t = choose_threshold(good, labels, "fpr:0.29")
    assert t == pytest.approx(0.715) and np.sum(good > t) == 29
    assert choose_threshold(good, labels, "fpr:0.999") == pytest.approx(0.015)
    # Defect scores are ignored; ties with the kept score count as OK: good 0.1, 0.5, 0.5, 0.5 with
    # 1 allowed above keeps 0.5 (index 2); nothing good is higher, so the gap 0.5 - 0.1 is mirrored.
    tied = np.array([0.1, 0.5, 0.5, 0.5, 9.0])
    t = choose_threshold(tied, [0, 0, 0, 0, 1], "fpr:0.25")
    assert t == pytest.approx(0.7) and np.sum(tied[:4] > t) == 0


def test_verdict_rule_is_consistent_with_the_chosen_thresholds() -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random(200) < 0.3).astype(int)
    scores = rng.normal(size=200).astype(np.float32) + labels
    defect, good = scores[labels == 1], scores[labels == 0]

    t = choose_threshold(scores, labels, "recall:0.9")
    assert np.mean(defect > t) >= 0.9
    # Tight: also calling the lowest NG score OK would drop recall below 0.9.
    assert np.mean(defect > scores[scores > t].min()) < 0.9

    t = choose_threshold(scores, labels, "fpr:0.05")
    assert np.mean(good > t) <= 0.05
    assert not np.any(good == t)  # no image sits on the threshold
    # Tight: a threshold at the good score below the kept one would exceed the allowed 5%.
    kept = good[good < t].max()
    assert np.mean(good > good[good < kept].max()) > 0.05


def test_strategies_that_need_defects_fail_clearly_on_good_only_data() -> None:
    good_only = np.zeros(4)
    for strategy in ("f1", "youden", "recall:0.9"):
        with pytest.raises(SurfadError, match="fpr:0.01") as err:
            choose_threshold([0.1, 0.2, 0.3, 0.4], good_only, strategy)
        assert "only good" in str(err.value)
    with pytest.raises(SurfadError, match="needs good images"):
        choose_threshold([0.1, 0.2], [1, 1], "fpr:0.01")
    with pytest.raises(SurfadError, match="valid strategies"):
        choose_threshold([0.1, 0.2], [0, 1], "best")


def test_pixel_threshold_maximises_pixel_f1_with_masks() -> None:
    maps = np.zeros((2, 4, 4))
    masks = np.zeros((2, 4, 4), bool)
    masks[1, :2, :2] = True
    maps[1, :2, :2] = 0.8
    maps[0, 0, 0] = 0.3  # the brightest normal pixel
    # Perfect split between 0.3 and 0.8: midway -> 0.55.
    assert pixel_threshold(maps, masks, [0, 1]) == pytest.approx(0.55)


def test_pixel_threshold_without_masks_is_a_high_quantile_of_good_pixels() -> None:
    rng = np.random.default_rng(0)
    maps = rng.random((3, 20, 50))
    maps[2] += 10  # a defective image without mask must not count
    expected = np.quantile(maps[:2], 0.999)
    assert pixel_threshold(maps, np.zeros(maps.shape, bool), [0, 0, 1]) == pytest.approx(expected)
    assert pixel_threshold(maps, None, [0, 0, 1]) == pytest.approx(expected)
    with pytest.raises(SurfadError, match="pixel threshold"):
        pixel_threshold(maps, None, [1, 1, 1])


def test_calibrate_and_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    maps = rng.random((8, 6, 6)).astype(np.float32)
    masks = np.zeros(maps.shape, bool)
    masks[4:, 1:3, 1:3] = True
    maps[masks] += 1
    cal = calibrate(SCORES, LABELS, maps, masks, "youden", split="val")
    assert cal.threshold == pytest.approx(0.575)
    assert (cal.strategy, cal.split, cal.n_good, cal.n_defect) == ("youden", "val", 4, 4)
    assert 0 < cal.pixel_threshold < 1.5
    assert cal.normal_stats["max"] == 0.55 and cal.normal_stats["mean"] == pytest.approx(0.2875)
    assert set(cal.normal_stats) == {"mean", "std", "min", "max", "p50", "p90", "p95", "p99"}

    path = tmp_path / "run" / "calibration.json"
    cal.save(path)
    assert Calibration.load(path) == cal
    assert json.loads(path.read_text())["threshold"] == cal.threshold


def test_calibrate_good_only_data_with_fpr() -> None:
    scores = np.linspace(0, 1, 11)
    cal = calibrate(scores, np.zeros(11), np.zeros((11, 4, 4)), None, "fpr:0.1", split="val")
    assert cal.threshold == pytest.approx(0.95) and cal.n_defect == 0 and cal.pixel_threshold == 0.0


def test_load_errors_name_the_file_and_field(tmp_path: Path) -> None:
    with pytest.raises(SurfadError, match="not found"):
        Calibration.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SurfadError, match="bad.json: not a readable calibration file"):
        Calibration.load(bad)
    cal = Calibration(0.5, "f1", 0.7, "val", 3, 2, {})
    d = cal.to_dict()
    del d["pixel_threshold"]
    with pytest.raises(SurfadError, match="pixel_threshold"):
        Calibration.from_dict(d)
    with pytest.raises(SurfadError, match="calibration.threshold"):
        Calibration.from_dict({**cal.to_dict(), "threshold": "high"})
    assert Calibration.from_dict({**cal.to_dict(), "threshold": 1}).threshold == 1.0
    # A NaN threshold would call every part OK (NaN compares False); infinity, every part OK or NG.
    for field, value in (("threshold", "NaN"), ("threshold", "Infinity"), ("pixel_threshold", "NaN"),
                         ("threshold", "-Infinity")):
        tampered = tmp_path / f"{field}_{value}.json"
        tampered.write_text(json.dumps({**cal.to_dict(), field: 0.0}).replace(f'"{field}": 0.0', f'"{field}": {value}'))
        with pytest.raises(SurfadError, match=rf"{tampered.name}: calibration.{field}=.*must be a finite number"):
            Calibration.load(tampered)
    with pytest.raises(SurfadError, match="normal_stats"):
        Calibration(0.5, "f1", 0.7, "val", 3, 2, {"p95": math.nan})


def test_trade_offs_show_what_each_rule_gives_on_the_data():
    scores = [0.1, 0.2, 0.3, 0.4, 0.35, 0.5]
    labels = [0, 0, 0, 0, 1, 1]
    table = trade_offs(scores, labels, ("fpr:0", "recall:1"))
    assert table["fpr:0"] == pytest.approx({"threshold": 0.45, "fpr": 0.0, "recall": 0.5, "precision": 1.0})
    assert table["recall:1"] == pytest.approx({"threshold": 0.325, "fpr": 0.25, "recall": 1.0, "precision": 2 / 3})
    assert trade_offs([0.1, 0.2], [0, 0]) == {}  # one class: no trade-off to show
