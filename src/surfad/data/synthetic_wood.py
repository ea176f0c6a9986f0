"""A synthetic wood-surface dataset in MVTec layout: the built-in data of the demo and the tests.

Good images are procedural wood grain (growth rings bent by smooth noise, fibre streaks, colour
and ring spacing drawn per image), so a model has to learn a texture family rather than one
picture. Defective images add one of DEFECT_TYPES with its exact 0/255 mask: pixels outside the
mask are left untouched. Everything is drawn from numpy generators seeded by (seed, split, index),
so the same seed gives byte-identical PNG files.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from surfad import __version__
from surfad.data.samples import GOOD
from surfad.errors import SurfadError

DEFECT_TYPES = ("scratch", "knot", "stain", "crack")
CATEGORY = "synthetic_wood"
README_TITLE = "surfad synthetic wood dataset"


def _smooth_noise(rng: np.random.Generator, size: int, cells: tuple[int, int]) -> np.ndarray:
    """A smooth random field (about unit variance): a rows x cols grid of normals, upsampled."""
    grid = rng.standard_normal(cells).astype(np.float32)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)


def wood_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A size x size float32 RGB wood-grain image in [0, 255], grain running top to bottom."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    period = rng.uniform(0.045, 0.11)  # ring spacing, as a share of the width
    bend = _smooth_noise(rng, size, (3, 3)) * rng.uniform(0.015, 0.05)
    wave = rng.uniform(0.003, 0.015) * np.sin(2 * np.pi * (y * rng.uniform(0.5, 2.0) + rng.uniform()))
    t = (x + rng.uniform(-0.12, 0.12) * y + bend + wave) / period + rng.uniform()
    ring = t - np.floor(t)
    latewood = ring ** rng.uniform(3.0, 7.0)  # dark band at the end of each growth ring
    fibres = cv2.resize(rng.standard_normal((max(2, size // 12), size)).astype(np.float32), (size, size))
    blotch = _smooth_noise(rng, size, (4, 4))
    shade = 1.0 - rng.uniform(0.22, 0.42) * latewood + 0.035 * fibres + 0.03 * blotch
    lightness = rng.uniform(0.55, 0.85)
    base = 255.0 * lightness * np.array([1.0, rng.uniform(0.66, 0.78), rng.uniform(0.40, 0.52)], np.float32)
    image = base * np.clip(shade, 0.05, None)[:, :, None] ** np.array([1.0, 1.15, 1.4], np.float32)
    image += rng.normal(0.0, 1.5, image.shape).astype(np.float32)
    return np.clip(image, 0.0, 255.0)


def add_defect(image: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw defect `kind` on a float RGB image; returns (new image, bool mask of the changed area).

    Sizes scale with the image: thin scratches and cracks cover well under 1% of the image, knots
    and stains about 1 to 4%.
    """
    size = image.shape[0]
    mask = np.zeros((size, size), np.uint8)
    centre = rng.uniform(0.25, 0.75, 2) * size
    if kind == "scratch":  # a light, slightly wavy line at any angle: fresh fibres show through
        angle = rng.uniform(0, np.pi)
        step = np.array([np.cos(angle), np.sin(angle)]) * rng.uniform(0.35, 0.6) * size / 2
        points = np.stack([centre - step, centre - step / 3, centre + step / 3, centre + step])
        points += rng.normal(0, size * 0.008, points.shape)
        cv2.polylines(mask, [points.round().astype(np.int32)], False, 255, max(1, round(size / 100)))
        target = image + (255.0 - image) * rng.uniform(0.45, 0.6)
    elif kind == "knot":  # a dark elliptic knot, elongated along the grain, with its own rings
        radius = rng.uniform(0.06, 0.1) * size
        axes = (radius * rng.uniform(0.6, 0.85), radius * rng.uniform(1.0, 1.4))
        cv2.ellipse(mask, _pt(centre), _pt(np.array(axes)), rng.uniform(-15, 15), 0, 360, 255, -1)
        y, x = np.mgrid[0:size, 0:size].astype(np.float32)
        dist = np.hypot((x - centre[0]) / axes[0], (y - centre[1]) / axes[1])
        rings = 0.8 + 0.2 * np.sin(dist * 2 * np.pi * rng.uniform(2.5, 4.0))
        target = image * (rng.uniform(0.35, 0.5) * rings)[:, :, None]
    elif kind == "stain":  # an irregular greyish water/oil stain with a soft rim
        radius = rng.uniform(0.08, 0.12) * size
        y, x = np.mgrid[0:size, 0:size].astype(np.float32)
        edge = 0.35 * _smooth_noise(rng, size, (12, 12))
        field = 1.0 - np.hypot(x - centre[0], y - centre[1]) / radius + edge
        mask[field > 0] = 255
        alpha = (0.35 + 0.65 * np.clip(field / 0.25, 0.0, 1.0)) * rng.uniform(0.6, 0.8)  # visible to the rim
        tint = np.array([0.55, 0.58, 0.68], np.float32) * image.mean(axis=(0, 1))
        target = image * (1 - alpha[:, :, None]) + tint * alpha[:, :, None]
    elif kind == "crack":  # a dark jagged split that follows the grain (top to bottom)
        length = rng.uniform(0.3, 0.5) * size
        ys = np.linspace(-length / 2, length / 2, 12) + centre[1]
        xs = centre[0] + np.cumsum(rng.normal(0, size * 0.012, 12))
        width = max(1, round(size / 110))
        for i in range(11):
            taper = 1 if i in (0, 10) else width + int(rng.integers(0, 2))
            cv2.line(mask, _pt((xs[i], ys[i])), _pt((xs[i + 1], ys[i + 1])), 255, taper)
        target = image * rng.uniform(0.2, 0.3)
    else:
        raise SurfadError(f"unknown synthetic defect type {kind!r}; valid: {', '.join(DEFECT_TYPES)}")
    inside = mask > 0
    out = image.copy()
    out[inside] = target[inside]
    return out, inside


