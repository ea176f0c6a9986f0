"""Float against INT8 ONNX on real runs: per-image latency at 1 thread and image AUROC on the test split.

    python benchmarks/int8.py benchmarks/runs/mt_padim benchmarks/runs/mt_patchcore --image IMG --runs 200

Each run is exported with `surfad export RUN --quantize int8`. When the export refuses the INT8
model (its validation verdicts change beyond the bound), a copy of the run (RUN_int8_refused) gets
one made without the bound, so the refused model's cost and accuracy are on record too; such a row
says "refused". Latency: benchmarks/latency.py's figures (Detector.predict and the model alone, the
runtimes' calls interleaved). AUROC: `surfad evaluate RUN --runtime onnx|onnx-int8` on the test split.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from latency import measure

from surfad import bundle
from surfad.data.io import read_image
from surfad.detector import RunDetector
from surfad.errors import SurfadError
from surfad.evaluate import evaluate_run
from surfad.export import int8
from surfad.export.onnx import EXPORT_JSON, export_onnx


def int8_run(run: Path) -> tuple[Path, str]:
    """The run with a model.int8.onnx (kept by the export, or made without the bound in a copy) and
    what the export said."""
    try:
        export_onnx(run, quantize="int8")
        return run, "kept"
    except SurfadError as err:
        copy = run.with_name(run.name + "_int8_refused")
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(run, copy)
        bound, int8.INT8_MAX_VERDICT_CHANGES = int8.INT8_MAX_VERDICT_CHANGES, 1.0
        try:
            export_onnx(copy, quantize="int8")
        finally:
            int8.INT8_MAX_VERDICT_CHANGES = bound
        return copy, f"refused: {err}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--runs", dest="repeats", type=int, default=200)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    image = read_image(args.image)
    timing = argparse.Namespace(runs=args.repeats, warmup=10, batch=16, max_seconds=120.0)
    results = {}
    for run in args.runs:
        measured, verdict = int8_run(run)
        agreement = json.loads((measured / EXPORT_JSON).read_text())["int8"]["agreement"]
        detectors = {r: RunDetector.open(measured, r, threads=1) for r in ("onnx", "onnx-int8")}
        latency = measure(detectors, image, timing)
        auroc = {r: evaluate_run(measured, split="test", runtime=r, out=measured / f"eval_test_{r}")["image_auroc"]
                 for r in detectors}
        results[run.name] = {"int8": verdict, "agreement": agreement, "latency": latency, "test_image_auroc": auroc}
        f, q = latency["onnx"], latency["onnx-int8"]
        print(f"{run.name}: INT8 {verdict.split(':')[0]} ({agreement['verdicts_changed']} of {agreement['val_images']} "
              f"validation verdicts changed, rank correlation {agreement['score_spearman']:.3f})")
        for name, r in (("float", f), ("int8", q)):
            print(f"  {name:<5} predict p50 {r['single_p50_ms']:.2f} p99 {r['single_p99_ms']:.2f} ms, model p50 "
                  f"{r['model_p50_ms']:.2f} p99 {r['model_p99_ms']:.2f} ms, batch-16 {r['batch_images_per_s']:.1f} img/s")
        print(f"  INT8 / float: predict x{f['single_p50_ms'] / q['single_p50_ms']:.2f}, model "
              f"x{f['model_p50_ms'] / q['model_p50_ms']:.2f}, batch x{q['batch_images_per_s'] / f['batch_images_per_s']:.2f}; "
              f"test image AUROC {auroc['onnx']:.4f} float, {auroc['onnx-int8']:.4f} INT8", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
