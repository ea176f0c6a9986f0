"""The recondiff `paper` preset (the authors' configuration) on this CPU: it builds, takes one
training step at 256x256, and here is what it costs (parameters, GFLOPs, seconds per image).

    python benchmarks/paper_preset.py [--batch 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from surfad.config import ScoreConfig, TrainConfig
from surfad.data.defects import DefectSynthesizer
from surfad.models import build_model, model_spec
from surfad.scoring import ImageScorer, InferenceGraph


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model("recondiff", {"preset": "paper"}, in_channels=3, image_size=args.size)
    params = sum(p.numel() for p in model.parameters())

    graph = InferenceGraph(model, ImageScorer(ScoreConfig(reduce="topk", pool=21, topk=5))).eval()
    x = torch.rand(1, 3, args.size, args.size)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        graph(x)
    gflops = counter.get_total_flops() / 1e9
    start = time.perf_counter()
    with torch.inference_mode():
        graph(x)
    forward_s = time.perf_counter() - start

    # One real training step: synthetic defects on random images, the full loss, Adam.
    rng = np.random.default_rng(0)
    synthesizer = DefectSynthesizer("procedural", image_size=args.size, seed=0)
    clean = np.random.default_rng(1).random((args.batch, 3, args.size, args.size), dtype=np.float32)
    pairs = [synthesizer(image, rng) for image in clean]
    batch = {
        "image": torch.from_numpy(np.stack([p[0] for p in pairs]).astype(np.float32)),
        "target": torch.from_numpy(clean),
        "mask": torch.from_numpy(np.stack([p[1] for p in pairs])[:, None].astype(np.float32)),
    }
    model.train()
    recipe = model_spec("recondiff").recipe
    optimizer, _ = recipe.optimizer(model, TrainConfig())
    start = time.perf_counter()
    losses = recipe.loss(model, batch, 0.0)
    optimizer.zero_grad()
    losses["loss"].backward()
    optimizer.step()
    step_s = time.perf_counter() - start
    print(json.dumps({
        "preset": "paper", "image_size": args.size, "threads": args.threads, "parameters_M": round(params / 1e6, 2),
        "gflops_per_image_forward": round(gflops, 1), "forward_s_per_image": round(forward_s, 2),
        "train_step_batch": args.batch, "train_step_s": round(step_s, 2),
        "train_s_per_image": round(step_s / args.batch, 2),
        "losses": {k: round(float(v), 4) for k, v in losses.items()},
    }, indent=1))


if __name__ == "__main__":
    main()