def _pt(xy: np.ndarray | tuple[float, float]) -> tuple[int, int]:
    return int(round(float(xy[0]))), int(round(float(xy[1])))


def write_synthetic_dataset(
    out: Path,
    seed: int = 0,
    size: int = 256,
    n_train: int = 80,
    n_test_good: int = 30,
    n_test_defect: int = 30,
    n_val_good: int = 10,
    n_val_defect: int = 10,
    progress: bool = False,
) -> Path:
    """Write the dataset to out/synthetic_wood and return that folder.

    Layout: train/good, test/<good|type>, ground_truth/<type>/<stem>_mask.png for the test masks,
    validation/<good|type> with masks in validation/ground_truth/<type>/ (MVTec AD 2 style), and
    README.txt. Defect types take turns, so each type gets about n_*_defect / 4 images. An earlier
    synthetic dataset in the same place is replaced; any other existing folder is an error.
    """
    if size < 32:
        raise SurfadError(f"synth: size must be at least 32 pixels, got {size}")
    counts = {
        "n_train": n_train,
        "n_test_good": n_test_good,
        "n_test_defect": n_test_defect,
        "n_val_good": n_val_good,
        "n_val_defect": n_val_defect,
    }
    for name, value in counts.items():
        least = 1 if name == "n_train" else 0
        if value < least:
            raise SurfadError(f"synth: {name} must be at least {least}, got {value}")
    out = Path(out)
    category = out / CATEGORY
    readme = category / "README.txt"
    if category.exists() and not (readme.is_file() and readme.read_text().startswith(README_TITLE)):
        raise SurfadError(f"{category} exists and is not a surfad synthetic dataset; choose another folder")
    jobs = _plan(n_train, n_test_good, n_test_defect, n_val_good, n_val_defect)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=f".{CATEGORY}."))
    try:
        for split_code, index, image_rel, kind in tqdm(jobs, desc="synth", disable=not progress):
            rng = np.random.default_rng([seed, split_code, index])
            image = wood_texture(rng, size)
            if kind != GOOD:
                image, mask = add_defect(image, kind, rng)
                split_dir = "validation/" if image_rel.startswith("validation/") else ""
                mask_rel = f"{split_dir}ground_truth/{kind}/{Path(image_rel).stem}_mask.png"
                _write_png(tmp / mask_rel, mask.astype(np.uint8) * 255)
            _write_png(tmp / image_rel, image.round().astype(np.uint8)[:, :, ::-1])
        (tmp / "README.txt").write_text(_readme(seed, size, counts))
        if category.exists():
            shutil.rmtree(category)
        tmp.rename(category)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return category


def _plan(
    n_train: int, n_test_good: int, n_test_defect: int, n_val_good: int, n_val_defect: int
) -> list[tuple[int, int, str, str]]:
    """(split code, index, relative image path, kind) of every image; codes keep splits' streams apart."""
    jobs = [(0, i, f"train/{GOOD}/{i:03d}.png", GOOD) for i in range(n_train)]
    splits = ((1, "test", n_test_good, n_test_defect), (2, "validation", n_val_good, n_val_defect))
    for code, folder, n_good, n_defect in splits:
        jobs += [(code, i, f"{folder}/{GOOD}/{i:03d}.png", GOOD) for i in range(n_good)]
        for i in range(n_defect):
            kind = DEFECT_TYPES[i % len(DEFECT_TYPES)]
            jobs.append((code, n_good + i, f"{folder}/{kind}/{i // len(DEFECT_TYPES):03d}.png", kind))
    return jobs


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), array):
        raise SurfadError(f"{path}: could not write the image")


def _readme(seed: int, size: int, counts: dict[str, int]) -> str:
    listed = ", ".join(f"{name[2:]} {value}" for name, value in counts.items())
    return (
        f"{README_TITLE}\n\n"
        f"Procedural wood-grain textures ({size}x{size} RGB PNG), seed {seed}, surfad {__version__}.\n"
        f"Images: {listed}.\n"
        f"Defect types: {', '.join(DEFECT_TYPES)}; masks are 0/255 PNG files named <image stem>_mask.png.\n"
        "Layout (MVTec AD style): train/good, test/<good|type>, ground_truth/<type> for the test masks,\n"
        "validation/<good|type> with validation/ground_truth/<type> for its masks.\n"
        "Synthetic data: good for demos and tests, not a benchmark of real inspection performance.\n"
    )
