"""The region of interest on magnetic tile: filling the input outside it (data.roi_fill nearest)
against masking the map only (off), for the accuracy inside and for what a block outside can do.

Magnetic-tile images differ in aspect ratio, and a ROI must have the images' own, so the images
(and masks) are first squashed to 256 x 256 into a work folder outside the repository (the model
squashes them to 224 anyway). The ROI is a centred ellipse with semi-axes 40% of the sides: its
edge runs across the tile's surface, so the model's receptive field crosses it everywhere.

    python benchmarks/roi_fill.py --work /tmp/mt256 [--model padim]

Per mode (nearest, mean, off): fit on the standard training list, calibrate fpr:0.05 on the
validation good images (synthetic validation defects are drawn inside the ROI), evaluate test: all
of it, and the test good images with the defective ones whose mask lies mostly (>= 50%) inside the
ROI (what the user asked to inspect); then paste a bright and a dark 40 x 40 block in a corner,
outside the ROI, on test good images and record how far the score moves (relative to the
threshold) and how many verdicts flip. Writes benchmarks/results/roi_fill_<model>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from surfad.config import DataConfig, RunConfig, TrainConfig
from surfad.data.io import read_image, read_mask
from surfad.data.roi import load_roi, resize_roi
from surfad.detector import Detector
from surfad.evaluate import calibrate_run, evaluate_run, select_split
from surfad.data.splits import Splits
from surfad.training import train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import DATASETS, RESULTS, provenance  # noqa: E402

SIDE = 256


def squashed_copy(source: Path, work: Path) -> Path:
    """Every image and mask of the mt layout under `source`, squashed to SIDE x SIDE under `work`."""
    root = work / "magnetic-tile"
    if (root / ".complete").is_file():
        return root
    for path in sorted(source.glob("MT_*/Imgs/*")):
        target = root / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if path.suffix == ".png":  # a mask: labels stay binary
            cv2.imwrite(str(target), cv2.resize(image, (SIDE, SIDE), interpolation=cv2.INTER_NEAREST))
        else:
            cv2.imwrite(str(target), cv2.resize(image, (SIDE, SIDE), interpolation=cv2.INTER_AREA),
                        [cv2.IMWRITE_JPEG_QUALITY, 100])
    (root / ".complete").touch()
    return root


def ellipse_roi(path: Path) -> Path:
    roi = np.zeros((SIDE, SIDE), np.uint8)
    cv2.ellipse(roi, (SIDE // 2, SIDE // 2), (int(0.4 * SIDE), int(0.4 * SIDE)), 0, 0, 360, 255, -1)
    cv2.imwrite(str(path), roi)
    return path


def mostly_inside(samples: list, roi_path: Path) -> list:
    """The good samples, and the defective ones with at least half of their mask inside the ROI."""
    roi = load_roi(roi_path)
    kept = []
    for sample in samples:
        if sample.label == 0:
            kept.append(sample)
            continue
        mask = read_mask(sample.mask_path)
        if (mask & resize_roi(roi, *mask.shape)).sum() >= 0.5 * mask.sum():
            kept.append(sample)
    return kept


def outside_effect(run: Path, roi: Path, n: int = 40) -> dict[str, float]:
    """Score changes when a bright or dark 40 px block is pasted in a corner, outside the ROI."""
    detector = Detector.load(run, roi=roi)
    splits = Splits.load(run / "splits.json")
    good = [s for s in select_split(splits, "test") if s.label == 0][:n]
    threshold = detector.threshold
    moves, flips = [], 0
    for sample in good:
        image = read_image(sample.path)
        base = detector.predict(image)
        for value in (255, 0):
            pasted = image.copy()
            pasted[4:44, 4:44] = value
            changed = detector.predict(pasted)
            moves.append(abs(changed.score - base.score) / abs(threshold))
            flips += changed.verdict != base.verdict
    return {"images": len(good), "pastes": len(moves), "max_score_change_of_threshold": float(max(moves)),
            "mean_score_change_of_threshold": float(np.mean(moves)), "verdict_flips": flips}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True, help="folder for the squashed copy and the runs")
    parser.add_argument("--model", default="padim")
    args = parser.parse_args()
    spec = DATASETS["mt"]
    data = squashed_copy(spec["path"], args.work)
    roi = ellipse_roi(args.work / "roi.png")
    result: dict = {**provenance(), "model": args.model, "roi": "centred ellipse, semi-axes 40% of the sides",
                    "images": f"squashed to {SIDE}x{SIDE}", "modes": {}}
    for mode in ("nearest", "mean", "off"):
        config = RunConfig(model=args.model, data=DataConfig(path=str(data), layout="mt", roi=str(roi), roi_fill=mode,
                                                             train_list=str(spec["train_list"])),
                           train=TrainConfig(threads=0))
        run = args.work / f"run_{args.model}_{mode}"
        if not (run / "calibration.json").is_file():
            train(config, run, progress=False)
        calibrate_run(run, split="val", strategy="fpr:0.05")
        metrics = evaluate_run(run, split="test", out=run / "eval_test")
        test = select_split(Splits.load(run / "splits.json"), "test")
        inside = evaluate_run(run, split="test_inside", out=run / "eval_inside", samples=mostly_inside(test, roi))
        keys = ("image_auroc", "image_ap", "pixel_auroc", "aupro", "recall", "fpr")
        history = (run / "history.csv").read_text().splitlines()
        result["modes"][mode] = {
            "validation": dict(zip(history[0].split(","), history[1].split(","))),
            "test": {k: metrics[k] for k in keys},
            "test_mostly_inside": {**{k: inside[k] for k in keys}, "n_images": inside["n_images"],
                                   "per_type_image_auroc": inside["per_type_image_auroc"]},
            "outside_block": outside_effect(run, roi),
        }
        print(mode, json.dumps(result["modes"][mode]), flush=True)
    out = RESULTS / f"roi_fill_{args.model}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    main()
