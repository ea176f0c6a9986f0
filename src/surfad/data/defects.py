"""Synthetic surface defects: a texture pasted inside a random Perlin-noise mask.

Used to train models that learn from simulated anomalies (recondiff) and by the training loop's
validation when a dataset has no real defects. The recipe follows DRAEM: a texture, photometrically
augmented by three random operations, is blended with opacity 1 - beta (beta ~ U[0, 0.8)) into the
image inside a thresholded, rotated Perlin-noise mask; outside the mask the image is untouched.

Texture sources: "procedural" (built-in generated textures, no external data), "self" (shifted and
rotated copies of the image itself) or a folder of texture images such as DTD.

Source "surface" mixes that texture recipe with three kinds of defect made from the image itself,
the common faults of machined, pressed or coated parts that a foreign texture does not look like:
stains (a Perlin-shaped region made darker or brighter, sometimes blurred), scratches (thin
curved lines) and pits (small dark or bright blobs). Each kind is drawn one time in four.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from surfad.data.io import IMAGE_SUFFIXES, infer_channels, read_image
from surfad.data.layouts import expand_inputs
from surfad.data.tiles import pad_to_tile, random_window
from surfad.data.transforms import preprocess, resize_image
from surfad.errors import SurfadError
from surfad.utils import atomic_write_bytes

SOURCES = ("procedural", "self", "surface")  # built-in texture sources; anything else is a folder
PROCEDURAL_BANK_SIZE = 256  # textures in the built-in bank (made on first use, from the seed)
SURFACE_TEXTURE_SHARE = 0.25  # source "surface": the share of defects that are procedural textures
MAX_OPACITY_BETA = 0.8  # beta ~ U[0, 0.8): the share of the original image kept inside the mask
PERLIN_THRESHOLD = 0.5
MIN_PERLIN_CELL = 8  # px: a Perlin cell is never smaller than this (DRAEM: 256 px / 2^5)
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def perlin_noise(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2D gradient (Perlin) noise, float32 `shape`, roughly in [-1, 1].

    `res` is the number of noise cells along each axis; random unit gradients sit on the
    (res + 1) lattice corners and are blended with the quintic fade curve. Any shape works
    (it need not be a multiple of res).
    """
    h, w = shape
    ry, rx = res
    angles = rng.uniform(0.0, 2.0 * math.pi, size=(ry + 1, rx + 1))
    grad_y, grad_x = np.sin(angles), np.cos(angles)
    pos_y = np.arange(h) * (ry / h)
    pos_x = np.arange(w) * (rx / w)
    cell_y, cell_x = np.floor(pos_y).astype(int), np.floor(pos_x).astype(int)
    fy, fx = (pos_y - cell_y)[:, None], (pos_x - cell_x)[None, :]
    cy, cx = cell_y[:, None], cell_x[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        """Dot product of the corner's gradient with the offset from that corner."""
        gy, gx = grad_y[cy + dy, cx + dx], grad_x[cy + dy, cx + dx]
        return gy * (fy - dy) + gx * (fx - dx)

    def fade(t: np.ndarray) -> np.ndarray:
        return t * t * t * (t * (6 * t - 15) + 10)

    u, v = fade(fx), fade(fy)
    top = corner(0, 0) * (1 - u) + corner(0, 1) * u
    bottom = corner(1, 0) * (1 - u) + corner(1, 1) * u
    return (math.sqrt(2.0) * (top * (1 - v) + bottom * v)).astype(np.float32)


def perlin_mask(size: int, rng: np.random.Generator) -> np.ndarray:
    """A non-empty binary defect mask, float32 (size, size) in {0, 1}.

    Perlin noise with 2^a x 2^b cells, a and b drawn independently from {0, ..., amax} where
    amax = min(5, floor(log2(size / 8))) so a cell is at least 8 px (DRAEM at 256 px uses
    {0, ..., 5}); rotated by U(-90, 90) degrees with zero fill (the corners stay defect-free);
    thresholded at 0.5. Drawn again until the mask is non-empty.
    """
    amax = min(5, max(0, math.floor(math.log2(max(size, 1) / MIN_PERLIN_CELL))))
    centre = ((size - 1) / 2.0, (size - 1) / 2.0)
    while True:
        a, b = rng.integers(0, amax + 1, size=2)
        noise = perlin_noise((size, size), (2**int(a), 2**int(b)), rng)
        matrix = cv2.getRotationMatrix2D(centre, float(rng.uniform(-90.0, 90.0)), 1.0)
        noise = cv2.warpAffine(noise, matrix, (size, size), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
        mask = (noise > PERLIN_THRESHOLD).astype(np.float32)
        if mask.any():
            return mask


# --- procedural textures --------------------------------------------------------------------------


def _fractal_noise(size: int, rng: np.random.Generator) -> np.ndarray:
    """Sum of Perlin octaves, min-max scaled to [0, 1]."""
    base = int(rng.choice([1, 2, 4]))
    out = np.zeros((size, size), dtype=np.float32)
    for octave in range(4):
        cells = min(base * 2**octave, max(1, size // 2))
        out += perlin_noise((size, size), (cells, cells), rng) / 2**octave
    return _stretch(out)


def _grating(size: int, rng: np.random.Generator) -> np.ndarray:
    """Oriented stripes, sine or square, with a Perlin-warped phase."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    theta = rng.uniform(0.0, math.pi)
    cycles = rng.uniform(2.0, max(3.0, size / 8.0))
    warp = rng.uniform(0.0, 3.0) * perlin_noise((size, size), (2, 2), rng)
    wave = 0.5 + 0.5 * np.sin(2 * math.pi * cycles * (xx * math.cos(theta) + yy * math.sin(theta)) + warp)
    return (wave > 0.5).astype(np.float32) if rng.random() < 0.5 else wave


def _checker(size: int, rng: np.random.Generator) -> np.ndarray:
    """Rotated checkerboard or grid of lines."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    theta = rng.uniform(0.0, math.pi / 2)
    u = xx * math.cos(theta) + yy * math.sin(theta)
    v = -xx * math.sin(theta) + yy * math.cos(theta)
    period = rng.uniform(4.0, max(5.0, size / 4.0))
    if rng.random() < 0.5:
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    width = rng.uniform(0.1, 0.4)
    return (((u / period) % 1 < width) | ((v / period) % 1 < width)).astype(np.float32)


def _speckle(size: int, rng: np.random.Generator) -> np.ndarray:
    """Blurred white noise (grain, sand, concrete-like)."""
    noise = rng.standard_normal((size, size)).astype(np.float32)
    return _stretch(cv2.GaussianBlur(noise, (0, 0), sigmaX=float(rng.uniform(0.5, 4.0))))


def _blobs(size: int, rng: np.random.Generator) -> np.ndarray:
    """Thresholded low-frequency noise: patches, stains."""
    noise = _fractal_noise(size, rng)
    return (noise > rng.uniform(0.3, 0.7)).astype(np.float32) * 0.8 + 0.2 * noise


_PATTERNS: tuple[Callable[[int, np.random.Generator], np.ndarray], ...] = (
    _fractal_noise, _grating, _checker, _speckle, _blobs,
)


def procedural_texture(size: int, rng: np.random.Generator) -> np.ndarray:
    """One random texture, float32 (size, size, 3) RGB in [0, 1].

    A random pattern (fractal noise, stripes, checker/grid, speckle or blobs) coloured between two
    random colours, or (one time in four) three independent noise channels; plus a little grain.
    """
    if rng.random() < 0.25:
        texture = np.stack([_fractal_noise(size, rng) for _ in range(3)], axis=-1)
    else:
        pattern = _PATTERNS[int(rng.integers(len(_PATTERNS)))](size, rng)
        c1, c2 = rng.random(3).astype(np.float32), rng.random(3).astype(np.float32)
        texture = c1 + (c2 - c1) * pattern[..., None]
    texture = texture + rng.uniform(0.0, 0.05) * rng.standard_normal(texture.shape).astype(np.float32)
    return np.clip(texture, 0.0, 1.0).astype(np.float32)


# --- photometric augmentation of the texture (3 of these 10, random order, as in DRAEM) -------------


def _stretch(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    return ((x - lo) / (hi - lo)).astype(np.float32) if hi > lo else np.zeros_like(x, dtype=np.float32)


def _gamma(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return t ** rng.uniform(0.5, 2.0, size=3).astype(np.float32)


def _brightness(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return t * rng.uniform(0.8, 1.2) + rng.uniform(-30.0, 30.0) / 255.0


def _sharpness(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    smooth = cv2.blur(t, (3, 3))
    return smooth + rng.uniform(0.0, 2.0) * (t - smooth)


def _hue_saturation(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    hsv = cv2.cvtColor(np.clip(t, 0, 1).astype(np.float32), cv2.COLOR_RGB2HSV)  # H in [0, 360)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-70.0, 70.0)) % 360.0
    hsv[..., 1] = np.clip(hsv[..., 1] + rng.uniform(-0.2, 0.2), 0.0, 1.0)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def _solarize(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    threshold = rng.uniform(32.0, 128.0) / 255.0
    return np.where(t >= threshold, 1.0 - t, t)


def _posterize(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    drop = 8 - int(rng.integers(1, 8))  # keep 1..7 bits
    levels = (np.clip(t, 0, 1) * 255).astype(np.uint8) >> drop << drop
    return levels.astype(np.float32) / 255.0


def _invert(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return 1.0 - t


def _autocontrast(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.stack([_stretch(t[..., c]) for c in range(t.shape[2])], axis=-1)


def _equalize(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = np.empty_like(t)
    for c in range(t.shape[2]):
        levels = (np.clip(t[..., c], 0, 1) * 255).astype(np.uint8)
        cdf = np.cumsum(np.bincount(levels.ravel(), minlength=256)).astype(np.float32)
        out[..., c] = _stretch(cdf)[levels]
    return out


def _rotate(t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = t.shape[:2]
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), float(rng.uniform(-45.0, 45.0)), 1.0)
    return cv2.warpAffine(t, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


TEXTURE_OPS: tuple[Callable[[np.ndarray, np.random.Generator], np.ndarray], ...] = (
    _gamma, _brightness, _sharpness, _hue_saturation, _solarize,
    _posterize, _invert, _autocontrast, _equalize, _rotate,
)


def augment_texture(texture: np.ndarray, rng: np.random.Generator, n_ops: int = 3) -> np.ndarray:
    """Apply `n_ops` distinct random ops of TEXTURE_OPS in random order; float32 HxWx3 in [0, 1]."""
    out = texture.astype(np.float32)
    for op in rng.choice(len(TEXTURE_OPS), size=n_ops, replace=False):
        out = np.clip(TEXTURE_OPS[int(op)](out, rng), 0.0, 1.0).astype(np.float32)
    return out


# --- the synthesizer ------------------------------------------------------------------------------


def _to_hwc3(image: np.ndarray) -> np.ndarray:
    """(C, S, S) float, C = 1 or 3 -> (S, S, 3) float32."""
    hwc = np.ascontiguousarray(image.transpose(1, 2, 0), dtype=np.float32)
    return np.repeat(hwc, 3, axis=2) if hwc.shape[2] == 1 else hwc


def _to_chw(texture: np.ndarray, channels: int) -> np.ndarray:
    """(S, S, 3) float32 RGB -> (channels, S, S), grayscale by luma when channels = 1."""
    if channels == 1:
        return (texture @ LUMA)[None].astype(np.float32)
    return np.ascontiguousarray(texture.transpose(2, 0, 1), dtype=np.float32)


# --- surface defects made from the image itself (source "surface") ----------------------------------


def _soft_inside(mask: np.ndarray, sigma: float) -> np.ndarray:
    """Blend weights in [0, 1] that fade towards the mask's edge and are exactly 0 outside it."""
    blurred = cv2.GaussianBlur(mask, (0, 0), sigmaX=max(sigma, 0.3))
    return mask * np.clip(2.0 * blurred, 0.0, 1.0)


def _intensity_target(image: np.ndarray, rng: np.random.Generator, dark: tuple[float, float],
                      bright: tuple[float, float]) -> np.ndarray:
    """The image darkened (gain in `dark`) or brightened (towards white by a share in `bright`)."""
    if rng.random() < 0.6:
        return image * rng.uniform(*dark)
    return image + (1.0 - image) * rng.uniform(*bright)


def stain(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A Perlin-shaped region darker or brighter than its surroundings, its texture blurred half the
    time (worn or frayed surface), with a soft edge.

    Like every SURFACE_DEFECTS kind: image float32 (C, S, S) -> (target (C, S, S), blend weights
    (S, S) in [0, 1], zero outside the mask, mask (S, S) in {0, 1}, never empty).
    """
    size = image.shape[1]
    mask = perlin_mask(size, rng)
    source = image
    if rng.random() < 0.5:
        hwc = np.ascontiguousarray(image.transpose(1, 2, 0))
        blurred = cv2.GaussianBlur(hwc, (0, 0), sigmaX=float(rng.uniform(1.0, 3.0)) * size / 128)
        source = blurred.reshape(hwc.shape).transpose(2, 0, 1)
    target = _intensity_target(source, rng, dark=(0.35, 0.85), bright=(0.1, 0.4))
    return target, _soft_inside(mask, float(rng.uniform(0.5, 3.0)) * size / 128), mask


def scratch(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One thin curved line (a random walk whose heading drifts), 1 to 3 px wide at 128 px."""
    size = image.shape[1]
    scale = size / 128
    while True:
        length = rng.uniform(0.15, 0.8) * size
        point = rng.uniform(0, size, size=2)
        heading, turn = rng.uniform(0, 2 * math.pi), rng.uniform(0.0, 0.15)
        points = [point.copy()]
        for _ in range(int(length / 2)):
            heading += rng.normal(0.0, turn)
            point = point + 2.0 * np.array([math.cos(heading), math.sin(heading)])
            points.append(point.copy())
        canvas = np.zeros((size, size), dtype=np.uint8)
        thickness = max(1, round(rng.uniform(1.0, 3.0) * scale))
        cv2.polylines(canvas, [np.round(np.array(points)).astype(np.int32)], False, 1, thickness=thickness)
        mask = canvas.astype(np.float32)
        if mask.any():
            break
    target = _intensity_target(image, rng, dark=(0.1, 0.6), bright=(0.3, 0.8))
    return target, mask, mask


def pits(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One to four small dark or bright blobs (holes, dents, spatter), 1 to 6 px radius at 128 px."""
    size = image.shape[1]
    scale = size / 128
    canvas = np.zeros((size, size), dtype=np.uint8)
    centre = rng.uniform(0, size, size=2)
    for _ in range(int(rng.integers(1, 5))):
        at = np.clip(centre + rng.normal(0.0, 6.0 * scale, size=2), 0, size - 1)
        axes = np.maximum(1, np.round(rng.uniform(1.0, 6.0, size=2) * scale)).astype(int)
        cv2.ellipse(canvas, (int(at[0]), int(at[1])), (int(axes[0]), int(axes[1])),
                    float(rng.uniform(0, 180)), 0, 360, 1, thickness=-1)
    mask = canvas.astype(np.float32)
    target = _intensity_target(image, rng, dark=(0.05, 0.5), bright=(0.3, 0.8))
    return target, _soft_inside(mask, 0.5 * scale), mask


SURFACE_DEFECTS: tuple[Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray, np.ndarray]], ...] = (
    stain, scratch, pits,
)


class DefectSynthesizer:
    """Adds one synthetic defect to an image: (image, rng) -> (anomalous image, mask).

    source: "procedural" (default; a bank of PROCEDURAL_BANK_SIZE built-in textures, each made on
    first use from (seed, index), so runs are reproducible and need no external data), "self"
    (the image itself, rotated by U(-90, 90) degrees with edge replication and cyclically shifted),
    "surface" (procedural textures one time in four, otherwise a stain, scratch or pit made from
    the image: see SURFACE_DEFECTS) or a path to a folder of texture images (searched
    recursively, any image extension; e.g. DTD).
    image_size: the size of the images it will get (textures are made or resized to this size,
    and resized again for an image of another size).
    """

    def __init__(self, source: str = "procedural", image_size: int = 128, seed: int = 0) -> None:
        self.source = source
        self.image_size = image_size
        self.seed = seed
        self.files: list[Path] = []
        self._bank: dict[int, np.ndarray] = {}
        if source not in SOURCES:
            folder = Path(source)
            if not folder.is_dir():
                raise SurfadError(
                    f"defect source {source!r}: not one of {', '.join(SOURCES)} or an existing folder of textures"
                )
            self.files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not self.files:
                raise SurfadError(f"defect source {source!r}: the folder has no images ({', '.join(IMAGE_SUFFIXES)})")

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """image float32 (C, S, S) in [0, 1] -> (anomalous image (C, S, S), mask (S, S) in {0, 1}).

        The mask is never empty; out = (1 - m) * image + m * (beta * image + (1 - beta) * texture)
        with beta ~ U[0, 0.8), so pixels outside the mask are exactly the input's.
        """
        if image.ndim != 3 or image.shape[0] not in (1, 3) or image.shape[1] != image.shape[2]:
            raise ValueError(f"expected a (C, S, S) image with C = 1 or 3, got shape {image.shape}")
        channels, size = image.shape[0], image.shape[1]
        if self.source == "surface" and rng.random() >= SURFACE_TEXTURE_SHARE:
            kind = SURFACE_DEFECTS[int(rng.integers(len(SURFACE_DEFECTS)))]
            target, weights, mask = kind(image, rng)
            out = image + weights[None] * (target - image)
            return np.clip(out, 0.0, 1.0).astype(np.float32), mask
        texture = self.texture(image, rng)
        if texture.shape[0] != size:
            texture = cv2.resize(texture, (size, size), interpolation=cv2.INTER_LINEAR)
        texture = _to_chw(augment_texture(texture, rng), channels)
        mask = perlin_mask(size, rng)
        beta = rng.uniform(0.0, MAX_OPACITY_BETA)
        m = mask[None]
        out = (1.0 - m) * image + m * (beta * image + (1.0 - beta) * texture)
        return np.clip(out, 0.0, 1.0).astype(np.float32), mask

    def texture(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The raw (not yet augmented) texture for `image`: float32 (S', S', 3) RGB in [0, 1]."""
        if self.source in ("procedural", "surface"):
            index = int(rng.integers(PROCEDURAL_BANK_SIZE))
            if index not in self._bank:
                texture = procedural_texture(self.image_size, np.random.default_rng([abs(self.seed), index]))
                self._bank[index] = (texture * 255).round().astype(np.uint8)
            return self._bank[index].astype(np.float32) / 255.0
        if self.source == "self":
            hwc = _to_hwc3(image)
            size = hwc.shape[0]
            matrix = cv2.getRotationMatrix2D(((size - 1) / 2.0, (size - 1) / 2.0), float(rng.uniform(-90, 90)), 1.0)
            rotated = cv2.warpAffine(hwc, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            return np.roll(rotated, shift=tuple(int(s) for s in rng.integers(0, size, size=2)), axis=(0, 1))
        path = self.files[int(rng.integers(len(self.files)))]
        return resize_image(read_image(path, channels=3), self.image_size).astype(np.float32) / 255.0


def synthetic_defect(image: np.ndarray, synthesizer: DefectSynthesizer, rng: np.random.Generator,
                     attempts: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(C, H, W) image -> (image with one synthetic defect, bool (H, W) mask); square model-sized
    images directly, others (tiling) in a random window of the synthesizer's size."""
    size = synthesizer.image_size
    _, height, width = image.shape
    if height == width == size:
        out, mask = synthesizer(image, rng)
        return out.astype(np.float32), mask > 0.5
    padded = pad_to_tile(image, size)
    for _ in range(attempts):  # a small image's window reaches into the padding: keep a defect that shows
        y, x = random_window(padded.shape[1], padded.shape[2], size, rng)
        window, window_mask = synthesizer(np.ascontiguousarray(padded[:, y : y + size, x : x + size]), rng)
        full = np.zeros(padded.shape[1:], dtype=bool)
        full[y : y + size, x : x + size] = window_mask > 0.5
        if full[:height, :width].any():
            break
    out = padded.copy()
    out[:, y : y + size, x : x + size] = window
    return np.ascontiguousarray(out[:, :height, :width], dtype=np.float32), full[:height, :width]


def write_defect_preview(
    images: Sequence[np.ndarray], synthesizer: DefectSynthesizer, out_png: Path, n: int = 8, seed: int = 0
) -> Path:
    """Write a PNG grid with one column per example: input, synthetic defect, mask (top to bottom).

    images: float32 (C, S, S) arrays in [0, 1] of one size; with fewer than n they are reused in
    order (each time with a new defect). Returns the path written.
    """
    if not images:
        raise SurfadError("defect preview: no images given")
    rng = np.random.default_rng(seed)
    gap = 2
    columns = []
    for i in range(n):
        image = np.asarray(images[i % len(images)], dtype=np.float32)
        anomalous, mask = synthesizer(image, rng)
        tiles = [_to_hwc3(image), _to_hwc3(anomalous), np.repeat(mask[..., None], 3, axis=2)]
        separator = np.ones((gap, image.shape[2], 3), dtype=np.float32)
        columns.append(np.concatenate([tiles[0], separator, tiles[1], separator, tiles[2]], axis=0))
    spacer = np.ones((columns[0].shape[0], gap, 3), dtype=np.float32)
    grid = np.concatenate([part for column in columns for part in (column, spacer)][:-1], axis=1)
    bgr = cv2.cvtColor((np.clip(grid, 0, 1) * 255).round().astype(np.uint8), cv2.COLOR_RGB2BGR)
    encoded = cv2.imencode(".png", bgr)[1]
    out_png = Path(out_png)
    atomic_write_bytes(out_png, encoded.tobytes())
    return out_png


def preview_defects(inputs: list[str], out_png: str | Path, source: str = "procedural", image_size: int = 128,
                    n: int = 8, seed: int = 0) -> Path:
    """`surfad preview-defects`: synthetic defects from `source` on the first n input images, at the
    model input they would have (channels by training's rule: 1 when every image is grayscale)."""
    paths = expand_inputs(inputs)[:n]
    channels = infer_channels(paths)
    images = [preprocess(read_image(p), image_size, channels) for p in paths]
    return write_defect_preview(images, DefectSynthesizer(source, image_size=image_size, seed=seed), Path(out_png), n,
                                seed)
