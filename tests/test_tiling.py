"""Tiling mode (data.tile_scale > 0): geometry, stitched scoring, training tiles, and the whole path
(train, calibrate, evaluate, predict, ONNX export) on images of assorted sizes and aspect ratios."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from surfad.cli import main
from surfad.config import ScoreConfig
from surfad.data.dataset import ImageDataset, TileDataset
from surfad.data.defects import DefectSynthesizer, synthetic_defect
from surfad.data.samples import Sample
from surfad.data.synthetic_wood import add_defect, wood_texture
from surfad.data.tiles import cut_tiles, pad_to_tile, random_tile, stitch, tile_starts
from surfad.data.transforms import preprocess
from surfad.detector import Detector
from surfad.scoring import ImageScorer, score_images, tiled_score_fn

TILE_MODEL = ["--model", "recondiff", "--param", "base_width=4", "--param", "rec_depth=3", "--param", "seg_base_width=2",
              "--param", "seg_depth=3", "--param", "n_prototypes=4"]
# (height, width) crops of a 160 px texture: portrait, landscape, square, and smaller than a tile at scale 0.5
SHAPES = [(150, 100), (90, 140), (120, 120), (100, 110), (140, 60), (50, 70)]


@pytest.mark.parametrize("length,stride", [(32, 24), (33, 24), (100, 24), (100, 32), (20, 24)])
def test_tile_starts_cover_the_length_and_end_flush(length: int, stride: int):
    starts = tile_starts(length, 32, stride)
    assert starts[0] == 0
    assert starts[-1] == max(0, length - 32)  # the last tile ends at the edge
    assert all(0 < b - a <= stride for a, b in itertools.pairwise(starts))


@pytest.mark.parametrize("shape", [(1, 70, 45), (3, 32, 32), (1, 20, 90), (3, 5, 3)])
def test_cut_and_stitch_give_back_the_image(shape: tuple[int, int, int]):
    """Stitching each tile's own pixels reproduces the image exactly, padding cropped away."""
    image = np.random.default_rng(0).random(shape, dtype=np.float32)
    tiles, starts, padded = cut_tiles(image, 32, 24)
    assert tiles.shape[1:] == (shape[0], 32, 32) and padded[0] >= 32 and padded[1] >= 32
    np.testing.assert_allclose(stitch(tiles[:, 0], starts, padded, shape[1:]), image[0], atol=1e-6)


def test_padding_mirrors_small_images_and_random_tiles_lie_inside():
    image = np.arange(2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5)
    padded = pad_to_tile(image, 8)
    assert padded.shape == (2, 8, 8)
    np.testing.assert_array_equal(padded[:, :3, :5], image)
    np.testing.assert_array_equal(padded[:, 3, :5], image[:, 1])  # reflected about the last row
    big = np.random.default_rng(1).random((1, 50, 40), dtype=np.float32)
    rng = np.random.default_rng(2)
    for _ in range(20):
        tile = random_tile(big, 16, rng)
        hits = [(y, x) for y in range(35) for x in range(25) if np.array_equal(big[:, y : y + 16, x : x + 16], tile)]
        assert len(hits) == 1


def test_preprocess_with_a_tile_scale_keeps_the_aspect_ratio():
    image = np.full((300, 120, 3), 200, np.uint8)
    assert preprocess(image, 64, 1, tile_scale=0.5).shape == (1, 150, 60)
    assert preprocess(image, 64, 3, tile_scale=1.0).shape == (3, 300, 120)
    assert preprocess(image, 64, 1).shape == (1, 64, 64)  # squashed without a tile scale


