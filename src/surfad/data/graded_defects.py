"""Graded synthetic defects for validation: four kinds at three levels of difficulty, each with a
declared range of size and contrast at the model's input.

Validation without real defects must rank settings the way real defects would. One easy pasted
texture per image does not: every setting finds it (validation AUROC 97 to 100 on wood for
settings whose test AUROC spans 80 to 93), so validation saturates and cannot choose. The defects
here are the small, faint and thin faults of real surfaces, and most are hard on purpose:

- crack: a thin curved line (a random walk), darker or brighter than the surface;
- stain: a small Perlin-shaped region, darker or brighter, with a soft edge;
- pit: one to three small round blobs (holes, dents, spatter);
- patch: a piece of the surface itself, moved and turned, pasted inside a Perlin-shaped region
  (a structural fault with the surface's own texture: no foreign colour to find).

Sizes are in pixels at the model's input (the image given is already at that scale). Contrast is
the mean absolute change of the pixel values (in [0, 1]) inside the mask, as `measured_contrast`
computes it; a level's range is reached by scaling the change, so a faint defect is faint on any
surface. Defects are placed anywhere in the image (anywhere in the region of interest: see
surfad.training.validation).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from surfad.data.defects import perlin_noise

GRADED = "graded"  # the validation defect source (train.val_defect_source) that draws these
KINDS = ("crack", "stain", "pit", "patch")
LEVELS = ("easy", "medium", "hard")


@dataclass(frozen=True)
class Grade:
    """What one kind of defect looks like at one level: its size and contrast ranges."""

    size: tuple[float, float]  # crack: line width; pit: blob radius; stain, patch: share of the image's area
    contrast: tuple[float, float]  # mean absolute change of the pixel values inside the mask


GRADES: dict[str, dict[str, Grade]] = {
    "crack": {"easy": Grade((3, 4), (0.25, 0.4)), "medium": Grade((2, 3), (0.12, 0.25)),
              "hard": Grade((1, 2), (0.06, 0.12))},
    "stain": {"easy": Grade((0.02, 0.05), (0.15, 0.25)), "medium": Grade((0.01, 0.03), (0.08, 0.15)),
              "hard": Grade((0.005, 0.015), (0.04, 0.08))},
    "pit": {"easy": Grade((3, 5), (0.3, 0.5)), "medium": Grade((2, 3), (0.15, 0.3)),
            "hard": Grade((1, 2), (0.08, 0.15))},
    "patch": {"easy": Grade((0.02, 0.05), (0.12, 0.25)), "medium": Grade((0.01, 0.03), (0.06, 0.12)),
              "hard": Grade((0.005, 0.015), (0.03, 0.06))},
}


def measured_contrast(before: np.ndarray, after: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute change of the values (C, H, W) inside the bool mask (H, W)."""
    return float(np.abs(after - before)[:, mask].mean())


