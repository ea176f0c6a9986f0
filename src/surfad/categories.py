"""Several categories (e.g. MVTec AD classes), one model each: train, test, and a summary table.

It sits above training and evaluation so that neither depends on the other.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from surfad import bundle
from surfad.config import RunConfig
from surfad.evaluate import evaluate_run
from surfad.training import train
from surfad.utils import atomic_write_csv, atomic_write_text

SUMMARY_KEYS = ("image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "aupro")


def category_config(config: RunConfig, category: str) -> RunConfig:
    """The config of one category: the same settings on the category folder of config.data.path."""
    return replace(config, data=replace(config.data, path=str(Path(config.data.path) / category)))


def train_categories(config: RunConfig, categories: list[str], out: str | Path, resume: bool = False,
                     progress: bool = True) -> Path:
    """Train and test one model per category folder of config.data.path (e.g. MVTec AD classes),
    one after another, into out/<category>; write out/summary.csv and out/summary.md."""
    out = Path(out)
    rows = []
    for category in categories:
        run = out / category
        print(f"=== {category} ===")
        if not (run / bundle.CALIBRATION).is_file():  # finished categories are kept when resuming
            train(category_config(config, category), run, resume=resume and (run / bundle.LAST_STATE).is_file(), progress=progress)
        metrics = evaluate_run(run, split="test", out=run / "eval_test", progress=progress)
        rows.append({"category": category, **{k: metrics.get(k, float("nan")) for k in SUMMARY_KEYS}})
    mean = {"category": "mean", **{k: float(np.nanmean([r[k] for r in rows])) for k in SUMMARY_KEYS}}
    atomic_write_csv(out / "summary.csv", rows + [mean])
    lines = ["| category | " + " | ".join(SUMMARY_KEYS) + " |", "|---" * (len(SUMMARY_KEYS) + 1) + "|"]
    lines += [f"| {r['category']} | " + " | ".join(f"{r[k]:.4f}" for k in SUMMARY_KEYS) + " |" for r in rows + [mean]]
    atomic_write_text(out / "summary.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return out / "summary.md"

