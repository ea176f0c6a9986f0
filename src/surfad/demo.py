"""The built-in demonstration: synth -> fit -> calibrate -> evaluate -> predict, on CPU in seconds."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from surfad.batch_predict import predict_files
from surfad.config import DataConfig, RunConfig
from surfad.data.synthetic_wood import write_synthetic_dataset
from surfad.detector import Detector
from surfad.evaluate import calibrate_run, evaluate_run, summary_line
from surfad.report import GALLERY_NAME
from surfad.training import train

# The recommended model (pretrained features, fitted in one pass), at a size that fits on 2 CPU
# cores in seconds; see benchmarks/RESULTS.md for real-data settings and the other models.
DEMO_CONFIG = RunConfig(model="padim", data=DataConfig(image_size=128))


def run_demo(out: Path, progress: bool = True) -> dict:
    """Run the whole workflow under `out` (replacing an earlier demo there); returns the test metrics."""
    if out.exists():
        shutil.rmtree(out)
    print("1/5 writing the synthetic wood dataset")
    data = write_synthetic_dataset(out / "data", seed=0)
    print("2/5 fitting PaDiM (ImageNet features) on its good images")
    config = replace(DEMO_CONFIG, data=replace(DEMO_CONFIG.data, path=str(data)))
    run = train(config, out / "run", progress=progress)
    print("3/5 calibrating the threshold on the validation split")
    calibration = calibrate_run(run, split="val", strategy="f1")
    print(f"    threshold {calibration.threshold:.5g} ({calibration.n_good} good, {calibration.n_defect} defective)")
    print("4/5 evaluating on the test split")
    metrics = evaluate_run(run, split="test", out=out / "evaluation")
    print("5/5 inspecting the test images")
    counts = predict_files(Detector.load(run), [str(data / "test")], out / "predictions", progress=progress)
    print(f"\nreport: {out / 'evaluation' / 'report.html'}")
    print(f"predictions: {out / 'predictions' / 'predictions.jsonl'} ({counts['ng']} NG of {counts['done']}); "
          f"to review them: {out / 'predictions' / GALLERY_NAME}")
    print(f"summary: {summary_line(metrics)}")
    return metrics
