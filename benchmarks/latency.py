"""Inference latency and throughput of a run folder: torch eager vs onnxruntime, on CPU.

    python benchmarks/latency.py runs/wood --threads 1 --runs 100 --batch 16

For each runtime it reports, on one input image (a file with --image, else a seeded random one):
  single   Detector.predict on the uint8 image: preprocessing, model, map resize, regions (p50/p99 ms)
  model    the model alone on one preprocessed image (p50/p99 ms)
  batch    model throughput on batches of --batch preprocessed images (images/s)
Measurements stop after --runs repetitions or --max-seconds, whichever comes first. The ONNX runtime
needs RUN/model.onnx (`surfad export RUN --format onnx`); without it only torch is measured.
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


def timed(fn: Callable[[], object], runs: int, warmup: int, max_seconds: float) -> np.ndarray:
    """Seconds per call of fn over up to `runs` calls (after `warmup` untimed ones)."""
    for _ in range(warmup):
        fn()
    times = []
    deadline = time.perf_counter() + max_seconds
    while len(times) < runs and time.perf_counter() < deadline:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return np.array(times)


def measure(detector: RunDetector, image: np.ndarray, args: argparse.Namespace) -> dict[str, float]:
    one = detector.preprocess(image)[None]
    batch = np.repeat(one, args.batch, axis=0)
    single = timed(lambda: detector.predict(image), args.runs, args.warmup, args.max_seconds)
    model = timed(lambda: detector.score_batch(one), args.runs, args.warmup, args.max_seconds)
    batched = timed(lambda: detector.score_batch(batch), max(1, args.runs // args.batch), 1, args.max_seconds)
    def ms(times: np.ndarray, q: float) -> float:
        return float(np.percentile(times, q) * 1000)

    return {
        "single_p50_ms": ms(single, 50), "single_p99_ms": ms(single, 99), "single_runs": len(single),
        "model_p50_ms": ms(model, 50), "model_p99_ms": ms(model, 99), "model_runs": len(model),
        "batch_images_per_s": float(args.batch / np.median(batched)), "batch_runs": len(batched),
    }


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
    runtimes = ["torch"] + (["onnx"] if (args.run / bundle.ONNX).is_file() else [])
    if len(runtimes) == 1:
        print(f"no {args.run / bundle.ONNX}: measuring torch only (run `surfad export {args.run}`)", file=sys.stderr)
    config = RunConfig.load(args.run / bundle.CONFIG)
    print(f"{args.run}: {config.model}, {config.data.image_size} px, input {image.shape[1]}x{image.shape[0]}, "
          f"threads {torch.get_num_threads()}, batch {args.batch}")
    print(f"{'runtime':<8} {'single p50':>11} {'single p99':>11} {'model p50':>10} {'model p99':>10} {'batch img/s':>12}")
    results = {}
    for runtime in runtimes:
        r = measure(RunDetector.open(args.run, runtime, threads=args.threads), image, args)
        results[runtime] = r
        print(f"{runtime:<8} {r['single_p50_ms']:>9.2f}ms {r['single_p99_ms']:>9.2f}ms {r['model_p50_ms']:>8.2f}ms "
              f"{r['model_p99_ms']:>8.2f}ms {r['batch_images_per_s']:>12.1f}")
    if args.json:
        args.json.write_text(json.dumps({"run": str(args.run), "threads": torch.get_num_threads(), "batch": args.batch,
                                         "input": list(image.shape), "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
