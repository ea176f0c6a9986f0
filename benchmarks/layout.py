"""Channels-last against the default (NCHW) memory layout: training step and inference, same run.

    python benchmarks/layout.py --threads 1 --image-size 128 --batch 8 --repeats 3

For each model (default parameters, 1 input channel), in each layout: the median seconds of a
training step (forward, loss, backward, Adam step) and of an inference forward pass, after two
warm-up calls; the layouts alternate `--repeats` times so machine load hits both alike. It also
checks that both layouts give the same anomaly maps from the same weights. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from surfad.models import available_models, build_model, model_spec

LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def median_seconds(work: Callable[[], object], calls: int = 6, warmup: int = 2) -> float:
    times = []
    for i in range(calls):
        started = time.perf_counter()
        work()
        if i >= warmup:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(name: str, layout: torch.memory_format, size: int, batch: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = build_model(name, {}, 1, size).to(memory_format=layout)
    images = torch.rand(batch, 1, size, size).contiguous(memory_format=layout)
    zeros = torch.zeros(batch, 1, size, size).contiguous(memory_format=layout)
    sample = {"image": images, "mask": zeros, "label": torch.zeros(batch, dtype=torch.long), "index": torch.arange(batch)}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        model.train()
        loss = model_spec(name).recipe.loss(model, dict(sample), 0.5)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def infer() -> None:
        model.eval()
        with torch.inference_mode():
            model(images)

    return {"train_step_s": median_seconds(step), "inference_s": median_seconds(infer)}


def same_maps(name: str, size: int) -> float:
    """Largest difference between the two layouts' maps from the same weights and input."""
    torch.manual_seed(0)
    model = build_model(name, {}, 1, size).eval()
    x = torch.rand(2, 1, size, size)
    with torch.inference_mode():
        first = model.to(memory_format=torch.contiguous_format)(x.contiguous())
        second = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    return float((first - second).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result: dict[str, object] = {"threads": args.threads, "image_size": args.image_size, "batch": args.batch,
                                 "torch": torch.__version__}
    for name in [m for m in available_models() if not model_spec(m).fitted]:
        runs: dict[str, list[dict[str, float]]] = {layout: [] for layout in LAYOUTS}
        for _ in range(args.repeats):
            for layout, memory_format in LAYOUTS.items():
                runs[layout].append(measure(name, memory_format, args.image_size, args.batch))
        medians = {layout: {k: statistics.median(r[k] for r in rows) for k in rows[0]} for layout, rows in runs.items()}
        result[name] = {
            **medians,
            "train_speedup": medians["nchw"]["train_step_s"] / medians["channels_last"]["train_step_s"],
            "inference_speedup": medians["nchw"]["inference_s"] / medians["channels_last"]["inference_s"],
            "max_map_difference": same_maps(name, args.image_size),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
