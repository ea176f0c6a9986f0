"""Regions of interest: a mask image saying where the part is in a fixed camera's view.

A ROI is an image file whose nonzero pixels (> 127 for lossy formats, as for defect masks) are
inspected. It is resized with each image, with nearest-neighbour interpolation: to the model's
input when squashing, to the scaled image when tiling, to the original image for masks and
regions. So it must have the images' aspect ratio (any size), and it must not be empty.

Nothing outside the ROI reaches a score: before an image is preprocessed, every pixel outside it
is replaced from what is inside (InputFill, `data.roi_fill`), in training and at inference alike, so a model's receptive field that crosses the ROI's edge sees only what is
inside; the anomaly map is then also set to zero outside (surfad.scoring.roi_score_fn).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
from scipy.ndimage import distance_transform_edt

from surfad.data.io import read_mask
from surfad.errors import BadInputError, SurfadError
from surfad.utils import atomic_write_bytes

ASPECT_TOLERANCE = 0.02  # relative difference of width/height allowed between a ROI and an image


def load_roi(path: str | Path) -> np.ndarray:
    """A ROI file as a bool (H, W) array, or an error naming the file when it is not usable."""
    try:
        roi = read_mask(path)
    except BadInputError as err:
        raise SurfadError(f"region of interest: {err}") from None
    if not roi.any():
        raise SurfadError(f"{path}: the region of interest is empty (no nonzero pixel): nothing would be inspected")
    return roi


WHOLE_IMAGE = "none"  # the fingerprint of no region of interest, and the --roi value that asks for none


def optional_roi(path: str | Path | None) -> np.ndarray | None:
    """load_roi(path), or None (the whole image) without a path."""
    return load_roi(path) if path else None


def choose_roi(own: Path, override: str | Path | None) -> np.ndarray | None:
    """The region of interest to inspect with: `override` (a mask file, or "none" for the whole image),
    else the run's own ROI file `own` if it exists, else None (the whole image)."""
    if override is not None:
        return None if str(override).lower() == WHOLE_IMAGE else load_roi(override)
    return load_roi(own) if own.is_file() else None


def save_roi(roi: np.ndarray, path: Path) -> None:
    """A region of interest as a PNG (255 = inspected), written atomically."""
    atomic_write_bytes(path, cv2.imencode(".png", roi.astype(np.uint8) * 255)[1].tobytes())


def roi_fingerprint(roi: np.ndarray | None) -> str:
    """A short name of exactly this region of interest ("none" for the whole image), which
    calibration.json keeps: thresholds chosen on scores inside one ROI do not fit scores in another."""
    if roi is None:
        return WHOLE_IMAGE
    digest = hashlib.sha256(f"{roi.shape[0]}x{roi.shape[1]}".encode() + np.packbits(roi.astype(bool)).tobytes())
    return f"sha256:{digest.hexdigest()[:16]}"


def check_aspect(roi: np.ndarray, height: int, width: int, name: str) -> None:
    """BadInputError (the image does not suit this camera's ROI) when an image of height x width does
    not have the ROI's aspect ratio."""
    ratio, image_ratio = roi.shape[1] / roi.shape[0], width / height
    if abs(ratio / image_ratio - 1) > ASPECT_TOLERANCE:
        raise BadInputError(f"{name}: the image is {width}x{height} but the region of interest is "
                          f"{roi.shape[1]}x{roi.shape[0]}, another aspect ratio; give a ROI drawn on this camera's images")


def resize_roi(roi: np.ndarray, height: int, width: int) -> np.ndarray:
    """The ROI at height x width (nearest neighbour), bool."""
    if roi.shape == (height, width):
        return roi
    return cv2.resize(roi.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)


FILL_SIZES_KEPT = 8  # image sizes whose nearest-inside-pixel indices an InputFill keeps


class InputFill:
    """Replaces every pixel of an image outside a region of interest, so what lies outside (a fixture,
    a conveyor, a label) cannot change anything computed from the image.

    mode "nearest": each outside pixel takes the value of its nearest pixel inside, which continues
    the part's own edge outwards; "mean": the mean colour of the pixels inside. Either way the filled
    image depends on the pixels inside alone. The geometry is computed once per image size.
    """

    def __init__(self, roi: np.ndarray, mode: str = "nearest") -> None:
        if mode not in ("nearest", "mean"):
            raise SurfadError(f"data.roi_fill={mode!r}: choose nearest, mean or off")
        self.roi = roi
        self.mode = mode
        self._geometry: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def geometry(self, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(outside mask, row and column of the nearest inside pixel of each outside pixel) at this size."""
        if (height, width) not in self._geometry:
            if len(self._geometry) >= FILL_SIZES_KEPT:  # images of ever new sizes must not grow it
                self._geometry.clear()
            inside = resize_roi(self.roi, height, width)
            outside = ~inside
            if self.mode == "nearest":
                rows, cols = distance_transform_edt(outside, return_distances=False, return_indices=True)
                self._geometry[height, width] = (outside, rows[outside], cols[outside])
            else:
                self._geometry[height, width] = (outside, np.zeros(0, int), np.zeros(0, int))
        return self._geometry[height, width]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """A copy of the HxWxC image filled outside the ROI (resized to the image, nearest neighbour)."""
        outside, rows, cols = self.geometry(*image.shape[:2])
        out = image.copy()
        if self.mode == "nearest":
            out[outside] = image[rows, cols]
        else:
            out[outside] = np.round(image[~outside].mean(axis=0)).astype(image.dtype)
        return out


def input_fill(roi: np.ndarray | None, mode: str) -> InputFill | None:
    """The fill a run with this region of interest and data.roi_fill applies (None: none)."""
    return None if roi is None or mode == "off" else InputFill(roi, mode)
