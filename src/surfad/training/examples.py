"""The training images a run keeps to explain its verdicts (RUN/examples, see surfad.detector.examples):
chosen, copied and described at the end of training, with the shipped weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from surfad.config import RunConfig
from surfad.data.dataset import GridTileDataset, ImageDataset
from surfad.data.io import image_header
from surfad.data.samples import Sample
from surfad.data.splits import Splits
from surfad.data.tiles import cut_tiles, default_stride
from surfad.detector.examples import (
    FOLDER,
    ExampleIndex,
    KeptImage,
    bound_index,
    evenly_spaced,
    write_examples,
)
from surfad.errors import SurfadError
from surfad.models import IMAGE_LAYOUT, AnomalyModel
from surfad.training.setup import Training


def keep_examples(out: Path, config: RunConfig, splits: Splits, t: Training) -> int:
    """Keep train.keep_train_examples training images in out/examples (none with 0); returns how many.

    Which: for a model with a memory bank (patchcore), the images that gave it the most patches, since
    explanations search the bank patches of kept images only; for the others, images evenly spaced over
    the training list. Every image is kept when there are fewer."""
    wanted = config.train.keep_train_examples
    if wanted == 0:
        return 0
    model = t.model.eval()
    images = base_images(t.train_images)
    items = fit_inputs(t.train_images, len(images))  # (image, y, x) of each input the model was fitted on
    bank = model.example_bank()
    if bank is not None:
        contributed = np.bincount(np.array([items[i][0] for i in bank[1][:, 0].tolist()]), minlength=len(images))
        chosen = sorted(np.argsort(-contributed, kind="stable")[:wanted].tolist())
    else:
        chosen = evenly_spaced(len(images), wanted)
    copies = [images.load(i)[0] for i in chosen]
    kept = [kept_image(images.samples[i], Path(splits.root), f"{k:04d}.png", copy) for k, (i, copy) in
            enumerate(zip(chosen, copies))]
    tile = config.data.input_size
    grid = descriptor_grid(model, copies[0], tile, t.device)
    if bank is not None:
        slot = {image: k for k, image in enumerate(chosen)}
        owner = torch.tensor([slot.get(image, -1) for image, _, _ in items])
        offset = torch.tensor([[y, x] for _, y, x in items])
        index = ExampleIndex("bank", False, owner, offset)
    else:
        index = descriptor_index(model, copies, config, t.device, t.batch_size)
    write_examples(out, kept, copies, index, grid)
    size = sum(f.stat().st_size for f in (out / FOLDER).iterdir() if f.is_file())
    print(f"kept {len(kept)} training images for the nearest good examples ({out / FOLDER}, {size / 2**20:.1f} MiB)")
    return len(kept)


def base_images(train_images: Dataset) -> ImageDataset:
    """The ImageDataset of the good training images under what training iterated (tiles of them)."""
    images = getattr(train_images, "images", train_images)
    assert isinstance(images, ImageDataset)
    return images


def fit_inputs(train_images: Dataset, n_images: int) -> list[tuple[int, int, int]]:
    """(image, y, x) of every input a fitted model saw, in its order: each inference tile of each image
    when tiling (GridTileDataset), else each whole image."""
    if isinstance(train_images, GridTileDataset):
        return list(train_images.index)
    return [(i, 0, 0) for i in range(n_images)]


def kept_image(sample: Sample, root: Path, file: str, copy: np.ndarray) -> KeptImage:
    """The record of one kept image: its name relative to the data folder (its path where it lies
    elsewhere) and its original size, read from the file's header."""
    try:
        name = sample.path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        name = str(sample.path)
    header = image_header(sample.path.read_bytes(), str(sample.path))
    if header is None:
        raise SurfadError(f"{sample.path}: cannot read its size to keep it as a training example")
    _, width, height = header
    return KeptImage(name, width, height, file, int(copy.shape[2]), int(copy.shape[1]))


def descriptor_grid(model: AnomalyModel, copy: np.ndarray, tile: int, device: torch.device) -> tuple[int, int]:
    """The (rows, columns) of the model's descriptors on one input."""
    x = torch.from_numpy(cut_tiles(copy, tile, tile)[0][:1].astype(np.float32) / 255.0)
    with torch.inference_mode():
        rows, columns = model.descriptors(x.to(device, memory_format=IMAGE_LAYOUT)).shape[-2:]
    return int(rows), int(columns)


def descriptor_index(model: AnomalyModel, copies: list[np.ndarray], config: RunConfig, device: torch.device,
                     batch_size: int) -> ExampleIndex:
    """The descriptors of the kept copies at every cell: each whole copy when squashing (searched at the
    same place), each inference tile of it when tiling (searched everywhere)."""
    tile = config.data.input_size
    tiled = config.data.tile_scale > 0
    stride = default_stride(tile, config.data.tile_stride) if tiled else tile
    inputs, owner, offset = [], [], []
    for k, copy in enumerate(copies):
        tiles, starts, _ = cut_tiles(copy, tile, stride)
        inputs += list(tiles)
        owner += [k] * len(starts)
        offset += [list(start) for start in starts]
    parts = []
    with torch.inference_mode():
        for start in range(0, len(inputs), batch_size):
            x = torch.from_numpy(np.stack(inputs[start : start + batch_size]).astype(np.float32) / 255.0)
            parts.append(model.descriptors(x.to(device, memory_format=IMAGE_LAYOUT)).float().cpu())
    descriptors, owners, offsets, projection = bound_index(torch.cat(parts), torch.tensor(owner), torch.tensor(offset))
    return ExampleIndex("grid", not tiled, owners, offsets, descriptors, projection)
