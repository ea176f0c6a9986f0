"""Nearest good examples: which training image and place each region of an NG or REVIEW image points
to, where they show (predictions, gallery, report, service, API), what they cost, and that a run
moved without its data still shows them."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from surfad import bundle
from surfad.batch_predict import CSV, JSONL, predict_files
from surfad.config import RunConfig
from surfad.data.layouts import folder_samples
from surfad.data.splits import make_splits
from surfad.detector import Detector, fuse_runs
from surfad.detector.examples import FOLDER, INDEX_LIMIT_BYTES, MIN_DIMS, bound_index
from surfad.evaluate import evaluate_run
from surfad.export.onnx import export_onnx
from surfad.models import build_model
from surfad.models.padim.model import PaDiM
from surfad.serve.app import create_app
from surfad.training import train
from surfad.verdict import NearestGood, Region, judge

MARK = (slice(8, 32), slice(36, 60))  # rows, columns of the mark painted into one training image
MARK_BOX = [36, 8, 59, 31]  # the same, as [x0, y0, x1, y1]


def checkerboard(size: int = 24, square: int = 4) -> np.ndarray:
    """A saturated red / blue checkerboard, size x size x 3 RGB: nothing like the wood boards."""
    cells = (np.indices((size, size)) // square).sum(0) % 2
    return np.where(cells[..., None] == 1, np.array([255, 0, 0], np.uint8), np.array([0, 0, 255], np.uint8))


def read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def write_rgb(path: Path, rgb: np.ndarray) -> None:
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def fit(data: Path, out: Path, model: str, size: int = 64, keep: int = 100, **params) -> Path:
    torch.set_num_threads(1)
    config = RunConfig.from_dict({
        "model": model, "model_params": {"preset": "tiny", **params},
        "data": {"path": str(data), "image_size": size},
        "train": {"epochs": 1, "batch_size": 4, "threads": 1, "device": "cpu", "grid_every": 0,
                  "keep_train_examples": keep},
    })
    return train(config, out, progress=False)


@pytest.fixture(scope="module")
def marked(tiny_mvtec: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A copy of tiny_mvtec whose training image A (its name relative to the data folder returned) carries
    a checkerboard at MARK; no other image has one."""
    data = tmp_path_factory.mktemp("marked") / "data"
    shutil.copytree(tiny_mvtec, data)
    splits = make_splits(RunConfig.from_dict({"data": {"path": str(data)}}).data, check_test=False)
    source = splits.train[3].path
    image = read_rgb(source)
    image[MARK] = checkerboard()
    write_rgb(source, image)
    return data, source.relative_to(data).as_posix()


def test_a_patchcore_region_pasted_from_a_training_image_points_into_it_near_its_place(marked, tmp_path: Path) -> None:
    data, source = marked
    run = fit(data, tmp_path / "run", "patchcore", coreset_ratio=1.0)  # every training patch in the bank
    detector = Detector.load(run)
    image = read_rgb(sorted((data / "test" / "good").glob("*.png"))[0])
    image[40:64, 4:28] = checkerboard()  # pasted elsewhere than it was in A
    region = Region([4, 40, 27, 63], 576, 1.0, 1.0, peak=[16, 52])
    detector.explain([image], [[region]])
    good = region.nearest_good
    assert isinstance(good, NearestGood) and good.image == source
    # the region's box moved to where the checkerboard is in A, within one descriptor cell (4 px here)
    assert max(abs(a - b) for a, b in zip(good.box, MARK_BOX)) <= 4, good.box
    assert good.distance >= 0


