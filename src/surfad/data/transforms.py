"""Preprocessing shared by training, the torch runtime and the ONNX runtime.

One rule, documented once: the image is converted to the model's channel count, resized to
image_size x image_size (area interpolation when shrinking, bilinear when enlarging), scaled to
[0, 1] float32 and laid out channel-first. Any further normalisation lives inside the model, so an
exported graph takes exactly this tensor.
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


def preprocess(image: np.ndarray, image_size: int, channels: int) -> np.ndarray:
    """uint8 HxWxC image -> float32 CxSxS in [0, 1], the model's input."""
    image = convert_channels(image, channels)
    resized = resize_image(image, image_size)
    return np.ascontiguousarray(resized.transpose(2, 0, 1), dtype=np.float32) / 255.0


def resize_map(anomaly_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a float HxW anomaly map back to an original image size (bilinear)."""
    return cv2.resize(anomaly_map.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
