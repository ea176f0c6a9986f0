"""How many good images a model needs: accuracy against the number of training images (`surfad curve`).

    surfad curve --data D --model padim --sizes 5,10,20,50,all --seeds 3 --out DIR

The dataset is split once, as `surfad train` splits it. Each point trains (or fits) the model on a
random subset of the good training images, with the validation and test splits of the whole set,
so every point is measured on the same images. The subsets of one seed are nested (the first k of
one seeded order); each seed draws another order. The whole set is a single subset, measured once.
Training's own seed (train.seed, which also draws validation's synthetic defects) is the config's
for every point. Curve runs keep no training examples (train.keep_train_examples = 0).

DIR/curve.csv       one row per point: size, seed, validation and test image AUROC and AUPRO, fit
                    seconds (written again after every point, atomically)
DIR/curve.png       mean and spread (min to max over seeds) against the number of images
DIR/points/         each point's figures (a finished point is skipped when the command runs again)
DIR/runs/           each point's run folder while it is measured, kept with keep_runs; its log
DIR/curve.yaml      the config the curve measures (a rerun with another one is refused)
"""

from __future__ import annotations

import contextlib
import io
import math
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from matplotlib.figure import Figure

from surfad import bundle
from surfad.config import RunConfig
from surfad.data.splits import Splits, make_splits
from surfad.errors import SurfadError
from surfad.evaluate import evaluate_run
from surfad.training import train
from surfad.utils import atomic_write_bytes, atomic_write_csv, atomic_write_json, atomic_write_text, read_json

ALL = "all"
SUBSET_SALT = 25  # keeps the subsets' order independent of other seeded draws with the same seed
COLUMNS = ("size", "seed", "train_images", "val_image_auroc", "val_aupro", "test_image_auroc", "test_aupro",
           "fit_seconds")


@dataclass
class CurvePoint:
    """One fit on `size` good images drawn with `seed`, and what it measured (NaN: not available)."""

    size: int
    seed: int
    train_images: int
    val_image_auroc: float
    val_aupro: float
    test_image_auroc: float
    test_aupro: float
    fit_seconds: float


def parse_sizes(text: str, available: int) -> list[int]:
    """'5,10,all' -> [5, 10, available], sorted without repeats; an error names a size that is not a
    whole number >= 2 or is more than the training images available."""
    sizes = set()
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part == ALL:
            sizes.add(available)
            continue
        try:
            size = int(part)
        except ValueError:
            raise SurfadError(f"--sizes {text}: {part!r} is not a number of images nor 'all'") from None
        if size < 2:
            raise SurfadError(f"--sizes {text}: {size} is too few images to fit a model on (at least 2)")
        if size > available:
            raise SurfadError(f"--sizes {text}: {size} is more than the {available} good training images")
        sizes.add(size)
    if not sizes:
        raise SurfadError("--sizes: give at least one number of images, e.g. 5,10,20,all")
    return sorted(sizes)


def subset(splits: Splits, size: int, seed: int) -> Splits:
    """The splits with `size` of the training images (the first `size` of a seeded order, in their list
    order), validation and test unchanged."""
    order = np.random.default_rng([seed, SUBSET_SALT]).permutation(len(splits.train))
    chosen = sorted(order[:size].tolist())
    return replace(splits, train=[splits.train[i] for i in chosen])


def points_to_fit(sizes: list[int], seeds: int, available: int) -> list[tuple[int, int]]:
    """(size, seed) of every point: each size with each seed, the whole set once."""
    return [(size, seed) for size in sizes for seed in range(1 if size == available else seeds)]


