"""Diagnostic: magnetic-tile at one constant scale, in tiles, instead of squashed to 128 x 128.

Magnetic-tile images are 100 to 600 px wide and 220 to 400 px high. Squashing every one to the
model's 128 x 128 changes the spacing of the tile's grinding streaks by up to 6x from image to image,
so "normal texture" covers a wide range. Here every image is rescaled by the same factor instead,
so the streaks keep one spacing, and the model works on 128 x 128 tiles of it.

    python benchmarks/tiles.py build --scale 0.5 --out /tmp/mt-tiles-0.5     # training tiles
    surfad train --data /tmp/mt-tiles-0.5 --layout mt --train-list /tmp/mt-tiles-0.5/train_tiles.txt ...
    python benchmarks/tiles.py evaluate RUN --scale 0.5                      # whole test images

`build` writes `tiles_per_image` seeded random tiles of each training good image (MT layout, BMP)
and the list of them. `evaluate` tiles every test image of the standard split, averages the tile
maps where tiles overlap, applies the run's image score rule to each whole-image map and reports
image AUROC (all and per defect type); pixel AUROC and AUPRO are computed after resizing each map
and mask to 128 x 128, as in the squashed runs. Writes benchmarks/results/tiled/<run name>.json with
the run's config and shipped epoch. `fuse` scores the test images by the mean of a squashed run's
and a tiled run's scores, each standardised on the squashed run's validation good images, and writes
benchmarks/results/tiled/fuse_<squashed run>+<tiled run>.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from run import DATASETS, provenance
from sklearn.metrics import average_precision_score, roc_auc_score

from surfad import bundle
from surfad.config import DataConfig
from surfad.data.io import read_image, read_mask
from surfad.data.layouts import load_layout
from surfad.data.samples import Sample
from surfad.data.splits import Splits
from surfad.data.transforms import preprocess
from surfad.metrics import per_type_auroc, pixel_metrics
from surfad.scoring import torch_score_fn

HERE = Path(__file__).resolve().parent
MT = DATASETS["mt"]
DATA = MT["path"]
RESULTS = Path(os.environ.get("SURFAD_BENCH_OUT", HERE)) / "results" / "tiled"
TILE = 128


def rescale(image: np.ndarray, scale: float) -> np.ndarray:
    """uint8 HxWx1 image rescaled by `scale`, then reflect-padded (bottom, right) to at least TILE a side."""
    h, w = image.shape[:2]
    if scale != 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    image = image.reshape(image.shape[0], image.shape[1], -1)
    h, w = image.shape[:2]
    pad_h, pad_w = max(0, TILE - h), max(0, TILE - w)
    if pad_h or pad_w:
        image = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, cv2.BORDER_REFLECT_101).reshape(h + pad_h, w + pad_w, -1)
    return image


def positions(length: int, stride: int) -> list[int]:
    """Tile starts covering [0, length) with tiles of TILE at most `stride` apart, the last flush with the end."""
    if length <= TILE:
        return [0]
    count = math.ceil((length - TILE) / stride) + 1
    return sorted({round(v) for v in np.linspace(0, length - TILE, count)})


def build(scale: float, out: Path, tiles_per_image: int, seed: int) -> None:
    # in the list's own order, which the tile positions are drawn in
    names = [n.strip() for n in MT["train_list"].read_text().splitlines() if n.strip()]
    folder = out / "MT_Free" / "Imgs"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    listed = []
    for name in names:
        image = rescale(read_image(DATA / "MT_Free" / "Imgs" / name, channels=1), scale)
        h, w = image.shape[:2]
        for k in range(tiles_per_image):
            y, x = int(rng.integers(0, h - TILE + 1)), int(rng.integers(0, w - TILE + 1))
            tile_name = f"{Path(name).stem}_t{k}.bmp"  # lossless; the MT layout reads .png as masks
            cv2.imwrite(str(folder / tile_name), image[y : y + TILE, x : x + TILE])
            listed.append(tile_name)
    (out / "train_tiles.txt").write_text("\n".join(listed) + "\n")
    print(f"{len(listed)} tiles of {len(names)} training images at scale {scale} in {out}")


def test_samples() -> list[Sample]:
    """The standard test split, as `surfad` builds it: the good images not in the training list, and every defect."""
    return load_layout(DataConfig(path=str(DATA), layout=MT["layout"], train_list=str(MT["train_list"]))).test


def tiled_map(model: torch.nn.Module, image: np.ndarray, stride: int) -> np.ndarray:
    """Anomaly map of a rescaled, padded uint8 HxWx1 image: tile maps averaged where tiles overlap."""
    h, w = image.shape[:2]
    starts = [(y, x) for y in positions(h, stride) for x in positions(w, stride)]
    batch = np.stack([image[y : y + TILE, x : x + TILE].transpose(2, 0, 1) for y, x in starts]).astype(np.float32) / 255
    with torch.inference_mode():
        maps = model(torch.from_numpy(batch))[:, 0].numpy()
    total = np.zeros((h, w), np.float32)
    count = np.zeros((h, w), np.float32)
    for (y, x), m in zip(starts, maps):
        total[y : y + TILE, x : x + TILE] += m
        count[y : y + TILE, x : x + TILE] += 1
    return total / count


def tiled_score(graph: torch.nn.Module, original: np.ndarray, scale: float, stride: int) -> tuple[np.ndarray, float]:
    """(map at the rescaled size, image score by the graph's own score rule) of a uint8 HxWx1 image."""
    h, w = round(original.shape[0] * scale), round(original.shape[1] * scale)
    amap = tiled_map(graph.model, rescale(original, scale), stride)[:h, :w]
    with torch.inference_mode():
        score = float(graph.scorer(torch.from_numpy(amap)[None, None])[1][0])
    return amap, score


def fuse(squashed_run: Path, tiled_run: Path, scale: float, stride: int) -> None:
    """Image AUROC of the mean of two runs' scores, each standardised on the squashed run's validation good
    images (the tiled run trained on tiles of some of them, so its standardisation is only approximate)."""
    torch.set_num_threads(1)
    squashed_config, squashed = bundle.load_graph(squashed_run)
    squashed_scores = torch_score_fn(squashed, torch.device("cpu"))  # as `surfad evaluate` scores images
    _, tiled = bundle.load_graph(tiled_run)
    val = [s for s in Splits.load(squashed_run / bundle.SPLITS).get("val") if s.label == 0]
    samples = val + test_samples()
    both = np.zeros((len(samples), 2))
    for i, sample in enumerate(samples):
        original = read_image(sample.path, channels=1)
        squashed_input = preprocess(original, squashed_config.data.image_size, 1)[None]
        both[i, 0] = squashed_scores(squashed_input)[1][0]
        both[i, 1] = tiled_score(tiled, original, scale, stride)[1]
    reference, test = both[: len(val)], both[len(val) :]
    standardised = (test - reference.mean(axis=0)) / reference.std(axis=0)
    labels = [s.label for s in samples[len(val) :]]
    types = [s.defect_type for s in samples[len(val) :]]
    result = {"squashed_run": str(squashed_run), "tiled_run": str(tiled_run), **provenance(), "scale": scale,
              "stride": stride, "validation_good_images": len(val)}
    for name, scores in (("squashed", test[:, 0]), ("tiled", test[:, 1]), ("mean", standardised.mean(axis=1))):
        result[name] = {"image_auroc": roc_auc_score(labels, scores),
                        "per_type_image_auroc": per_type_auroc(scores, labels, types)}
    write_result(f"fuse_{squashed_run.name}+{tiled_run.name}", result)


def write_result(name: str, result: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=1))