def _line(height: int, width: int, line_width: float, rng: np.random.Generator) -> np.ndarray:
    """A random-walk line `line_width` pixels wide (drawn at 4x and averaged down, so a width of 1.5
    is one), 15% to 50% of the shorter side long, most of it inside the image: its coverage of each
    pixel, float32 (height, width) in [0, 1]."""
    side, up = min(height, width), 4
    while True:
        length = rng.uniform(0.15, 0.5) * side
        point = rng.uniform((0, 0), (width, height))
        heading, turn = rng.uniform(0, 2 * math.pi), rng.uniform(0.0, 0.2)
        points = [point.copy()]
        for _ in range(max(2, int(length / 2))):
            heading += rng.normal(0.0, turn)
            point = point + 2.0 * np.array([math.cos(heading), math.sin(heading)])
            points.append(point.copy())
        canvas = np.zeros((height * up, width * up), np.uint8)
        scaled = np.round(np.array(points) * up + (up - 1) / 2).astype(np.int32)
        cv2.polylines(canvas, [scaled], False, 255, thickness=max(1, int(round(line_width * up))))
        coverage = cv2.resize(canvas, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
        if coverage.sum() >= 0.6 * length * line_width:
            return coverage


def _blob_mask(height: int, width: int, share: float, rng: np.random.Generator) -> np.ndarray:
    """A Perlin-shaped region covering about `share` of the image, at a random place."""
    area = share * height * width
    side = max(4, int(round(2.2 * math.sqrt(area))))  # the region fills about a fifth of its window
    for _ in range(20):
        noise = perlin_noise((side, side), (2, 2), rng)
        yy, xx = np.mgrid[0:side, 0:side]
        fall = 1.0 - np.hypot(yy - side / 2, xx - side / 2) / (side / 2)  # keeps it in one piece, inside the window
        field = noise + 1.2 * fall
        local = field > np.quantile(field, 1.0 - min(0.9, area / side**2))
        if local.any():
            break
    y, x = int(rng.integers(0, max(1, height - side + 1))), int(rng.integers(0, max(1, width - side + 1)))
    mask = np.zeros((height, width), bool)
    window = local[: height - y, : width - x]
    mask[y : y + window.shape[0], x : x + window.shape[1]] = window
    return mask


def _pit_mask(height: int, width: int, radius: float, rng: np.random.Generator) -> np.ndarray:
    canvas = np.zeros((height, width), np.uint8)
    centre = rng.uniform((0, 0), (width, height))
    for _ in range(int(rng.integers(1, 4))):
        at = centre + rng.normal(0.0, 3.0 * radius, size=2)
        at = np.clip(at, 0, (width - 1, height - 1))
        cv2.circle(canvas, (int(at[0]), int(at[1])), max(1, int(round(radius))), 1, thickness=-1)
    return canvas.astype(bool)


def _direction(image: np.ndarray, mask: np.ndarray, contrast: float, rng: np.random.Generator) -> np.ndarray:
    """The change of an intensity defect, per pixel: towards black (six times in ten) or towards
    white, the other way when the surface under the mask is too dark (or bright) for the contrast."""
    level = float(image[:, mask].mean())
    darker = rng.random() < 0.6
    if darker and level < contrast * 1.2:
        darker = False
    elif not darker and 1.0 - level < contrast * 1.2:
        darker = True
    return -image if darker else 1.0 - image


def _moved_surface(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The image turned by 90, 180 or 270 degrees (flipped when it is not square) and shifted: its own
    texture, from elsewhere."""
    turned = np.rot90(image, k=int(rng.integers(1, 4)), axes=(1, 2))
    if turned.shape != image.shape:
        turned = image[:, ::-1, ::-1]
    shift = tuple(int(s) for s in rng.integers(0, image.shape[1:]))
    return np.ascontiguousarray(np.roll(turned, shift=shift, axis=(1, 2)))


def _scaled(image: np.ndarray, change: np.ndarray, mask: np.ndarray, weights: np.ndarray,
            contrast: float) -> np.ndarray:
    """image + a * weights * change, with a chosen so the mean absolute change inside the mask is
    `contrast` (values are clipped to [0, 1]: a is raised until the clipped change reaches it)."""
    step = weights[None] * change
    current = float(np.abs(step)[:, mask].mean())
    if current <= 1e-6:
        return image.copy()
    out, gain = image, contrast / current
    for _ in range(6):
        out = np.clip(image + gain * step, 0.0, 1.0)
        reached = measured_contrast(image, out, mask)
        if reached <= 0 or abs(reached - contrast) < 0.02 * contrast:
            break
        gain *= contrast / reached
    return out.astype(np.float32)


def _patch(image: np.ndarray, mask: np.ndarray, weights: np.ndarray, contrast: float,
           rng: np.random.Generator) -> np.ndarray:
    """The surface moved in under the mask, blended to `contrast`; where the surface is too even for
    that (its own texture changes less), the rest is made up by darkening or brightening it."""
    moved = image + weights[None] * (_moved_surface(image, rng) - image)
    natural = measured_contrast(image, moved, mask)
    if natural >= contrast:
        return _scaled(image, moved - image, mask, np.ones_like(weights), contrast)
    direction = _direction(moved, mask, contrast - natural, rng)
    extra, out = contrast - natural, moved
    for _ in range(6):
        out = _scaled(moved, direction, mask, weights, extra)
        reached = measured_contrast(image, out, mask)
        if abs(reached - contrast) < 0.02 * contrast:
            break
        extra = max(1e-3, extra + contrast - reached)
    return out.astype(np.float32)


SHAPES: dict[str, Callable[[int, int, float, np.random.Generator], np.ndarray]] = {  # -> coverage in [0, 1]
    "crack": _line,
    "stain": lambda h, w, size, rng: _blob_mask(h, w, size, rng).astype(np.float32),
    "pit": lambda h, w, size, rng: _pit_mask(h, w, size, rng).astype(np.float32),
    "patch": lambda h, w, size, rng: _blob_mask(h, w, size, rng).astype(np.float32),
}


def graded_defect(image: np.ndarray, kind: str, level: str, rng: np.random.Generator,
                  inside: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """image float32 (C, H, W) in [0, 1] -> (image with one defect of this kind and level, bool mask
    (H, W)); pixels outside the mask are the input's. `inside`: where the defect may lie (a region of
    interest at the image's size; the mask is drawn again, at most 20 times, until it overlaps it)."""
    grade = GRADES[kind][level]
    _, height, width = image.shape
    for _ in range(20):
        coverage = SHAPES[kind](height, width, rng.uniform(*grade.size), rng)
        if inside is not None:
            coverage *= inside
        mask = coverage >= 0.5  # a thin line's edge pixels are partly covered: they blend, but are not mask
        if mask.any():
            break
    if not mask.any():
        return image.copy(), mask
    contrast = rng.uniform(*grade.contrast)
    soft = coverage
    if kind == "stain":  # a soft edge, zero outside the mask
        blurred = cv2.GaussianBlur(soft, (0, 0), sigmaX=max(1.0, 0.1 * math.sqrt(mask.sum())))
        soft = soft * np.clip(2.0 * blurred, 0.2, 1.0)
    if kind == "patch":
        return _patch(image, mask, soft, contrast, rng), mask
    return _scaled(image, _direction(image, mask, contrast, rng), mask, soft, contrast), mask


def graded_plan(n_images: int, per_image: int) -> list[tuple[int, str, str]]:
    """(image index, kind, level) of each validation defect: per_image defects on each of n_images
    good images, every kind and level as often as the counts allow (kinds cycle fastest)."""
    plan = []
    for i in range(n_images):
        for j in range(per_image):
            k = i * per_image + j
            plan.append((i, KINDS[k % len(KINDS)], LEVELS[(k // len(KINDS)) % len(LEVELS)]))
    return plan
