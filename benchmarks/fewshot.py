"""Few good images on magnetic tile: what helps when a line starts with a handful of good parts.

    python benchmarks/fewshot.py --sizes 10,50 --variants pd,pd_lw,pc,... [--threads 2]

Training images: the first N names of splits/train_good.txt that the standard split trains on (its
validation hold-out is never trained on). Validation and test are the standard protocol's for every
variant and size: the seeded 15% of the 761 listed images with one synthetic (`self`) defect pasted
on each, and the other 191 good + 392 defective images. Variants are chosen on validation AUROC;
test is reported beside it. Each variant is a model and its parameters, optionally with the fit's
images augmented (flips, rotations), padim's Gaussians pooled over neighbouring positions, or its
covariances moved towards the mean covariance of all positions: those are not surfad options, and
are applied here around the fit (see VARIANTS). --no-test screens on
validation alone (test is the expensive part); a later run without it adds test to those records.

Writes benchmarks/results/fewshot/<variant>_n<N>.json (the run folders go to benchmarks/runs/fewshot/
and are removed once measured).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from run import DATASETS, RESULTS, provenance  # benchmarks/run.py

from surfad import bundle
from surfad.config import DataConfig, RunConfig, TrainConfig
from surfad.data.splits import make_splits
from surfad.evaluate import evaluate_run
from surfad.models.padim.model import PaDiM
from surfad.training import fitting, train

Transform = Callable[[torch.Tensor], torch.Tensor]
FLIPS: list[Transform] = [lambda x: x, lambda x: x.flip(-1), lambda x: x.flip(-2), lambda x: x.flip(-1, -2)]
DIHEDRAL: list[Transform] = FLIPS + [lambda x, t=t: t(x.transpose(-1, -2)) for t in FLIPS]


def augmented(transforms: list[Transform]) -> Callable:
    """fitting.extract_all over every batch and its transformed copies: the fit sees len(transforms) x the images."""
    original = fitting.extract_all

    def extract(model, batches, n_images, progress):
        def more() -> Iterator[torch.Tensor]:
            for batch in batches:
                for transform in transforms:
                    yield transform(batch).contiguous(memory_format=torch.channels_last)

        return original(model, more(), n_images * len(transforms), progress)

    return extract


def neighbourhood_fit(original: Callable) -> Callable:
    """PaDiM.fit_features on each position's features pooled with its 8 neighbours' (edges repeated):
    9x the samples per Gaussian, for a mean and covariance blurred over a 3x3 window of the grid."""

    def fit(self: PaDiM, features: torch.Tensor, progress: bool = True) -> dict:
        n, positions, dim = features.shape
        side = int(round(positions**0.5))
        grid = F.pad(features.view(n, side, side, dim).permute(0, 3, 1, 2), (1, 1, 1, 1), mode="replicate")
        shifted = [grid[:, :, dy : dy + side, dx : dx + side] for dy in range(3) for dx in range(3)]
        pooled = torch.cat(shifted).permute(0, 2, 3, 1).reshape(9 * n, positions, dim)
        return original(self, pooled.contiguous(), progress)

    return fit


def pooled_fit(amount: float) -> Callable:
    """PaDiM.fit_features with each position's covariance moved `amount` of the way to the mean covariance of
    all positions (each position keeps its own mean): Sigma_p = (1 - a) S_p + a mean_q S_q, then regularised."""

    def fit(self: PaDiM, features: torch.Tensor, progress: bool = True) -> dict:
        n, positions, dim = features.shape
        mean = features.double().mean(0)
        covariances = torch.empty(positions, dim, dim, dtype=torch.float64)
        for start in range(0, positions, 64):
            x = features[:, start : start + 64].double() - mean[start : start + 64]
            covariances[start : start + 64] = torch.einsum("npd,npe->pde", x, x) / (n - 1)
        shared = covariances.mean(0)
        eye = self.config.regularisation * torch.eye(dim, dtype=torch.float64)
        factor, _ = torch.linalg.cholesky_ex((1 - amount) * covariances + amount * shared + eye)
        self.mean = mean.float().to(self.mean.device)
        self.precision = torch.cholesky_inverse(factor).float().contiguous().to(self.mean.device)
        return {"positions": positions, "dim": dim, "images": n, "pooled": amount}

    return fit


PATCHES = {"nb": neighbourhood_fit(PaDiM.fit_features), "pool": pooled_fit(1.0), "pool50": pooled_fit(0.5),
           "pool90": pooled_fit(0.9)}
LW, SAMPLE = {"covariance": "ledoit_wolf"}, {"covariance": "sample"}  # padim's estimates (its default is auto)
# name: (model, params, augmentation, padim fit patch)
VARIANTS: dict[str, tuple[str, dict, list[Transform] | None, str | None]] = {
    "pd": ("padim", SAMPLE, None, None),
    "pd_lw": ("padim", LW, None, None),
    "pd_nb": ("padim", SAMPLE, None, "nb"),
    "pd_d50": ("padim", {**SAMPLE, "feature_dim": 50}, None, None),
    "pd_d20": ("padim", {**SAMPLE, "feature_dim": 20}, None, None),
    "pd_flip": ("padim", SAMPLE, FLIPS, None),
    "pd_d8": ("padim", SAMPLE, DIHEDRAL, None),
    "pd_lw_flip": ("padim", LW, FLIPS, None),
    "pd_lw_d8": ("padim", LW, DIHEDRAL, None),
    "pd_nb_flip": ("padim", SAMPLE, FLIPS, "nb"),
    "pd_lw_nb": ("padim", LW, None, "nb"),
    "pd_lw_d50": ("padim", {**LW, "feature_dim": 50}, None, None),
    "pd_lw_d20": ("padim", {**LW, "feature_dim": 20}, None, None),
    "pd_pool": ("padim", SAMPLE, None, "pool"),
    "pd_pool50": ("padim", SAMPLE, None, "pool50"),
    "pd_pool90": ("padim", SAMPLE, None, "pool90"),
    "pd_pool_flip": ("padim", SAMPLE, FLIPS, "pool"),
    "pc": ("patchcore", {}, None, None),
    "pc_c10": ("patchcore", {"coreset_ratio": 0.1}, None, None),
    "pc_c25": ("patchcore", {"coreset_ratio": 0.25}, None, None),
    "pc_flip": ("patchcore", {}, FLIPS, None),
    "pc_c10_flip": ("patchcore", {"coreset_ratio": 0.1}, FLIPS, None),
    "pc_c10_d8": ("patchcore", {"coreset_ratio": 0.1}, DIHEDRAL, None),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10,50")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-test", action="store_true", help="validation only (screening); test left out")
    args = parser.parse_args()
    spec = DATASETS["mt"]
    if not spec["path"].is_dir():
        sys.exit(f"dataset not found: {spec['path']} (benchmarks need ../shared/data)")
    data = DataConfig(path=str(spec["path"]), layout="mt", train_list=str(spec["train_list"]))
    splits = make_splits(data, check_test=False)
    listed = [line.strip() for line in Path(spec["train_list"]).read_text().splitlines() if line.strip()]
    by_name = {s.path.name: s for s in splits.train}
    in_order = [by_name[name] for name in listed if name in by_name]  # the list's order, validation left out
    for size in (int(s) for s in args.sizes.split(",")):
        few = replace(splits, train=in_order[:size])
        for name in args.variants.split(","):
            record = RESULTS / "fewshot" / f"{name}_n{size}.json"
            if record.is_file() and (args.no_test or "test_image_auroc" in json.loads(record.read_text())):
                continue
            measure(name, size, few, data, args.threads, record, not args.no_test)


def measure(name: str, size: int, splits, data: DataConfig, threads: int, record: Path, tested: bool) -> None:
    model, params, transforms, patch = VARIANTS[name]
    config = RunConfig(model=model, model_params=params, data=data,
                       train=TrainConfig(threads=threads, batch_size=16, keep_train_examples=0))
    run = RESULTS.parent / "runs" / "fewshot" / f"{name}_n{size}"
    shutil.rmtree(run, ignore_errors=True)
    saved = {"extract": fitting.extract_all, "fit": PaDiM.fit_features}
    if transforms is not None:
        fitting.extract_all = augmented(transforms)
    if patch is not None:
        PaDiM.fit_features = PATCHES[patch]
    started = time.monotonic()
    try:
        train(config, run, progress=False, splits=splits)
    finally:
        fitting.extract_all, PaDiM.fit_features = saved["extract"], saved["fit"]
    seconds = time.monotonic() - started
    shipped = bundle.shipped_row(bundle.read_history(run))
    result = {
        "variant": name, "size": size, **provenance(), "model": model, "params": params,
        "augmentation": None if transforms is None else len(transforms), "fit_patch": patch,
        "fit": bundle.read_meta(run).get("fit"), "run_seconds": round(seconds, 1),
        "val_auroc": float(shipped["val_auroc"]), "val_aupro": float(shipped["val_aupro"]),
    }
    if tested:
        test = evaluate_run(run, split="test", out=run / "eval_test")
        result.update(test_image_auroc=test["image_auroc"], test_image_ap=test["image_ap"], test_aupro=test["aupro"],
                      test_pixel_auroc=test["pixel_auroc"], per_type_image_auroc=test["per_type_image_auroc"])
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(result, indent=2) + "\n")
    shown = f" test {result['test_image_auroc']:.4f} AUPRO {result['test_aupro']:.4f}" if tested else ""
    print(f"{name} n={size}: val {result['val_auroc']:.4f} AUPRO {result['val_aupro']:.4f}{shown} ({seconds:.0f} s)",
          flush=True)
    shutil.rmtree(run)


if __name__ == "__main__":
    main()