def test_a_padim_region_points_to_a_training_image_at_the_same_place(marked, tmp_path: Path) -> None:
    data, source = marked
    detector = Detector.load(fit(data, tmp_path / "run", "padim"))
    image = read_rgb(sorted((data / "test" / "good").glob("*.png"))[0])
    image[MARK] = checkerboard()  # at the place it has in A
    at_place = Region(MARK_BOX, 576, 1.0, 1.0, peak=[48, 20])
    elsewhere = read_rgb(sorted((data / "test" / "good").glob("*.png"))[1])
    elsewhere[40:64, 4:28] = checkerboard()
    moved = Region([4, 40, 27, 63], 576, 1.0, 1.0, peak=[16, 52])
    detector.explain([image, elsewhere], [[at_place], [moved]])
    assert at_place.nearest_good.image == source
    assert max(abs(a - b) for a, b in zip(at_place.nearest_good.box, MARK_BOX)) <= 4
    # position-bound: a checkerboard at another place is compared with what is there in the training images
    assert max(abs(a - b) for a, b in zip(moved.nearest_good.box, moved.bbox)) <= 4


def test_every_region_of_an_ng_image_has_one_and_ok_images_cost_nothing(tiny_run, tiny_mvtec: Path) -> None:
    detector = Detector.load(tiny_run())
    images = sorted((tiny_mvtec / "test").rglob("*.png"))[:6]
    calls = []
    describe = detector.explainer.model.descriptors
    detector.explainer.model.descriptors = lambda x: calls.append(len(x)) or describe(x)
    try:
        passed = detector.predict_batch(images, threshold=1e9)
        assert calls == [] and all(p.verdict == "OK" and not p.regions for p in passed)
        flagged = detector.predict_batch(images, threshold=-1e9)
    finally:
        detector.explainer.model.descriptors = describe
    assert calls == [len(images)]  # one forward pass for the batch's NG images
    names = {image["name"] for image in json.loads((tiny_run() / FOLDER / "examples.json").read_text())["images"]}
    for p in flagged:
        assert p.regions and all(r.nearest_good is not None and r.nearest_good.image in names for r in p.regions)
        x0, y0, x1, y1 = p.regions[0].nearest_good.box
        assert 0 <= x0 <= x1 < 64 and 0 <= y0 <= y1 < 64


def test_an_ng_image_without_regions_shows_its_map_peak() -> None:
    amap = np.full((40, 50), 0.1, np.float32)
    amap[10:14, 30:36] = 0.4
    amap[12, 33] = 0.5
    image = np.zeros((40, 50, 3), np.uint8)
    flagged = judge(image, amap, score=2.0, threshold=1.0, pixel_threshold=0.9, min_area=4)
    (region,) = flagged.regions
    assert region.below_pixel_threshold and region.bbox == [30, 10, 35, 13] and region.peak == [33, 12]
    assert region.to_dict()["below_pixel_threshold"] is True and not flagged.mask.any()
    assert judge(image, amap, 0.5, 1.0, 0.9, 4).regions == []  # OK: nothing
    above = judge(image, amap, 2.0, 1.0, 0.3, 4).regions  # a region above the pixel threshold: no peak region
    assert len(above) == 1 and not above[0].below_pixel_threshold and "below_pixel_threshold" not in above[0].to_dict()
    roi = np.ones((40, 50), bool)
    roi[:, 25:] = False  # the peak outside the region of interest never counts
    (inside,) = judge(image, amap, 2.0, 1.0, 0.9, 4, roi=roi).regions
    assert inside.bbox[2] < 25


