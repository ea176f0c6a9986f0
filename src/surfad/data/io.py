"""Reading images and masks from disk, with errors that name the file and the problem."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from surfad.errors import BadInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
LOSSY_SUFFIXES = (".jpg", ".jpeg", ".webp")


def decode_image(data: bytes, channels: int | None = None, name: str = "<upload>") -> np.ndarray:
    """Decode encoded image bytes to uint8 HxWxC (C = 1 or 3, RGB order).

    channels=None keeps the file's own (1 for grayscale, 3 for colour); 1 or 3 converts.
    16-bit images are scaled to 8 bits; an alpha channel is dropped.
    """
    if not data:
        raise BadInputError(f"{name}: empty file")
    buffer = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
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
