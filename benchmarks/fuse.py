"""Diagnostic: score images by the mean of several trained runs' standardised outputs.

    python benchmarks/fuse.py benchmarks/runs/SQUASHED benchmarks/runs/TILED [--split test]

Each run scores the images with its own preprocessing (squashed or tiled), exactly as `surfad
evaluate` does. Each run's image scores are standardised by their mean and standard deviation on
the validation good images, and so are its maps (over all their pixels); the fused score and map
are the means of the standardised ones. The members must share their validation images (the same
data settings give the same splits), so no member was trained on the images that standardise it.
Writes benchmarks/results/fused/<run>+<run>.json with each member's and the fused figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from run import provenance
from sklearn.metrics import average_precision_score, roc_auc_score

from surfad.data.transforms import resize_map
from surfad.evaluate import run_splits, score_samples, select_split
from surfad.inference import Detector
from surfad.metrics import per_type_auroc, pixel_metrics

RESULTS = Path(os.environ.get("SURFAD_BENCH_OUT", Path(__file__).resolve().parent)) / "results" / "fused"


def member_outputs(run: Path, split: str) -> tuple[dict, list]:
    """A run's scores and maps (resized to the first member's size later) on its val good images and on `split`."""
    detector = Detector.load(run)
    splits = run_splits(detector.config, run, None)
    val = [s for s in select_split(splits, "val") if s.label == 0]
    test = select_split(splits, split, detector.config.data.split_seed)
    scored_val, _ = score_samples(detector.score_batch, detector.config, val)
    scored_test, _ = score_samples(detector.score_batch, detector.config, test)
    return {"val": scored_val, "test": scored_test, "val_paths": [str(s.path) for s in val]}, test


def figures(scores: np.ndarray, maps: np.ndarray, labels: np.ndarray, masks: np.ndarray, types: list[str]) -> dict:
    return {
        "image_auroc": roc_auc_score(labels, scores),
        "image_ap": average_precision_score(labels, scores),
        **pixel_metrics(maps, masks),
        "per_type_image_auroc": per_type_auroc(scores, labels, types),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    if len(args.runs) < 2:
        sys.exit("give at least two runs to fuse")
    torch.set_num_threads(1)
    members, samples = [], None
    for run in args.runs:
        outputs, test = member_outputs(run, args.split)
        if members and outputs["val_paths"] != members[0]["val_paths"]:
            sys.exit(f"{run}: its validation images differ from {args.runs[0]}'s; fuse runs trained on the same splits")
        if samples is not None and [str(s.path) for s in test] != [str(s.path) for s in samples]:
            sys.exit(f"{run}: its {args.split} split differs from {args.runs[0]}'s")
        members.append(outputs)
        samples = test
    assert samples is not None
    size = members[0]["test"].maps.shape[1:]
    labels, masks = members[0]["test"].labels, members[0]["test"].masks
    types = [s.defect_type for s in samples]
    result: dict = {"runs": [str(r) for r in args.runs], "split": args.split, **provenance(),
                    "validation_good_images": len(members[0]["val_paths"]), "members": {}}
    fused_scores, fused_maps = [], []
    for run, outputs in zip(args.runs, members):
        val, test = outputs["val"], outputs["test"]
        maps = test.maps if test.maps.shape[1:] == size else np.stack([resize_map(m, *size) for m in test.maps])
        result["members"][run.name] = figures(test.scores, maps, labels, masks, types)
        fused_scores.append((test.scores - val.scores.mean()) / val.scores.std())
        fused_maps.append((maps - val.maps.mean()) / val.maps.std())
    result["fused"] = figures(np.mean(fused_scores, axis=0), np.mean(fused_maps, axis=0), labels, masks, types)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{'+'.join(r.name for r in args.runs)}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({name: round(r["image_auroc"], 4) for name, r in [*result["members"].items(), ("fused", result["fused"])]}))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