def evaluate(run: Path, scale: float, stride: int) -> None:
    torch.set_num_threads(1)
    config, graph = bundle.load_graph(run)
    samples = test_samples()
    scores, labels, types, small_maps, small_masks = [], [], [], [], []
    started = time.monotonic()
    for i, sample in enumerate(samples):
        original = read_image(sample.path, channels=1)
        amap, score = tiled_score(graph, original, scale, stride)
        scores.append(score)
        shape = original.shape[:2]
        mask = read_mask(sample.mask_path, shape) if sample.mask_path else np.zeros(shape, bool)
        small_maps.append(cv2.resize(amap, (TILE, TILE), interpolation=cv2.INTER_AREA))
        small_masks.append(cv2.resize(mask.astype(np.uint8), (TILE, TILE), interpolation=cv2.INTER_NEAREST) > 0)
        labels.append(sample.label)
        types.append(sample.defect_type)
        if (i + 1) % 100 == 0:
            print(f"{i + 1}/{len(samples)} images, {(i + 1) / (time.monotonic() - started):.1f} img/s", file=sys.stderr)
    seconds = time.monotonic() - started
    pixel = pixel_metrics(small_maps, small_masks)
    with (run / bundle.HISTORY).open() as f:
        history = list(csv.DictReader(f))
    shipped = [row for row in history if row.get("best") == "1"][-1]
    result = {
        "name": run.name,
        "config": config.to_dict(),
        "shipped_epoch": int(shipped["epoch"]),
        "val_auroc_at_shipped_epoch": float(shipped["val_auroc"]),
        "train_minutes": float(history[-1]["seconds"]) / 60,
        **provenance(),
        "scale": scale,
        "stride": stride,
        "image_auroc": roc_auc_score(labels, scores),
        "image_ap": average_precision_score(labels, scores),
        "pixel_auroc": pixel["pixel_auroc"],
        "pixel_ap": pixel["pixel_ap"],
        "aupro": pixel["aupro"],
        "per_type_image_auroc": per_type_auroc(scores, labels, types),
        "images_per_s": len(samples) / seconds,
    }
    write_result(run.name, result)


def main() -> None:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("build", help="write seeded random training tiles at one scale")
    make.add_argument("--scale", type=float, required=True)
    make.add_argument("--out", type=Path, required=True)
    make.add_argument("--tiles-per-image", type=int, default=3)
    make.add_argument("--seed", type=int, default=0)
    score = commands.add_parser("evaluate", help="score whole test images from their tiles")
    score.add_argument("run", type=Path)
    score.add_argument("--scale", type=float, required=True)
    score.add_argument("--stride", type=int, default=96)
    pair = commands.add_parser("fuse", help="score test images by the mean of a squashed and a tiled run")
    pair.add_argument("squashed_run", type=Path)
    pair.add_argument("tiled_run", type=Path)
    pair.add_argument("--scale", type=float, required=True)
    pair.add_argument("--stride", type=int, default=96)
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"dataset not found: {DATA} (this diagnostic needs ../shared/data)")
    if args.command == "build":
        build(args.scale, args.out, args.tiles_per_image, args.seed)
    elif args.command == "evaluate":
        evaluate(args.run, args.scale, args.stride)
    else:
        fuse(args.squashed_run, args.tiled_run, args.scale, args.stride)


if __name__ == "__main__":
    main()
