"""`make demo`: the whole workflow on the built-in data, as a newcomer runs it first."""

from __future__ import annotations

from pathlib import Path

import pytest

from surfad.demo import run_demo


@pytest.mark.slow
def test_the_demo_runs_end_to_end_and_detects(tmp_path: Path, capsys) -> None:
    metrics = run_demo(tmp_path / "demo", progress=False)
    out = capsys.readouterr().out
    assert metrics["image_auroc"] >= 0.95 and metrics["n_images"] == 60  # measured figures: RESULTS.md, "Demo"
    for name in ("evaluation/report.html", "predictions/predictions.jsonl", "predictions/index.html",
                 "run/model.safetensors", "run/calibration.json"):
        assert (tmp_path / "demo" / name).is_file(), name
    assert "report:" in out and "summary:" in out