def test_predictions_csv_gallery_and_their_absence(tiny_run, tiny_mvtec: Path, tmp_path: Path) -> None:
    detector = Detector.load(tiny_run())
    inputs = [str(tiny_mvtec / "test")]
    flagged, passed = tmp_path / "ng", tmp_path / "ok"
    predict_files(detector, inputs, flagged, threshold=-1e9, progress=False)
    predict_files(detector, inputs, passed, threshold=1e9, progress=False)
    records = [json.loads(line) for line in (flagged / JSONL).read_text().splitlines()]
    page = (flagged / "index.html").read_text()
    rows = list(csv.DictReader((flagged / CSV).open()))
    for record, row in zip(records, rows):
        assert record["regions"] and all("nearest_good" in r for r in record["regions"])
        assert row["nearest_good"] == "; ".join(r["nearest_good"]["image"] for r in record["regions"])
        for crop in record["crops"]:
            for path in crop.values():
                assert cv2.imread(path) is not None
                assert Path(path).relative_to(flagged).as_posix() in page
    assert page.count("nearest good: ") == sum(len(r["regions"]) for r in records)
    for record in map(json.loads, (passed / JSONL).read_text().splitlines()):
        assert record["regions"] == [] and "crops" not in record
    assert "nearest good" not in (passed / "index.html").read_text()
    assert {r["nearest_good"] for r in csv.DictReader((passed / CSV).open())} == {""}


def test_keep_train_examples_0_turns_it_off(tiny_mvtec: Path, tmp_path: Path) -> None:
    run = fit(tiny_mvtec, tmp_path / "run", "unet_vae", size=32, keep=0)
    assert not (run / FOLDER).exists()
    detector = Detector.load(run)
    assert detector.explainer is None
    out = tmp_path / "out"
    predict_files(detector, [str(tiny_mvtec / "test")], out, threshold=-1e9, progress=False)
    for record in map(json.loads, (out / JSONL).read_text().splitlines()):
        assert record["regions"] and all("nearest_good" not in r for r in record["regions"]) and "crops" not in record
    assert not (out / "crops").exists()


def test_service_answers_and_page(tiny_run, tiny_mvtec: Path) -> None:
    detector = Detector.load(tiny_run(), runtime="onnx")
    detector.calibration = dataclasses.replace(detector.calibration, threshold=-1.0, review=None)
    client = TestClient(create_app(detector))
    path = sorted((tiny_mvtec / "test").rglob("*.png"))[0]
    for images in ("false", "true"):
        body = client.post(f"/predict?images={images}", files={"file": (path.name, path.read_bytes(), "image/png")}).json()
        assert body["verdict"] == "NG" and body["regions"]
        expected = detector.predict(read_rgb(path))
        assert body["regions"] == [r.to_dict() for r in expected.regions]
        assert all(set(r["nearest_good"]) == {"image", "box", "distance"} for r in body["regions"])
    crops = body["region_crops"]
    assert len(crops) == len(body["regions"]) and all(set(c) == {"region_png", "nearest_good_png"} for c in crops)
    page = client.get("/").text
    assert "nearest_good" in page and "region_crops" in page
    detector.calibration = dataclasses.replace(detector.calibration, threshold=1e9)
    body = client.post("/predict?images=true", files={"file": (path.name, path.read_bytes(), "image/png")}).json()
    assert body["verdict"] == "OK" and body["regions"] == [] and body["region_crops"] == []


@pytest.mark.parametrize("model", ["padim", "patchcore"])
@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_feature_models_explain_from_the_inspection_pass(tiny_run, tiny_mvtec: Path, model: str, runtime: str,
                                                         tmp_path: Path) -> None:
    """padim and patchcore describe regions with the features their scoring pass computed (the ONNX
    graph outputs them), so an explained image costs no pass of the explainer's own, alone or fused;
    the answer is the one its own pass gives."""
    images = [read_rgb(p) for p in sorted((tiny_mvtec / "test").rglob("*.png"))]
    fused = Detector.load(fuse_runs([tiny_run(model), tiny_run("unet_vae")], tmp_path / "fused"), runtime=runtime)
    detector = Detector.load(tiny_run(model), runtime=runtime)
    passes = []
    for explainer in (detector.explainer, fused.explainer):
        own_pass = explainer.queries
        explainer.queries = lambda *args, own_pass=own_pass: passes.append(len(args[0])) or own_pass(*args)
    shared = detector.predict_batch(images, threshold=-1e9)
    assert all(r.nearest_good for p in fused.predict_batch(images, threshold=-1e9) for r in p.regions)
    assert passes == [] and all(p.regions and all(r.nearest_good for r in p.regions) for p in shared)
    separate = [[dataclasses.replace(r, nearest_good=None) for r in p.regions] for p in shared]
    detector.explain(images, separate)  # the explainer's own pass
    assert passes == [len(images)]
    for p, regions in zip(shared, separate):
        assert [r.nearest_good.image for r in p.regions] == [r.nearest_good.image for r in regions]
        assert [r.nearest_good.box for r in p.regions] == [r.nearest_good.box for r in regions]
        assert [r.nearest_good.distance for r in p.regions] == pytest.approx(
            [r.nearest_good.distance for r in regions], rel=1e-4, abs=1e-4)


