"""Screen simplenet's head settings on features extracted once (the backbone is frozen, so a setting
changes only the small head): magnetic tile, the standard split, validation as training builds it
(held-out good images plus graded synthetic defects), test beside it, never used to choose.

    python benchmarks/simplenet_screen.py --cache /tmp/sn_cache [--settings NAME ...]

Features of the training samples (good images and their synthetic-defect copies), of validation and
of test are extracted once into --cache; each setting then trains the head for its epochs, and the
validation and test image AUROC of every epoch are printed and written to
benchmarks/results/screening/simplenet_heads.json. The numbers to report come from benchmarks/run.py,
which runs the real pipeline; this only narrows the settings to try there.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader, TensorDataset

from surfad.config import DataConfig, RunConfig, ScoreConfig, TrainConfig
from surfad.data.splits import make_splits
from surfad.models import build_model
from surfad.models.simplenet.loss import simplenet_loss, simplenet_optimizer
from surfad.models.simplenet.samples import simplenet_samples
from surfad.scoring import ImageScorer
from surfad.training import build_training, resolve_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import DATASETS, RESULTS, provenance  # noqa: E402

SETTINGS = {  # name -> (model_params, epochs)
    "base": ({}, 8),
    "noise0.1": ({"noise_std": 0.1}, 8),
    "noise0.25": ({"noise_std": 0.25}, 8),
    "noise1.0": ({"noise_std": 1.0}, 8),
    "nosynth": ({"positive_ratio": 0}, 8),
    "hidden1024": ({"hidden": 1024}, 8),
    "margin1": ({"margin": 1.0}, 8),
}


def extract(model: torch.nn.Module, dataset, batch: int = 16) -> torch.Tensor:
    """Standardised patch features of every item's image, (N, D, h, w) float16."""
    parts = []
    with torch.no_grad():
        for start in range(0, len(dataset), batch):
            images = torch.stack([dataset[i]["image"] for i in range(start, min(start + batch, len(dataset)))])
            parts.append(model.patch_features(images).half())
    return torch.cat(parts)


def cached(cache: Path, name: str, make) -> dict[str, torch.Tensor]:
    path = cache / f"{name}.pt"
    if not path.is_file():
        torch.save(make(), path)
    return torch.load(path, weights_only=True)


def image_scores(model, features: torch.Tensor, scorer: ImageScorer, size: int) -> np.ndarray:
    """The pipeline's image score from cached features: logits, upsampled, smoothed, maximum."""
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(features), 64):
            logits = model.discriminator(model.adapt(features[start : start + 64].float()))
            amap = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)
            out.append(scorer(amap)[1])
    return torch.cat(out).numpy()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.cache.mkdir(parents=True, exist_ok=True)
    spec = DATASETS["mt"]
    data = DataConfig(path=str(spec["path"]), layout="mt", train_list=str(spec["train_list"]))
    base = RunConfig(model="simplenet", data=data, train=TrainConfig(threads=args.threads, seed=0))
    splits = make_splits(data, check_test=True)
    config = resolve_config(base, splits)
    t = build_training(config, splits)  # the model with its standardising statistics, and the validation set
    model = t.model
    train_set = t.train_set

    def train_features() -> dict[str, torch.Tensor]:
        items = [train_set[i] for i in range(len(train_set))]
        return {k: torch.stack([item[k] for item in items]) for k in ("features", "target", "weight")}

    def labelled(dataset) -> dict[str, torch.Tensor]:
        return {"features": extract(model, dataset), "label": torch.tensor([int(dataset[i]["label"]) for i in range(len(dataset))])}

    started = time.monotonic()
    train = cached(args.cache, "train", train_features)
    val = cached(args.cache, "val", lambda: labelled(t.val_set))
    from surfad.data.dataset import ImageDataset
    test_samples = splits.test
    test = cached(args.cache, "test", lambda: labelled(ImageDataset.for_run(test_samples, config.data)))
    types = [s.defect_type for s in test_samples]
    print(f"features ready in {time.monotonic() - started:.0f} s: train {tuple(train['features'].shape)}, "
          f"val {len(val['label'])}, test {len(test['label'])}", flush=True)
    scorer = ImageScorer(ScoreConfig(smoothing_sigma=4.0, reduce="max"))
    records = {}
    out = RESULTS / "screening" / "simplenet_heads.json"
    if out.is_file():
        records = json.loads(out.read_text())["settings"]
    for name in args.settings:
        params, epochs = SETTINGS[name]
        torch.manual_seed(0)
        head = build_model("simplenet", params, 1, 224)
        head.centre, head.spread = model.centre, model.spread
        train_cfg = replace(config.train, lr=1e-3)
        optimizer, _ = simplenet_optimizer(head, train_cfg)
        loader = DataLoader(TensorDataset(train["features"], train["target"], train["weight"]), batch_size=16,
                            shuffle=True, generator=torch.Generator().manual_seed(0))
        rows = []
        for epoch in range(epochs):
            head.train()
            started = time.monotonic()
            for features, target, weight in loader:
                if params.get("positive_ratio") == 0:
                    keep = target.flatten(1).amax(1) == 0
                    features, target, weight = features[keep], target[keep], weight[keep]
                loss = simplenet_loss(head, {"features": features.float(), "target": target, "weight": weight}, 0.0)
                optimizer.zero_grad()
                loss["loss"].backward()
                optimizer.step()
            v = image_scores(head, val["features"], scorer, 224)
            s = image_scores(head, test["features"], scorer, 224)
            y = test["label"].numpy()
            per_type = {kind: roc_auc_score(np.r_[np.zeros((y == 0).sum()), np.ones(types.count(kind))],
                                            np.r_[s[y == 0], s[np.array(types) == kind]])
                        for kind in sorted(set(types) - {"good"})}
            row = {"epoch": epoch + 1, "val_auroc": roc_auc_score(val["label"].numpy(), v),
                   "test_auroc": roc_auc_score(y, s), "per_type": per_type, "seconds": time.monotonic() - started}
            rows.append(row)
            print(name, json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()
                                    if k != "per_type"}), flush=True)
        records[name] = {"params": params, "epochs": rows}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**provenance(), "settings": records}, indent=1) + "\n")


if __name__ == "__main__":
    main()