def run_curve(config: RunConfig, sizes: str, seeds: int, out: str | Path, progress: bool = True,
              keep_runs: bool = False) -> list[CurvePoint]:
    """Measure the curve into `out` (see the module doc); returns every point, finished ones included."""
    if seeds < 1:
        raise SurfadError(f"--seeds {seeds}: must be at least 1")
    out = Path(out)
    config = replace(config, train=replace(config.train, keep_train_examples=0))
    check_same_curve(out, config)
    splits = make_splits(config.data, check_test=False)
    wanted = parse_sizes(sizes, len(splits.train))
    todo = points_to_fit(wanted, seeds, len(splits.train))
    tested = {s.label for s in splits.test} == {0, 1}
    print(f"curve of {config.model}: sizes {', '.join(map(str, wanted))} of {len(splits.train)} good training "
          f"images, {seeds} seed(s), {len(todo)} fits; validation {len(splits.val)} images, test "
          + (f"{len(splits.test)} images" if tested else "not measured (it needs good and defective images)"))
    points: list[CurvePoint] = []
    spent, work_done = 0.0, 0
    work = {point: point[0] + len(splits.val) + (len(splits.test) if tested else 0) for point in todo}
    for number, (size, seed) in enumerate(todo, 1):
        done = out / "points" / f"n{size}_s{seed}.json"
        if done.is_file():
            points.append(read_json(done, "curve point", lambda raw: CurvePoint(**raw)))
            continue
        left = sum(work[p] for p in todo[number - 1 :] if not (out / "points" / f"n{p[0]}_s{p[1]}.json").is_file())
        eta = f", ETA {spent / work_done * left / 60:.1f} min" if work_done else ""
        print(f"curve: point {number}/{len(todo)}: {size} good images (seed {seed}){eta}", flush=True)
        started = time.monotonic()
        point = measure(config, subset(splits, size, seed), out / "runs" / f"n{size}_s{seed}", size, seed, tested,
                        progress, keep_runs)
        spent += time.monotonic() - started
        work_done += work[size, seed]
        atomic_write_json(done, asdict(point))
        points.append(point)
        write_outputs(out, points)
    write_outputs(out, points)
    print(f"curve: {out / 'curve.csv'}, {out / 'curve.png'}")
    return points


def check_same_curve(out: Path, config: RunConfig) -> None:
    """Record the curve's config in out/curve.yaml, or refuse a folder holding a curve of another config
    (its finished points would be mixed with this one's)."""
    record = out / "curve.yaml"
    settings = config.to_dict()
    if record.is_file():
        if yaml.safe_load(record.read_text()) != settings:
            raise SurfadError(f"{out}: holds a curve of another configuration ({record}); choose another --out")
        return
    atomic_write_text(record, yaml.safe_dump(settings, sort_keys=False))


def measure(config: RunConfig, splits: Splits, run: Path, size: int, seed: int, tested: bool, progress: bool,
            keep_run: bool) -> CurvePoint:
    """Train one point into `run` (its output in run.log beside it) and measure it on validation and test."""
    if run.exists():  # a point interrupted before its figures were kept: measured again
        shutil.rmtree(run)
    run.parent.mkdir(parents=True, exist_ok=True)
    with (run.parent / f"{run.name}.log").open("w") as log, contextlib.redirect_stdout(log):
        train(config, run, progress=progress, splits=splits)
        test = evaluate_run(run, split="test", out=run / "eval_test", progress=progress) if tested else {}
    history = bundle.read_history(run)
    shipped = bundle.shipped_row(history) or {}
    fit = bundle.read_meta(run).get("fit", {})  # a fitted model's; a trained one's time is in its history
    seconds = fit.get("fit_seconds", number(history[-1].get("seconds")) if history else math.nan)
    point = CurvePoint(size, seed, len(splits.train), number(shipped.get("val_auroc")), number(shipped.get("val_aupro")),
                       number(test.get("image_auroc")), number(test.get("aupro")), float(seconds))
    if not keep_run:
        shutil.rmtree(run)
    return point


def number(value: Any) -> float:
    """A figure as a float; NaN when missing."""
    return math.nan if value in (None, "") else float(value)


def write_outputs(out: Path, points: list[CurvePoint]) -> None:
    """curve.csv and curve.png from the points measured so far."""
    rows = sorted((asdict(p) for p in points), key=lambda row: (row["size"], row["seed"]))
    atomic_write_csv(out / "curve.csv", rows, list(COLUMNS))
    atomic_write_bytes(out / "curve.png", curve_plot(points))


def curve_plot(points: list[CurvePoint]) -> bytes:
    """PNG: image AUROC (left) and AUPRO (right) against the number of good training images, validation
    and test, each the mean over seeds with its spread (min to max) shaded."""
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    for ax, figure, title in zip(fig.subplots(1, 2), ("image_auroc", "aupro"), ("image AUROC", "AUPRO")):
        for split, colour in (("val", "#2b7bba"), ("test", "#d7301f")):
            key = f"{split}_{figure}"
            sizes = sorted({p.train_images for p in points if not math.isnan(getattr(p, key))})
            if not sizes:
                continue
            values = [[getattr(p, key) for p in points if p.train_images == n and not math.isnan(getattr(p, key))]
                      for n in sizes]
            ax.plot(sizes, [np.mean(v) for v in values], marker="o", color=colour, label=f"{split} (mean)")
            ax.fill_between(sizes, [min(v) for v in values], [max(v) for v in values], color=colour, alpha=0.2,
                            label=f"{split} (min to max over seeds)")
        ax.set(xscale="log", xlabel="good training images", ylabel=title, title=f"{title} against training images")
        shown = sorted({p.train_images for p in points})
        ax.set_xticks(shown, [str(n) for n in shown])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="lower right")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()