def test_an_export_without_descriptors_still_explains(tiny_run, tiny_mvtec: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A model.onnx exported before the graph gave the descriptors: the explainer makes its own pass."""
    run = Path(shutil.copytree(tiny_run("padim"), tmp_path / "run"))
    with monkeypatch.context() as patched:
        patched.setattr(PaDiM, "descriptors_from_features", False)
        export_onnx(run)
    detector = Detector.load(run, runtime="onnx")
    assert detector.describe_fn is None
    images = [read_rgb(p) for p in sorted((tiny_mvtec / "test").rglob("*.png"))[:4]]
    expected = Detector.load(tiny_run("padim"), runtime="onnx").predict_batch(images, threshold=-1e9)
    for got, want in zip(detector.predict_batch(images, threshold=-1e9), expected):
        assert [r.nearest_good.image for r in got.regions] == [r.nearest_good.image for r in want.regions]
        assert [r.nearest_good.box for r in got.regions] == [r.nearest_good.box for r in want.regions]


@pytest.mark.parametrize("model", ["unet_vae", "padim", "patchcore"])
def test_both_runtimes_give_the_same_nearest_good(tiny_run, tiny_mvtec: Path, model: str) -> None:
    images = sorted((tiny_mvtec / "test").rglob("*.png"))
    answers = [[[r.to_dict() for r in p.regions] for p in Detector.load(tiny_run(model), runtime=runtime)
                .predict_batch(images, threshold=-1e9)] for runtime in ("torch", "onnx")]
    for a, b in zip(*answers):
        assert [r["nearest_good"]["image"] for r in a] == [r["nearest_good"]["image"] for r in b]
        assert [r["nearest_good"]["box"] for r in a] == [r["nearest_good"]["box"] for r in b]
        assert [r["nearest_good"]["distance"] for r in a] == pytest.approx([r["nearest_good"]["distance"] for r in b],
                                                                            rel=1e-4, abs=1e-5)


def test_a_run_moved_without_its_data_still_shows_the_crops(tiny_mvtec: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_mvtec, data)
    inspected = tmp_path / "inspected"
    shutil.copytree(tiny_mvtec / "test", inspected)
    run = fit(data, tmp_path / "run", "padim", size=32)
    moved = tmp_path / "elsewhere" / "run"
    shutil.move(run, moved)
    shutil.rmtree(data)  # the training images are gone
    detector = Detector.load(moved)
    out = tmp_path / "out"
    predict_files(detector, [str(inspected)], out, threshold=-1e9, progress=False)
    records = [json.loads(line) for line in (out / JSONL).read_text().splitlines()]
    assert records and all(record["crops"] for record in records)
    good = cv2.imread(records[0]["crops"][0]["nearest_good"])
    region = records[0]["regions"][0]["nearest_good"]
    assert good is not None and good.std() > 0  # a real crop of the kept copy, not a blank
    assert region["image"].startswith("train/good/")
    samples = folder_samples(inspected / "good", inspected / "crack")
    evaluate_run(moved, split="folders", samples=samples, out=tmp_path / "eval")
    report = (tmp_path / "eval" / "report.html").read_text()
    assert report.count("nearest good: ") >= len(samples)  # every worst case: its regions, or its map's peak


def test_the_index_is_bounded() -> None:
    descriptors = torch.randn(40, 64, 16, 16)
    owner, offset = torch.arange(40), torch.zeros(40, 2, dtype=torch.long)
    same = bound_index(descriptors, owner, offset)
    assert same[0] is descriptors and same[3] is None  # 1.3 MB: as it is
    limit = 40 * 16 * 16 * 2 * 16
    projected, kept_owner, _, projection = bound_index(descriptors, owner, offset, limit=limit)
    assert projected.shape == (40, 16, 16, 16) and projection.shape == (64, 16) and kept_owner.equal(owner)
    fewer, fewer_owner, _, _ = bound_index(descriptors, owner, offset, limit=limit // 8)
    assert fewer.shape[1] == MIN_DIMS and 2 * fewer[0].numel() * len(fewer) <= limit // 8
    assert fewer_owner[0] == 0 and fewer_owner[-1] == 39  # evenly spaced tiles
    assert INDEX_LIMIT_BYTES >= 100 * 100 * 28 * 28 * 2  # padim's default on magnetic tile fits unprojected


def test_patchcore_records_where_each_bank_patch_comes_from(tmp_path: Path) -> None:
    model = build_model("patchcore", {"preset": "tiny"}, 3, 32)
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model.fit_features(torch.cat([model.extract(x[i : i + 2]) for i in range(0, 6, 2)]), progress=False)
    bank, origin = model.example_bank()
    described = model.descriptors(x)
    side = described.shape[-1]
    for k in range(len(bank)):
        item, position = origin[k].tolist()
        assert torch.allclose(described[item, :, position // side, position % side], bank[k], atol=1e-5)
    path = tmp_path / "weights.safetensors"
    bundle.save_weights(model, path)
    again = build_model("patchcore", {"preset": "tiny"}, 3, 32)
    bundle.load_weights(again, path)
    assert again.example_bank()[1].equal(origin)
    from safetensors.torch import save_file  # weights fitted before origins were recorded still load
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if k != "bank_origin"}, str(path))
    old = build_model("patchcore", {"preset": "tiny"}, 3, 32)
    bundle.load_weights(old, path)
    assert old.example_bank() is None and old.bank.equal(model.bank)


def test_patchcore_keeps_the_images_that_gave_most_bank_patches_and_searches_those_only(tiny_mvtec: Path,
                                                                                       tmp_path: Path) -> None:
    run = fit(tiny_mvtec, tmp_path / "run", "patchcore", size=32, keep=2)
    detector = Detector.load(run)
    kept = [image["name"] for image in json.loads((run / FOLDER / "examples.json").read_text())["images"]]
    _, origin = detector.explainer.model.example_bank()
    contributed = np.bincount(origin[:, 0].numpy(), minlength=10)
    train = [Path(s["path"]).relative_to(tiny_mvtec).as_posix()
             for s in json.loads((run / "splits.json").read_text())["train"]]
    assert sorted(kept) == sorted(train[i] for i in np.argsort(-contributed, kind="stable")[:2])
    for prediction in detector.predict_batch(sorted((tiny_mvtec / "test").rglob("*.png")), threshold=-1e9):
        assert all(region.nearest_good.image in kept for region in prediction.regions)


def test_grayscale_runs_show_the_crops(tiny_gray: Path, tmp_path: Path) -> None:
    detector = Detector.load(fit(tiny_gray, tmp_path / "run", "padim", size=32))
    out = tmp_path / "out"
    predict_files(detector, [str(tiny_gray / "test")], out, threshold=-1e9, progress=False)
    record = json.loads((out / JSONL).read_text().splitlines()[0])
    for path in record["crops"][0].values():
        assert cv2.imread(path, cv2.IMREAD_UNCHANGED).shape[2] == 3
