"""What the nearest good examples cost at inspection, and what they say, on a run's test images.

    python benchmarks/explain_cost.py RUN [--runtime torch|onnx] [--threads 1] [--repeats 3] [--examples 5]

Every test image is inspected (Detector.predict). Each NG or REVIEW image is inspected again with
the lookup on and off (the median of --repeats runs of each, interleaved); their difference is what
explaining its regions costs: for padim and patchcore the search alone, as the inspection's own
pass gives the descriptors (the ONNX graph outputs them), for the other models also their pixel
descriptors. The "explain" stage of the inspection (the search) is recorded beside it. OK images are
inspected with the lookup on and off too, to show that they pay nothing. The first --examples NG
defective images are listed with their regions and nearest good examples (a worked example for
benchmarks/RESULTS.md). Writes results/explain_<run name>_<runtime>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from run import RESULTS, provenance  # benchmarks/run.py

from surfad import bundle
from surfad.data.io import read_image
from surfad.data.splits import Splits
from surfad.detector import Detector
from surfad.detector.examples import FOLDER
from surfad.utils import Stopwatch


def seconds(work, repeats: int) -> float:
    """Median seconds of `repeats` runs of work()."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def on_and_off(detector, work, repeats: int) -> tuple[float, float]:
    """Median seconds of work() with the detector's lookup on and off, runs interleaved."""
    explainer, describe = detector.explainer, detector.describe_fn
    on, off = [], []
    for _ in range(repeats):
        on.append(seconds(work, 1))
        detector.explainer, detector.describe_fn = None, None
        off.append(seconds(work, 1))
        detector.explainer, detector.describe_fn = explainer, describe
    return float(np.median(on)), float(np.median(off))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("run")
    parser.add_argument("--runtime", default="torch", choices=["torch", "onnx"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--examples", type=int, default=5)
    args = parser.parse_args()
    run = Path(args.run)
    torch.set_num_threads(args.threads)
    detector = Detector.load(run, runtime=args.runtime, threads=args.threads)
    if not hasattr(detector, "describe_fn"):
        sys.exit(f"{run}: a fused detector; measure its member that keeps training examples")
    if detector.explainer is None:
        sys.exit(f"{run}: keeps no training examples (train.keep_train_examples 0)")
    samples = Splits.load(run / bundle.SPLITS).test
    per_image, per_region, single, search, predict_on, ok_on, ok_off, worked = [], [], [], [], [], [], [], []
    for sample in tqdm(samples, desc="explain cost", unit="img"):
        image = read_image(sample.path)
        pred = detector.predict(image)
        if pred.verdict == "OK":
            on, off = on_and_off(detector, lambda: detector.predict(image), 1)
            ok_on.append(on)
            ok_off.append(off)
            continue
        on, off = on_and_off(detector, lambda: detector.predict(image), args.repeats)
        watch = Stopwatch()
        detector.predict(image, stopwatch=watch)
        cost = max(on - off, 0.0)
        per_image.append(cost)
        predict_on.append(on)
        search.append(watch.seconds["explain"])
        per_region += [cost / len(pred.regions)] * len(pred.regions)
        if len(pred.regions) == 1:
            single.append(cost)
        if sample.label == 1 and len(worked) < args.examples:
            worked.append({"image": str(sample.path.relative_to(Path(Splits.load(run / bundle.SPLITS).root))),
                           "type": sample.defect_type, "verdict": pred.verdict, "score": pred.score,
                           "regions": [r.to_dict() for r in pred.regions]})

    def ms(values: list[float], q: float | None = None) -> float | None:
        if not values:
            return None
        return round(1000 * float(np.mean(values) if q is None else np.percentile(values, q)), 2)

    folder = run / FOLDER
    result = {
        "run": str(run), **provenance(), "runtime": args.runtime, "threads": args.threads, "model": detector.name,
        "test_images": len(samples), "explained_images": len(per_image), "regions": len(per_region),
        "regions_per_explained_image": round(len(per_region) / max(1, len(per_image)), 2),
        "explain_ms_per_image": {"mean": ms(per_image), "p50": ms(per_image, 50), "p95": ms(per_image, 95)},
        "explain_ms_per_region": {"mean": ms(per_region), "p50": ms(per_region, 50), "p95": ms(per_region, 95)},
        "explain_ms_single_region_images": {"n": len(single), "p50": ms(single, 50), "p95": ms(single, 95)},
        "search_ms_per_image": {"mean": ms(search), "p50": ms(search, 50), "p95": ms(search, 95)},
        "explained_predict_ms": {"p50": ms(predict_on, 50), "p95": ms(predict_on, 95)},
        "describes_in_the_pass": detector.describe_fn is not None,
        "ok_predict_ms": {"n": len(ok_on), "lookup_on_p50": ms(ok_on, 50), "lookup_off_p50": ms(ok_off, 50)},
        "examples_folder_mib": round(sum(f.stat().st_size for f in folder.iterdir()) / 2**20, 2),
        "index_mib": round((folder / "index.safetensors").stat().st_size / 2**20, 2),
        "kept_images": len(json.loads((folder / "examples.json").read_text())["images"]),
        "worked_example": worked,
    }
    out = RESULTS / f"explain_{run.name}_{args.runtime}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "worked_example"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
