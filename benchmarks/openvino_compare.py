"""OpenVINO against onnxruntime on a run's exported models, at 1 thread: is it worth a runtime?

    PYTHONPATH=/path/to/openvino python benchmarks/openvino_compare.py benchmarks/runs/mt_padim --runs 200

OpenVINO is not a dependency: install it (`pip install openvino`) to run this. For model.onnx and,
when present, model.int8.onnx (surfad export --quantize int8), it reports per image (batch 1, the
model alone, interleaved so the figures compare as ratios): onnxruntime, and OpenVINO at f32 and at
its default precision on this CPU (bf16 where the CPU has it). Then, at the calibrated threshold,
how many validation verdicts each changes against onnxruntime's float model, the largest score
difference, and image AUROC on the test split.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from surfad import bundle
from surfad.calibrate import Calibration
from surfad.data.splits import Splits
from surfad.export.int8 import graph_inputs
from surfad.export.runtime import onnx_score_fn
from surfad.metrics import image_metrics
from surfad.verdict import verdict

Runner = Callable[[np.ndarray], np.ndarray]  # (1, C, S, S) -> scores (1,)


def onnxruntime_runner(path: Path) -> Runner:
    score = onnx_score_fn(path, threads=1)
    return lambda batch: score(batch)[1]


def openvino_runner(path: Path, precision: str | None, size: list[int]) -> Runner:
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    model.reshape({"image": size})
    config = {"INFERENCE_NUM_THREADS": 1, "PERFORMANCE_HINT": "LATENCY"}
    if precision is not None:
        config["INFERENCE_PRECISION_HINT"] = precision
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    return lambda batch: np.array(request.infer({"image": batch})["score"])


def interleaved_ms(runners: dict[str, Runner], batch: np.ndarray, runs: int) -> dict[str, dict[str, float]]:
    times: dict[str, list[float]] = {name: [] for name in runners}
    for run in runners.values():
        for _ in range(5):
            run(batch)
    for _ in range(runs):
        for name, run in runners.items():
            started = time.perf_counter()
            run(batch)
            times[name].append(time.perf_counter() - started)
    return {name: {"p50_ms": 1000 * float(np.median(t)), "p99_ms": 1000 * float(np.percentile(t, 99))}
            for name, t in times.items()}


def scores_of(run: Runner, images: list[np.ndarray]) -> np.ndarray:
    return np.array([float(run(image[None])[0]) for image in images])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    config = bundle.load_config(args.run)
    size = [1, config.data.input_channels, config.data.image_size, config.data.image_size]
    runners = {"onnxruntime f32": onnxruntime_runner(args.run / bundle.ONNX),
               "openvino f32": openvino_runner(args.run / bundle.ONNX, "f32", size),
               "openvino default": openvino_runner(args.run / bundle.ONNX, None, size)}
    if (args.run / bundle.ONNX_INT8).is_file():
        runners["onnxruntime int8"] = onnxruntime_runner(args.run / bundle.ONNX_INT8)
        runners["openvino int8"] = openvino_runner(args.run / bundle.ONNX_INT8, "f32", size)
    splits = Splits.load(args.run / bundle.SPLITS)
    val, test = graph_inputs(splits.val, config), graph_inputs(splits.test, config)
    labels = np.array([s.label for s in splits.test])
    latency = interleaved_ms(runners, val[0][None], args.runs)
    calibration = Calibration.load(args.run / bundle.CALIBRATION)
    reference = scores_of(runners["onnxruntime f32"], val)
    expected = [verdict(s, calibration.threshold, calibration.review) for s in reference]
    results = {}
    for name, run in runners.items():
        got = scores_of(run, val)
        changed = sum(a != verdict(s, calibration.threshold, calibration.review) for a, s in zip(expected, got))
        results[name] = {**latency[name], "val_verdicts_changed": changed, "val_images": len(val),
                         "max_abs_diff_score": float(np.abs(got - reference).max()),
                         "test_image_auroc": image_metrics(scores_of(run, test), labels, calibration.threshold)["image_auroc"]}
        r = results[name]
        print(f"{name:<18} p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms  x{latency['onnxruntime f32']['p50_ms'] / r['p50_ms']:.2f}"
              f"  val verdicts changed {changed}/{len(val)}  max score diff {r['max_abs_diff_score']:.3g}"
              f"  test AUROC {r['test_image_auroc']:.4f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"run": str(args.run), "runs": args.runs, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
