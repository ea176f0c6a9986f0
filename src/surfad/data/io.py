"""Reading images and masks from disk, with errors that name the file and the problem."""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from surfad.errors import BadInputError, ImageTooLarge

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
LOSSY_SUFFIXES = (".jpg", ".jpeg", ".webp")
FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")  # accepted, by their header (Pillow's names)
# Largest image decoded: Pillow's decompression-bomb limit (2 x its MAX_IMAGE_PIXELS), below the 2^30
# at which OpenCV raises instead of decoding; checked on the header, before any decoding.
MAX_PIXELS = 178_956_970


def image_header(data: bytes, name: str = "<upload>") -> tuple[str, int, int] | None:
    """(format, width, height) from the file header, without decoding any pixel; None when the bytes
    do not start like an image of an accepted format. A header Pillow itself calls a decompression
    bomb (over twice its MAX_IMAGE_PIXELS) is ImageTooLarge here."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=FORMATS) as im:
                return str(im.format), int(im.size[0]), int(im.size[1])
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"{name}: image too large (over {2 * Image.MAX_IMAGE_PIXELS} pixels)") from None
    except Exception:  # noqa: BLE001 - Pillow raises many types for bytes it cannot parse
        return None


def decode_image(data: bytes, channels: int | None = None, name: str = "<upload>",
                 max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes to uint8 HxWxC (C = 1 or 3, RGB order).

    The header is read first: bytes that are not a PNG, JPEG, BMP, TIFF or WebP image are refused
    without decoding, and so is an image declaring more than max_pixels (ImageTooLarge), so a small
    file cannot make the decoder allocate gigabytes. channels=None keeps the file's own (1 for
    grayscale, 3 for colour); 1 or 3 converts. 16-bit images are scaled to 8 bits; an alpha channel
    is dropped.
    """
    if not data:
        raise BadInputError(f"{name}: empty file")
    header = image_header(data, name)
    if header is None:
        raise BadInputError(f"{name}: not a readable image (corrupt, truncated, or not {', '.join(FORMATS)})")
    _, width, height = header
    if width * height > max_pixels:
        raise ImageTooLarge(f"{name}: image too large ({width}x{height} pixels; the limit is {max_pixels})")
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as err:
        raise BadInputError(f"{name}: cannot be decoded ({str(err).strip().splitlines()[-1][:120]})") from None
    if image is None or image.size == 0:
        raise BadInputError(f"{name}: not a readable image (corrupt, truncated or unsupported format)")
    if image.dtype == np.uint16:
        image = (image / 257.0).round().astype(np.uint8)
    elif image.dtype != np.uint8:
        image = cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if image.ndim == 2:
        image = image[:, :, None]
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    elif image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return convert_channels(image, channels)


def read_image(path: str | Path, channels: int | None = None) -> np.ndarray:
    """Read an image file as uint8 HxWxC; see decode_image for the channel rule."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if path.is_symlink():
            raise BadInputError(f"{path}: broken symbolic link (its target {os.readlink(path)} is missing)") from None
        raise BadInputError(f"{path}: file not found") from None
    except OSError as err:
        raise BadInputError(f"{path}: cannot read ({err.strerror})") from None
    return decode_image(data, channels, name=str(path))


def convert_channels(image: np.ndarray, channels: int | None) -> np.ndarray:
    """Convert uint8 HxWxC between grayscale (1) and RGB (3); None leaves it as it is."""
    have = image.shape[2]
    if channels is None or channels == have:
        return image
    if channels == 1:
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[:, :, None]
    if channels == 3:
        return np.repeat(image, 3, axis=2)
    raise ValueError(f"channels must be 1 or 3, got {channels}")


def read_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a defect mask as a bool HxW array.

    Binarised at > 0 for lossless files and > 127 for lossy ones (JPEG masks carry compression
    noise around 0 and 255). When shape (H, W) is given the mask must have that size.
    """
    path = Path(path)
    gray = read_image(path, channels=1)[:, :, 0]
    cut = 127 if path.suffix.lower() in LOSSY_SUFFIXES else 0
    mask = gray > cut
    if shape is not None and mask.shape != tuple(shape):
        raise BadInputError(
            f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is {shape[1]}x{shape[0]}"
        )
    return mask


def as_image(image: np.ndarray | str | Path) -> np.ndarray:
    """A path or an array (uint8 HxW, HxWx1 or HxWx3 RGB) -> uint8 HxWxC; anything else is a clear error."""
    if isinstance(image, (str, Path)):
        return read_image(image)
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise BadInputError(f"image array must be uint8, got {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3) or 0 in array.shape:
        raise BadInputError(f"image array must be HxW, HxWx1 or HxWx3 with H, W > 0, got shape {array.shape}")
    return array


def infer_channels(paths: Iterable[str | Path]) -> int:
    """1 when every image is grayscale (or colour with three equal channels), else 3: the rule that
    resolves data.channels."""
    for path in paths:
        image = read_image(path)
        if image.shape[2] == 3 and not (np.array_equal(image[..., 0], image[..., 1])
                                        and np.array_equal(image[..., 1], image[..., 2])):
            return 3
    return 1
