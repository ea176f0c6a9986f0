"""Pictures: heatmaps, overlays with regions, and the training grid. All RGB uint8 arrays."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch

from surfad.data.roi import resize_roi
from surfad.data.tiles import pad_to_tile
from surfad.utils import atomic_write_bytes

if TYPE_CHECKING:
    from surfad.verdict import Region


ROI_COLOUR = (0, 220, 0)  # the outline of a region of interest on overlays
PEAK_COLOUR = (255, 220, 0)  # the box of a region below the pixel threshold (the map's peak); others are white


def heatmap_scale(pixel_threshold: float, amap: np.ndarray) -> float:
    """The map value at the top of the heatmap colours: twice the pixel threshold, so colours mean
    the same on every image (the map's own maximum when the pixel threshold is 0)."""
    scale = 2 * pixel_threshold
    return scale if scale > 0 else float(amap.max()) or 1.0


def heatmap(amap: np.ndarray, scale: float) -> np.ndarray:
    """Colour a float HxW map; `scale` maps to the top of the colour range (e.g. 2x the pixel threshold)."""
    norm = np.clip(amap / max(scale, 1e-12), 0.0, 1.0)
    bgr = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def to_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 HxWx1 or HxWx3 -> HxWx3."""
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image


def overlay(image: np.ndarray, amap: np.ndarray, scale: float, regions: Sequence[Region] = (), alpha: float = 0.45,
            roi: np.ndarray | None = None) -> np.ndarray:
    """The image with its heatmap blended in, each region's box drawn with its index (white; yellow for the
    map's peak below the pixel threshold), and the outline of the region of interest (if any) in green."""
    return _blend(image, heatmap(amap, scale), regions, alpha, roi)


def render(image: np.ndarray, amap: np.ndarray, pixel_threshold: float, regions: Sequence[Region] = (),
           roi: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(heatmap, overlay) of one inspection at the image's size, coloured on the pixel threshold's
    scale (heatmap_scale): what predictions, the service and reports show."""
    heat = heatmap(amap, heatmap_scale(pixel_threshold, amap))
    return heat, _blend(image, heat, regions, 0.45, roi)


def _blend(image: np.ndarray, heat: np.ndarray, regions: Sequence[Region], alpha: float,
           roi: np.ndarray | None) -> np.ndarray:
    out = cv2.addWeighted(to_rgb(image), 1 - alpha, heat, alpha, 0)
    thickness = max(1, round(min(out.shape[:2]) / 200))
    if roi is not None:
        inside = resize_roi(roi, *out.shape[:2]).astype(np.uint8)
        contours, _ = cv2.findContours(inside, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, ROI_COLOUR, thickness)
    for i, region in enumerate(regions):
        x0, y0, x1, y1 = region.bbox
        colour = PEAK_COLOUR if region.below_pixel_threshold else (255, 255, 255)
        cv2.rectangle(out, (x0, y0), (x1, y1), colour, thickness)
        cv2.putText(out, str(i + 1), (x0 + 2, max(y0 - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thickness, colour, thickness)
    return out


def encode_png(rgb: np.ndarray) -> bytes:
    """RGB (or single-channel) uint8 array -> PNG bytes."""
    array = rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    ok, buffer = cv2.imencode(".png", array)
    if not ok:  # pragma: no cover - OpenCV only fails on invalid arrays
        raise ValueError("PNG encoding failed")
    return buffer.tobytes()


def write_png(path: str | Path, rgb: np.ndarray) -> None:
    atomic_write_bytes(path, encode_png(rgb))


def training_grid(model: torch.nn.Module, graph: torch.nn.Module, dataset, device: torch.device, path: Path, n: int = 8) -> None:
    """A PNG with one column per validation image: input, the model's visuals, the anomaly map."""
    picks = _spread_indices(dataset, n)
    x = torch.stack([_model_input(dataset[i], model.image_size) for i in picks]).to(device)
    graph.eval()
    with torch.inference_mode():
        visuals = model.visuals(x)
        amap, _ = graph(x)
    scale = float(amap.max()) or 1.0
    rows = [x] + list(visuals.values())
    tiles = [[to_rgb((row[i].permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255).astype(np.uint8)) for i in range(len(picks))] for row in rows]
    tiles.append([heatmap(amap[i, 0].cpu().numpy(), scale) for i in range(len(picks))])
    write_png(path, np.vstack([np.hstack(row) for row in tiles]))


def _model_input(item: dict[str, torch.Tensor], size: int) -> torch.Tensor:
    """An item's image as one model input: itself, or when tiling the tile centred on its mask (on the image
    centre when it has none); masks are at model resolution, so their centre is rescaled to the image."""
    image = item["image"]
    _, height, width = image.shape
    if height == width == size:
        return image
    mask = item["mask"][0].numpy() > 0.5
    ys, xs = np.nonzero(mask)
    centre_y, centre_x = ((ys.mean() + 0.5) / size, (xs.mean() + 0.5) / size) if len(ys) else (0.5, 0.5)
    y = int(np.clip(round(centre_y * height - size / 2), 0, max(0, height - size)))
    x = int(np.clip(round(centre_x * width - size / 2), 0, max(0, width - size)))
    padded = pad_to_tile(image.numpy(), size)
    return torch.from_numpy(np.ascontiguousarray(padded[:, y : y + size, x : x + size]))


def _spread_indices(dataset, n: int) -> list[int]:
    """Up to n indices spread over the dataset (so good and defective items both show)."""
    size = len(dataset)
    return sorted({round(i * (size - 1) / max(n - 1, 1)) for i in range(min(n, size))})
