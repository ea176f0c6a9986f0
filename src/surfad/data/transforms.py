"""Preprocessing shared by training, the torch runtime and the ONNX runtime.

One rule, documented once: the image is converted to the model's channel count, resized (area
interpolation when shrinking, bilinear when enlarging), scaled to [0, 1] float32 and laid out
channel-first. Resized means squashed to image_size x image_size, or, with a tile scale > 0,
scaled by that factor with its aspect ratio kept (the model then sees image_size tiles of it, see
surfad.data.tiles). Any further normalisation lives inside the model, so an exported graph takes
exactly these tensors (tiles of them when tiling).
"""

from __future__ import annotations

import cv2
import numpy as np

from surfad.data.io import convert_channels


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8/float HxWxC to size x size, keeping the channel axis."""
    h, w = image.shape[:2]
    interpolation = cv2.INTER_AREA if size < min(h, w) else cv2.INTER_LINEAR
    out = cv2.resize(image, (size, size), interpolation=interpolation)
    return out.reshape(size, size, image.shape[2])


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Resize a bool HxW mask to size x size with nearest-neighbour (labels stay binary)."""
    out = cv2.resize(mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
    return out.astype(bool)


def rescale_image(image: np.ndarray, scale: float) -> np.ndarray:
    """Resize uint8/float HxWxC by `scale` (each side rounded, at least 1 pixel), keeping the channel axis."""
    h, w, c = image.shape
    if scale == 1.0:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    out = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    return out.reshape(size[1], size[0], c)


def preprocess(image: np.ndarray, image_size: int, channels: int, tile_scale: float = 0.0) -> np.ndarray:
    """uint8 HxWxC image -> float32 in [0, 1]: CxSxS (squashed), or Cxh'xw' scaled by tile_scale when > 0."""
    image = convert_channels(image, channels)
    resized = rescale_image(image, tile_scale) if tile_scale > 0 else resize_image(image, image_size)
    return np.ascontiguousarray(resized.transpose(2, 0, 1), dtype=np.float32) / 255.0


def resize_map(anomaly_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a float HxW anomaly map back to an original image size (bilinear)."""
    return cv2.resize(anomaly_map.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