def test_tiled_score_is_the_score_rule_on_the_stitched_map():
    """With a 'model' whose map is its input, the stitched map is the image and the score is the
    rule (pooling, top-k) applied to the whole image at once."""
    calls = []

    def identity(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert batch.shape[1:] == (1, 32, 32)
        calls.append(len(batch))
        return batch[:, 0].copy(), np.zeros(len(batch), np.float32)

    rule = ScoreConfig(reduce="topk", pool=5, topk=7)
    score = tiled_score_fn(identity, rule, tile=32, stride=20)
    images = np.random.default_rng(3).random((2, 1, 75, 50), dtype=np.float32)
    maps, scores = score(images)
    np.testing.assert_allclose(maps, images[:, 0], atol=1e-6)
    with torch.inference_mode():
        _, expected = ImageScorer(rule)(torch.from_numpy(images))
    np.testing.assert_allclose(scores, expected.numpy(), rtol=1e-5)
    assert calls == [2 * 4 * 2]  # 4 x 2 tiles per image, both images' tiles in one pass


def test_score_images_batches_only_equal_shapes():
    seen = []

    def fake(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        seen.append(batch.shape)
        return batch[:, 0], batch.mean(axis=(1, 2, 3))

    images = [np.ones((1, 4, 6), np.float32), np.ones((1, 4, 6), np.float32) * 2, np.ones((1, 5, 5), np.float32)]
    maps, scores = score_images(fake, images)
    assert seen == [(2, 1, 4, 6), (1, 1, 5, 5)]
    assert [m.shape for m in maps] == [(4, 6), (4, 6), (5, 5)]
    np.testing.assert_allclose(scores, [1, 2, 1])


@pytest.fixture(scope="module")
def odd_sized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MVTec-layout dataset of wood crops in the sizes of SHAPES: 12 training, 6 good and 6 defective test images."""
    root = tmp_path_factory.mktemp("odd_sized") / "wood"
    rng = np.random.default_rng(0)

    def write(rel: str, array: np.ndarray) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), array)

    for i in range(12):
        h, w = SHAPES[i % len(SHAPES)]
        write(f"train/good/{i:03d}.png", wood_texture(rng, 160)[:h, :w].round().astype(np.uint8)[:, :, ::-1])
    for i in range(6):
        h, w = SHAPES[i]
        write(f"test/good/{i:03d}.png", wood_texture(rng, 160)[:h, :w].round().astype(np.uint8)[:, :, ::-1])
        image, mask = add_defect(wood_texture(rng, 160), "knot", rng)
        y, x = max(0, min(160 - h, int(np.argwhere(mask)[:, 0].mean()) - h // 2)), max(0, min(160 - w, int(np.argwhere(mask)[:, 1].mean()) - w // 2))
        write(f"test/knot/{i:03d}.png", image[y : y + h, x : x + w].round().astype(np.uint8)[:, :, ::-1])
        write(f"ground_truth/knot/{i:03d}_mask.png", mask[y : y + h, x : x + w].astype(np.uint8) * 255)
    return root


def test_training_tiles_are_new_each_epoch_and_reproducible(odd_sized: Path):
    samples = [Sample(p, 0) for p in sorted((odd_sized / "train" / "good").glob("*.png"))]
    images = ImageDataset(samples, 32, 3, tile_scale=0.5)
    tiles = TileDataset(images, tiles_per_image=2, seed=0)
    assert len(tiles) == 24
    first = [tiles[i]["image"] for i in range(len(tiles))]
    assert all(t.shape == (3, 32, 32) for t in first)
    assert images[0]["image"].shape == (3, 75, 50)  # the whole image, scaled by 0.5
    tiles.set_epoch(1)
    second = [tiles[i]["image"] for i in range(len(tiles))]
    assert sum(not torch.equal(a, b) for a, b in zip(first, second)) > len(tiles) // 2
    tiles.set_epoch(0)
    assert all(torch.equal(a, tiles[i]["image"]) for i, a in enumerate(first))


@pytest.mark.parametrize("shape", [(3, 75, 50), (1, 25, 35), (3, 32, 32)])
def test_synthetic_validation_defect_on_a_whole_image(shape: tuple[int, int, int]):
    image = np.random.default_rng(4).random(shape, dtype=np.float32)
    synthesizer = DefectSynthesizer("procedural", image_size=32, seed=0)
    out, mask = synthetic_defect(image, synthesizer, np.random.default_rng(5))
    assert out.shape == image.shape and mask.shape == shape[1:] and mask.any()
    np.testing.assert_array_equal(out[:, ~mask], image[:, ~mask])  # only the defect's pixels change


@pytest.fixture(scope="module")
def tiled_run(odd_sized: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("tiled") / "run"
    args = ["train", "--data", str(odd_sized), "--image-size", "32", "--tile-scale", "0.5", "--tiles-per-image", "2",
            "--epochs", "2", "--batch-size", "4", "--threads", "1", "--select-after", "0", "--out", str(run),
            "--quiet", *TILE_MODEL]
    assert main(args) == 0
    return run


def test_tiled_run_trains_validates_and_saves_its_tiling(tiled_run: Path):
    config = yaml.safe_load((tiled_run / "config.yaml").read_text())
    assert config["data"]["tile_scale"] == 0.5 and config["data"]["tiles_per_image"] == 2
    history = (tiled_run / "history.csv").read_text().splitlines()
    assert len(history) == 3 and "val_auroc" in history[0] and "val_aupro" in history[0]
    grid = cv2.imread(str(next((tiled_run / "grids").glob("*.png"))))
    assert grid.shape[0] % 32 == 0 and grid.shape[1] % 32 == 0  # grids show model-sized tiles


def test_tiled_run_evaluates_and_predicts_at_the_original_size(tiled_run: Path, odd_sized: Path, tmp_path: Path):
    assert main(["calibrate", str(tiled_run), "--split", "test", "--strategy", "youden"]) == 0
    out = tmp_path / "eval"
    assert main(["evaluate", str(tiled_run), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_images"] == 12 and {"image_auroc", "pixel_auroc", "aupro"} <= set(metrics)

    detector = Detector.load(tiled_run)
    paths = sorted((odd_sized / "test").rglob("*.png"))
    results = detector.predict_batch(paths)  # mixed sizes in one call
    for path, result in zip(paths, results):
        h, w = cv2.imread(str(path)).shape[:2]
        assert result.anomaly_map.shape == (h, w) and result.mask.shape == (h, w)
        assert result.score == pytest.approx(detector.predict(path).score, rel=1e-5)
    assert detector.info()["tile_scale"] == 0.5


def test_tiled_export_agrees_with_torch(tiled_run: Path, odd_sized: Path):
    assert main(["export", str(tiled_run), "--format", "onnx"]) == 0
    record = json.loads((tiled_run / "export.json").read_text())
    assert record["tiling"]["scale"] == 0.5 and record["tiling"]["tile"] == 32 and record["tiling"]["stride"] == 24
    assert record["input"]["shape"] == ["batch", 3, 32, 32]
    paths = sorted((odd_sized / "test").rglob("*.png"))
    torch_results = Detector.load(tiled_run).predict_batch(paths)
    onnx_results = Detector.load(tiled_run, runtime="onnx").predict_batch(paths)
    for a, b in zip(torch_results, onnx_results):
        assert abs(a.score - b.score) <= 1e-4 and np.abs(a.anomaly_map - b.anomaly_map).max() <= 1e-4
        assert a.verdict == b.verdict


@pytest.mark.parametrize("flags", [["--tile-scale", "-1"], ["--tile-scale", "0.5", "--tile-stride", "40"],
                                   ["--tile-scale", "0.5", "--tiles-per-image", "0"]])
def test_bad_tile_settings_are_clear_errors(odd_sized: Path, tmp_path: Path, capsys, flags: list[str]):
    args = ["train", "--data", str(odd_sized), "--image-size", "32", "--epochs", "1", "--out", str(tmp_path / "r"),
            "--quiet", *TILE_MODEL, *flags]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "tile" in err and "Traceback" not in err


def test_service_inspects_with_the_tiled_model(tiled_run: Path, odd_sized: Path):
    from fastapi.testclient import TestClient

    from surfad.serve.app import create_app

    detector = Detector.load(tiled_run)
    client = TestClient(create_app(detector))
    assert client.get("/model").json()["tile_scale"] == 0.5
    path = min((odd_sized / "test" / "knot").glob("*.png"))
    reply = client.post("/predict", files={"file": (path.name, path.read_bytes(), "image/png")}).json()
    assert reply["score"] == pytest.approx(detector.predict(path).score, rel=1e-5)
