"""patchcore's coreset selections timed on one run's own training patches, one after another.

    python benchmarks/coreset_speed.py RUN [--ratios 0.01 0.001] [--dim 32] [--threads 2]

RUN is a fitted patchcore run: its training images' patch features are extracted with its weights
(standardised as the fit did), then, for each ratio, the greedy coreset is chosen three ways: in
the full features without bounds, "exact" (the full features, bounded in --dim principal
components) and "projected" (a random projection to --dim dimensions). Records the seconds, the
covering radius in the full features, and whether exact chose the very patches of the unbounded
selection. Writes results/coreset_speed_<run name>.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from run import RESULTS, provenance  # benchmarks/run.py

from surfad import bundle
from surfad.data.dataset import ImageDataset
from surfad.data.splits import Splits
from surfad.models.base import IMAGE_LAYOUT
from surfad.models.patchcore.coreset import greedy_coreset, nearest_neighbours, random_projection


def training_features(run: Path) -> torch.Tensor:
    """(patches, D) standardised patch features of the run's training images."""
    config, graph = bundle.load_graph(run)
    dataset = ImageDataset.for_run(Splits.load(run / bundle.SPLITS).train, config.data)
    parts = []
    with torch.inference_mode():
        for batch in tqdm(DataLoader(dataset, batch_size=16), desc="features", unit="batch"):
            parts.append(graph.model.extract(batch["image"].to(memory_format=IMAGE_LAYOUT)).float())
    feats = torch.cat(parts)
    return feats.reshape(-1, feats.shape[-1]).clone()


def covering_radius(points: torch.Tensor, chosen: torch.Tensor) -> float:
    """The largest distance from a point to its nearest chosen point, in the full features."""
    return float(nearest_neighbours(points, points[chosen], 1)[0].max())


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.01, 0.001])
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    points = training_features(args.run)
    n, dim = points.shape
    rows = []
    for ratio in args.ratios:
        size = math.ceil(ratio * n)
        timed = {}
        for name, work in (
            ("full", lambda: greedy_coreset(points, size)),
            ("exact", lambda: greedy_coreset(points, size, bound_dim=args.dim)),
            ("projected", lambda: greedy_coreset((random_projection(dim, args.dim).T @ points.T).T, size)),
        ):
            started = time.perf_counter()
            chosen, _ = work()
            timed[name] = (time.perf_counter() - started, chosen)
        row = {"ratio": ratio, "bank": size,
               **{f"{k}_seconds": round(v[0], 2) for k, v in timed.items()},
               **{f"{k}_radius": round(covering_radius(points, v[1]), 4) for k, v in timed.items()},
               "exact_equals_full": bool(torch.equal(timed["exact"][1], timed["full"][1])),
               "exact_shares_with_full": round(len(set(timed["exact"][1].tolist()) & set(timed["full"][1].tolist()))
                                               / size, 4)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = RESULTS / f"coreset_speed_{args.run.name}.json"
    out.write_text(json.dumps({**provenance(), "run": str(args.run), "patches": n, "dim": dim,
                               "bound_or_projection_dim": args.dim, "threads": args.threads, "rows": rows}, indent=1)
                   + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
