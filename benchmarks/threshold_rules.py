"""Thresholds from good images only: the empirical rule (fpr:X, the default fpr:0.01) against fits of
the good validation scores' upper tail, measured by what each gives on test (false alarms, recall).

    python benchmarks/threshold_rules.py [--work /tmp/vr] [--target 0.01]

For every run of benchmarks/validation_rank.py (fitted padim and patchcore runs on magnetic tile and
wood, each with its held-out good validation images), the good validation scores give a threshold
by each rule, and test (scored once, per_image.csv of the run's evaluation) says what it does:

- empirical: surfad's fpr:X (at most floor(X n) good validation scores above it; with few images
  that is their maximum);
- gauss: mean + z(1 - X) standard deviations of the good scores;
- gpd: a generalised Pareto distribution fitted to the excesses over the 70th percentile of the good
  scores (peaks over threshold), its (1 - X) quantile.

Writes benchmarks/results/threshold_rules.json and prints the mean test false-alarm rate and recall
of each rule per dataset.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
from scipy import stats

from surfad import bundle
from surfad.calibrate import choose_threshold
from surfad.data.splits import Splits
from surfad.detector import RunDetector

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import RESULTS, provenance  # noqa: E402


def rules(good: np.ndarray, target: float) -> dict[str, float]:
    """The threshold of each rule from good scores alone."""
    tail = np.quantile(good, 0.7)
    excess = good[good > tail] - tail
    shape, _, scale = stats.genpareto.fit(excess, floc=0.0)
    share = excess.size / good.size  # the share of scores above the tail's start
    gpd = tail + stats.genpareto.ppf(1.0 - target / share, shape, loc=0.0, scale=scale) if target < share else tail
    return {"empirical": choose_threshold(good, np.zeros(good.size, int), f"fpr:{target}"),
            "gauss": float(good.mean() + stats.norm.ppf(1.0 - target) * good.std(ddof=1)),
            "gpd": float(gpd)}


def measure(run: Path, target: float) -> dict[str, object]:
    detector = RunDetector.open(run)
    good = [s for s in Splits.load(run / bundle.SPLITS).val if s.label == 0]
    scored, _ = detector.score_samples(good)
    with (run / "eval_test" / "per_image.csv").open() as f:
        rows = list(csv.DictReader(f))
    scores = np.array([float(r["score"]) for r in rows])
    labels = np.array([int(r["label"]) for r in rows])
    out = {}
    for name, threshold in rules(scored.scores.astype(np.float64), target).items():
        out[name] = {"threshold": threshold, "test_fpr": float((scores[labels == 0] > threshold).mean()),
                     "test_recall": float((scores[labels == 1] > threshold).mean())}
    return {"run": run.name, "good_validation_images": len(good), "rules": out}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=Path("/tmp/vr"))
    parser.add_argument("--target", type=float, default=0.01, help="the false-alarm rate asked for")
    args = parser.parse_args()
    records = [measure(run, args.target) for run in sorted(args.work.iterdir())
               if (run / "eval_test" / "per_image.csv").is_file()]
    (RESULTS / "threshold_rules.json").write_text(json.dumps({**provenance(), "target": args.target,
                                                              "runs": records}, indent=1) + "\n")
    for dataset in sorted({r["run"].split("_")[0] for r in records}):
        mine = [r for r in records if r["run"].startswith(dataset + "_")]
        print(f"{dataset}: {len(mine)} runs, {mine[0]['good_validation_images']} good validation images each")
        for rule in mine[0]["rules"]:
            fpr = np.mean([r["rules"][rule]["test_fpr"] for r in mine])
            recall = np.mean([r["rules"][rule]["test_recall"] for r in mine])
            print(f"  {rule:<10} test false alarms {100 * fpr:5.1f}%  recall {100 * recall:5.1f}%")


if __name__ == "__main__":
    main()
