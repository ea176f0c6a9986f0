"""A short end-to-end run on the real wood data in ../shared/data (skipped when it is absent)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from surfad.cli import main

WOOD = Path(__file__).parents[1] / ".." / "shared" / "data" / "wood-vsb-256" / "wood"

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not WOOD.is_dir(), reason=f"real data not found at {WOOD} (see ../shared/data/README.md)"),
]


def test_wood_train_calibrate_on_one_half_evaluate_on_the_other(tmp_path: Path):
    run = tmp_path / "run"
    assert main(["train", "--data", str(WOOD), "--image-size", "32", "--epochs", "2", "--batch-size", "16",
                 "--threads", "1", "--out", str(run), "--quiet", "--model", "unet_vae", "--param", "base_width=4", "--param", "depth=2",
                 "--param", "skip_levels=[1]"]) == 0
    splits = json.loads((run / "splits.json").read_text())
    assert len(splits["train"]) + len(splits["val"]) == 70 and len(splits["test"]) == 141
    assert main(["calibrate", str(run), "--split", "test_a", "--strategy", "f1"]) == 0
    assert main(["evaluate", str(run), "--split", "test_b", "--out", str(tmp_path / "ev")]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["n_images"] == 70  # the half not used for the threshold (35 good + 35 of the 71 defects)
    assert 0.0 <= metrics["image_auroc"] <= 1.0 and 0.0 <= metrics["aupro"] <= 1.0
