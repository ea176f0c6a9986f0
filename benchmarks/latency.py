"""Inference latency and throughput of a run folder: torch eager vs onnxruntime (float, INT8), on CPU.

    python benchmarks/latency.py runs/wood --threads 1 --runs 100 --batch 16

For each runtime it reports, on one input image (a file with --image, else a seeded random one):
  single   Detector.predict on the uint8 image: preprocessing, model, map resize, regions (p50/p99 ms)
  model    the model alone on one preprocessed image (p50/p99 ms)
  batch    model throughput on batches of --batch preprocessed images (images/s)
each also as the median CPU time of the process per call (the cost on one core, which other work on
the machine changes far less than the wall-clock figures).
Measurements stop after --runs repetitions or --max-seconds, whichever comes first. The ONNX runtimes
need RUN/model.onnx (`surfad export RUN --format onnx`) and RUN/model.int8.onnx (`--quantize int8`);
those missing are not measured. The runtimes' calls are interleaved (one call of each in turn), so
their figures compare as ratios even when other work shares the machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from surfad import bundle
from surfad.config import RunConfig
from surfad.data.io import read_image
from surfad.detector import RunDetector
from surfad.export.runtime import RUNTIME_FILES


def measure(detectors: dict[str, RunDetector], image: np.ndarray, args: argparse.Namespace) -> dict[str, dict]:
    """The figures of every runtime, measured with their calls interleaved: wall-clock percentiles, and
    the median CPU time of this process per call, which other work on the machine barely changes (at
    1 thread it is what one core spends, so 1000 / cpu ms is the rate per core)."""
    one = next(iter(detectors.values())).preprocess(image)[None]
    batch = np.repeat(one, args.batch, axis=0)

    def ms(times: np.ndarray, q: float) -> float:
        return float(np.percentile(times, q) * 1000)

    single = interleaved({k: (lambda d=d: d.predict(image)) for k, d in detectors.items()}, args.runs, args.warmup,
                         args.max_seconds)
    model = interleaved({k: (lambda d=d: d.score_batch(one)) for k, d in detectors.items()}, args.runs, args.warmup,
                        args.max_seconds)
    batched = interleaved({k: (lambda d=d: d.score_batch(batch)) for k, d in detectors.items()},
                          max(1, args.runs // args.batch), 1, args.max_seconds)
    return {k: {"single_p50_ms": ms(single[k][0], 50), "single_p99_ms": ms(single[k][0], 99),
                "single_cpu_ms": ms(single[k][1], 50), "single_runs": len(single[k][0]),
                "model_p50_ms": ms(model[k][0], 50), "model_p99_ms": ms(model[k][0], 99),
                "model_cpu_ms": ms(model[k][1], 50), "model_runs": len(model[k][0]),
                "batch_images_per_s": float(args.batch / np.median(batched[k][0])),
                "batch_cpu_images_per_s": float(args.batch / np.median(batched[k][1])), "batch_runs": len(batched[k][0])}
            for k in detectors}


def interleaved(calls: dict[str, Callable[[], object]], runs: int, warmup: int,
                max_seconds: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(wall-clock seconds, process CPU seconds) per call of each function over up to `runs` rounds,
    one call of each per round (after `warmup` untimed rounds)."""
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    wall: dict[str, list[float]] = {k: [] for k in calls}
    cpu: dict[str, list[float]] = {k: [] for k in calls}
    deadline = time.perf_counter() + max_seconds
    while len(next(iter(wall.values()))) < runs and time.perf_counter() < deadline:
        for k, fn in calls.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[k].append(time.perf_counter() - start)
            cpu[k].append(time.process_time() - start_cpu)
    return {k: (np.array(wall[k]), np.array(cpu[k])) for k in calls}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--image", type=Path, help="input image (default: seeded random RGB of --input-size)")
    parser.add_argument("--input-size", type=int, default=256, help="side of the random input image")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for each runtime (0 = all cores)")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-seconds", type=float, default=30.0, help="time limit per measurement")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads if args.threads > 0 else torch.get_num_threads())
    if args.image:
        image = read_image(args.image)
    else:
        image = np.random.default_rng(0).integers(0, 256, (args.input_size, args.input_size, 3), dtype=np.uint8)
    runtimes = ["torch"] + [r for r, name in RUNTIME_FILES.items() if (args.run / name).is_file()]
    if len(runtimes) == 1:
        print(f"no {args.run / bundle.ONNX}: measuring torch only (run `surfad export {args.run}`)", file=sys.stderr)
    config = RunConfig.load(args.run / bundle.CONFIG)
    print(f"{args.run}: {config.model}, {config.data.image_size} px, input {image.shape[1]}x{image.shape[0]}, "
          f"threads {torch.get_num_threads()}, batch {args.batch}")
    print(f"{'runtime':<10} {'single p50':>11} {'single p99':>11} {'cpu':>8} {'model p50':>10} {'model p99':>10} "
          f"{'cpu':>8} {'batch img/s':>12} {'per cpu s':>10}")
    results = measure({r: RunDetector.open(args.run, r, threads=args.threads) for r in runtimes}, image, args)
    for runtime, r in results.items():
        print(f"{runtime:<10} {r['single_p50_ms']:>9.2f}ms {r['single_p99_ms']:>9.2f}ms {r['single_cpu_ms']:>6.2f}ms "
              f"{r['model_p50_ms']:>8.2f}ms {r['model_p99_ms']:>8.2f}ms {r['model_cpu_ms']:>6.2f}ms "
              f"{r['batch_images_per_s']:>12.1f} {r['batch_cpu_images_per_s']:>10.1f}")
    if args.json:
        args.json.write_text(json.dumps({"run": str(args.run), "threads": torch.get_num_threads(), "batch": args.batch,
                                         "input": list(image.shape), "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
