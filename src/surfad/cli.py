"""Command line: parses arguments and calls the library; every verb is also a Python call."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from surfad import __version__
from surfad.config import LAYOUTS
from surfad.errors import SurfadError

# train flag -> (config section, field); a YAML config uses the same sections and field names.
TRAIN_FLAGS = {
    "data": ("data", "path"),
    "layout": ("data", "layout"),
    "image_size": ("data", "image_size"),
    "tile_scale": ("data", "tile_scale"),
    "tile_stride": ("data", "tile_stride"),
    "tiles_per_image": ("data", "tiles_per_image"),
    "channels": ("data", "channels"),
    "train_list": ("data", "train_list"),
    "val_ratio": ("data", "val_ratio"),
    "good_dir": ("data", "good_dir"),
    "defect_dir": ("data", "defect_dir"),
    "mask_dir": ("data", "mask_dir"),
    "val_good_dir": ("data", "val_good_dir"),
    "val_defect_dir": ("data", "val_defect_dir"),
    "skip_bad": ("data", "skip_bad"),
    "epochs": ("train", "epochs"),
    "batch_size": ("train", "batch_size"),
    "lr": ("train", "lr"),
    "seed": ("train", "seed"),
    "threads": ("train", "threads"),
    "device": ("train", "device"),
    "val_every": ("train", "val_every"),
    "select_after": ("train", "select_after"),
    "val_defect_source": ("train", "val_defect_source"),
    "time_budget": ("train", "time_budget_min"),
    "patience": ("train", "patience"),
    "ema_decay": ("train", "ema_decay"),
}


def parse_param(text: str) -> tuple[str, Any]:
    """`name=value` with a YAML value (numbers, booleans, lists like [8,16])."""
    if "=" not in text:
        raise SurfadError(f"--param {text!r}: expected name=value, e.g. --param beta=0.01")
    name, value = text.split("=", 1)
    return name.strip(), yaml.safe_load(value)


def build_run_config(args: argparse.Namespace):
    """Defaults <- YAML file (--config) <- command-line flags."""
    from surfad.config import RunConfig, load_yaml

    raw: dict[str, Any] = load_yaml(args.config) if args.config else {}
    if args.model:
        raw["model"] = args.model
    for flag, (section, name) in TRAIN_FLAGS.items():
        value = getattr(args, flag)
        if value is not None and value is not False:
            raw.setdefault(section, {})[name] = value
    params = raw.setdefault("model_params", {})
    if args.preset:
        params["preset"] = args.preset
    for item in args.param or []:
        key, value = parse_param(item)
        params[key] = value
    model = raw.get("model", RunConfig.model)
    for dest, value in vars(args).items():
        if dest.startswith(MODEL_FLAG) and value is not None:
            owner, field, flag = dest[len(MODEL_FLAG):].split(":")
            if owner != model:
                raise SurfadError(f"--{flag} is an option of model {owner}, but this run trains {model}")
            params[field] = value
    config = RunConfig.from_dict(raw)
    if not config.data.path:
        raise SurfadError("no dataset: give --data PATH (or data.path in the --config file)")
    return config


def cmd_synth(args: argparse.Namespace) -> None:
    from surfad.data.synth import write_synthetic_dataset

    root = write_synthetic_dataset(Path(args.out), seed=args.seed, size=args.size, n_train=args.n_train,
                                   n_test_good=args.n_test_good, n_test_defect=args.n_test_defect,
                                   n_val_good=args.n_val_good, n_val_defect=args.n_val_defect, progress=True)
    print(f"synthetic dataset written to {root}")


def cmd_train(args: argparse.Namespace) -> None:
    from surfad.categories import train_categories
    from surfad.config import RunConfig
    from surfad.train import train

    if args.dry_run:
        from surfad.plan import plan_runs, plans_report

        if args.resume or args.step:
            raise SurfadError("--dry-run checks new runs: drop --resume and --step")
        categories = [c.strip() for c in (args.category or "").split(",") if c.strip()]
        print(plans_report(plan_runs(build_run_config(args), categories, progress=not args.quiet)))
        return
    if args.step not in (0, -1):
        raise SurfadError(f"--step {args.step}: only -1 (resume from the last checkpoint) or 0 (start) are kept")
    resume = args.resume or args.step == -1
    if not (args.out or args.tag):
        raise SurfadError("give --out RUN (or --tag NAME for runs/NAME)")
    out = Path(args.out) if args.out else Path("runs") / args.tag
    config = RunConfig() if resume else build_run_config(args)
    if args.category:
        table = train_categories(config, [c.strip() for c in args.category.split(",") if c.strip()], out,
                                 resume=resume, progress=not args.quiet)
        print(f"summary: {table}")
        return
    run = train(config, out, resume=resume, progress=not args.quiet)
    print(f"run folder: {run}")


def image_set(args: argparse.Namespace, default_split: str) -> tuple[str, Any]:
    """(name, samples) from --good/--defect folders, or (split, None) for a split of the dataset."""
    from surfad.data.layouts import folder_samples

    if not (args.good or args.defect):
        return args.split or default_split, None
    if args.data or args.split or args.layout:
        raise SurfadError("--good/--defect replace the dataset: drop --data, --layout and --split")
    named = [f"{kind} {folder}" for kind, folder in (("good", args.good), ("defect", args.defect)) if folder]
    return "folders: " + ", ".join(named), folder_samples(args.good, args.defect)


def cmd_calibrate(args: argparse.Namespace) -> None:
    from surfad.evaluate import calibrate_run

    split, samples = image_set(args, "val")
    c = calibrate_run(args.run, data=args.data, split=split, strategy=args.strategy, layout=args.layout,
                      checkpoint=args.checkpoint, progress=not args.quiet, samples=samples)
    print(f"threshold {c.threshold:.6g} ({c.strategy} on {c.split}: {c.n_good} good, {c.n_defect} defective); "
          f"pixel threshold {c.pixel_threshold:.6g}; saved in {Path(args.run) / 'calibration.json'}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from surfad.evaluate import evaluate_run, summary_line

    split, samples = image_set(args, "test")
    out = Path(args.out) if args.out else Path(args.run) / f"eval_{'folders' if samples else split}"
    metrics = evaluate_run(args.run, data=args.data, split=split, out=out, runtime=args.runtime, layout=args.layout,
                           checkpoint=args.checkpoint, progress=not args.quiet, samples=samples)
    print(summary_line(metrics))
    print(f"report: {out / 'report.html'}")


def cmd_predict(args: argparse.Namespace) -> None:
    from surfad.inference import Detector
    from surfad.predict import predict_files

    detector = Detector.load(args.run, runtime=args.runtime, min_area=args.min_area, checkpoint=args.checkpoint)
    out = Path(args.out) if args.out else Path(args.run) / "predictions"
    counts = predict_files(detector, args.inputs, out, threshold=args.threshold, batch_size=args.batch_size,
                           progress=not args.quiet, sort_into=args.sort_into)
    print(f"{counts['done']} predicted ({counts['ng']} NG), {counts['already_done']} already done, "
          f"{counts['failed']} unreadable; results in {out / 'predictions.jsonl'}")


def cmd_export(args: argparse.Namespace) -> None:
    from surfad.ensemble import model_runs
    from surfad.export.onnx import EXPORT_JSON, export_onnx

    for run in model_runs(args.run):  # a fused detector: each member's own model.onnx
        path = export_onnx(run, opset=args.opset)
        parity = json.loads((run / EXPORT_JSON).read_text())["parity"]
        print(f"exported {path} (opset {args.opset}); torch vs onnxruntime max abs diff: map "
              f"{parity['max_abs_diff_map']:.2g}, score {parity['max_abs_diff_score']:.2g} "
              f"({parity['random_inputs']} random + {parity['val_images']} val images)")


def cmd_fuse(args: argparse.Namespace) -> None:
    from surfad.ensemble import fuse_runs

    out = fuse_runs(args.runs, args.out, strategy=args.strategy, progress=not args.quiet)
    print(f"fused {len(args.runs)} runs into {out} (standardised and calibrated on their validation split)")


def cmd_info(args: argparse.Namespace) -> None:
    from surfad.inference import describe

    print(json.dumps(describe(args.run), indent=2))


def cmd_serve(args: argparse.Namespace) -> None:
    import os

    from surfad.serve.app import serve

    if args.max_upload_mb <= 0 or args.max_pixels <= 0 or args.workers <= 0:
        raise SurfadError("--max-upload-mb, --max-pixels and --workers must be positive")
    api_key = args.api_key or os.environ.get("SURFAD_API_KEY") or None
    serve(args.run, host=args.host, port=args.port, runtime=args.runtime, api_key=api_key,
          max_upload_bytes=int(args.max_upload_mb * 1_000_000), max_pixels=args.max_pixels, workers=args.workers,
          record=args.record, keep_images=args.keep_images)


def cmd_demo(args: argparse.Namespace) -> None:
    from surfad.demo import run_demo

    run_demo(Path(args.out), progress=not args.quiet)


def cmd_preview_defects(args: argparse.Namespace) -> None:
    from surfad.data.defects import DefectSynthesizer, write_defect_preview
    from surfad.data.io import read_image
    from surfad.data.transforms import preprocess
    from surfad.predict import expand_inputs

    decoded = [read_image(p) for p in expand_inputs(args.inputs)[: args.n]]
    channels = 1 if all(image.shape[2] == 1 for image in decoded) else 3
    images = [preprocess(image, args.image_size, channels) for image in decoded]
    synthesizer = DefectSynthesizer(args.source, image_size=args.image_size, seed=args.seed)
    out = write_defect_preview(images, synthesizer, Path(args.out), n=args.n, seed=args.seed)
    print(f"preview of synthetic defects ({args.source}): {out}")


MODEL_FLAG = "model_flag:"


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """Each model's own flags (declared in its module as `cli_flags`), valid only with that model."""
    import typing

    from surfad.models import available_models, model_class

    for name in available_models():
        cls = model_class(name)
        hints = typing.get_type_hints(cls.Config)
        for flag, field in cls.cli_flags.items():
            dest = f"{MODEL_FLAG}{name}:{field}:{flag}"
            help_text = f"[{name}] model_params.{field}"
            if hints[field] is bool:
                p.add_argument(f"--{flag}", dest=dest, action="store_true", default=None, help=help_text)
            elif typing.get_origin(hints[field]) is list:
                p.add_argument(f"--{flag}", dest=dest, type=yaml_list, metavar="A,B", help=help_text)
            else:
                p.add_argument(f"--{flag}", dest=dest, type=yaml.safe_load, metavar=field.upper(), help=help_text)


def yaml_list(text: str) -> list[Any]:
    """'8,16' -> [8, 16]."""
    return [yaml.safe_load(part) for part in text.split(",") if part.strip()]


def add_data_override_flags(p: argparse.ArgumentParser, default_split: str) -> None:
    p.add_argument("--data", help="dataset (default: the one the run was trained on)")
    p.add_argument("--layout", choices=["auto", *LAYOUTS], help="layout of --data (default: the run's)")
    p.add_argument("--split", help=f"train | val | test | test_a | test_b | all (default: {default_split})")
    p.add_argument("--good", help="instead of a dataset split: a folder of good images (e.g. reviewed inspections)")
    p.add_argument("--defect", help="instead of a dataset split: a folder of defective images")


def add_checkpoint_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", "--cpt-path", dest="checkpoint", default="best_detect",
                   help="best_detect (shipped), best_seg, last, or a .safetensors path (torch runtime)")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="surfad", description="Unsupervised visual surface-defect detection.")
    parser.add_argument("--version", action="version", version=f"surfad {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write a procedural MVTec-layout dataset (built-in data)")
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--n-train", type=int, default=80)
    p.add_argument("--n-test-good", type=int, default=30)
    p.add_argument("--n-test-defect", type=int, default=30)
    p.add_argument("--n-val-good", type=int, default=10)
    p.add_argument("--n-val-defect", type=int, default=10)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("train", help="train a model on good images")
    p.add_argument("--data", help="dataset folder")
    p.add_argument("--layout", choices=["auto", *LAYOUTS])
    p.add_argument("--model", help="model name (unet_vae, recondiff)")
    p.add_argument("--preset", help="a named preset of the model's parameters")
    p.add_argument("--param", action="append", metavar="NAME=VALUE", help="a model parameter (repeatable)")
    p.add_argument("--config", help="YAML file with any of the settings")
    p.add_argument("--image-size", type=int)
    p.add_argument("--tile-scale", type=float,
                   help="> 0: scale every image by this factor and work on image-size tiles of it, instead of squashing")
    p.add_argument("--tile-stride", type=int, help="tiling: step between inference tiles in pixels (default 3/4 of a tile)")
    p.add_argument("--tiles-per-image", type=int, help="tiling: random tiles per training image per epoch (default 1)")
    p.add_argument("--channels", type=int, choices=[1, 3])
    p.add_argument("--train-list", help="file listing the training good images")
    p.add_argument("--val-ratio", type=float)
    p.add_argument("--good-dir", help="folder layout: the good images, relative to --data (default: good)")
    p.add_argument("--defect-dir", help="folder layout: defective images for test (default: defect, if present)")
    p.add_argument("--mask-dir", help="folder layout: their masks, named <stem>_mask.png (data.mask_name to change)")
    p.add_argument("--val-good-dir", help="folder layout: good validation images, never trained on")
    p.add_argument("--val-defect-dir", help="folder layout: defective validation images, which choose the epoch and threshold")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int)
    p.add_argument("--device")
    p.add_argument("--val-every", "--validation-period", dest="val_every", type=int, help="validate every N epochs")
    p.add_argument("--select-after", type=int, help="epochs 1..N are validated but never shipped (default 5)")
    p.add_argument("--val-defect-source", help="synthetic validation defects: procedural | self | surface | a texture folder")
    p.add_argument("--time-budget", type=float, help="stop after this many minutes (at an epoch end)")
    p.add_argument("--patience", type=int, help="stop once this many validations in a row bring no new best "
                   "(default 0: off)")
    p.add_argument("--ema-decay", type=float, help="ship a moving average of the weights with this decay, e.g. 0.998 (default 0: off)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images instead of stopping")
    p.add_argument("--out", help="run folder (default: runs/TAG)")
    p.add_argument("--tag", help="name of the run: --out defaults to runs/TAG")
    p.add_argument("--category", help="a,b,c: train one model per category folder of --data, then a summary table")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    p.add_argument("--step", type=int, default=0, help="-1: same as --resume")
    p.add_argument("--dry-run", action="store_true",
                   help="check the data and settings, show the splits, image and defect sizes, the model, the "
                        "estimated duration on this machine and advice; then stop without writing anything")
    add_model_flags(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("calibrate", help="choose the decision threshold on a split")
    p.add_argument("run")
    add_data_override_flags(p, "val")
    p.add_argument("--strategy", default="f1", help="f1 | youden | recall:X | fpr:X")
    add_checkpoint_flag(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("evaluate", help="metrics and an HTML report on a split")
    p.add_argument("run")
    add_data_override_flags(p, "test")
    p.add_argument("--out")
    add_checkpoint_flag(p)
    p.add_argument("--runtime", default="torch", choices=["torch", "onnx"])
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="inspect images: verdict, score, heatmap, mask, regions")
    p.add_argument("run")
    p.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--out")
    p.add_argument("--threshold", type=float, help="override the calibrated threshold")
    p.add_argument("--runtime", default="torch", choices=["torch", "onnx"])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--min-area", type=int, default=16, help="smallest region kept, in pixels")
    p.add_argument("--sort-into", help="also copy each image into DIR/OK or DIR/NG by its verdict (to review, "
                   "correct, then `surfad calibrate --good DIR/OK --defect DIR/NG`)")
    add_checkpoint_flag(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="export the model to ONNX (checked against torch) for CPU deployment")
    p.add_argument("run")
    p.add_argument("--format", default="onnx", choices=["onnx"])
    p.add_argument("--opset", type=int, default=17)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("fuse", help="one detector from several runs: the mean of their standardised scores and maps")
    p.add_argument("runs", nargs="+", help="run folders trained on the same data and splits")
    p.add_argument("--out", required=True, help="folder for the fused detector")
    p.add_argument("--strategy", help="calibration strategy (default: f1 with real validation defects, else fpr:0.01)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_fuse)

    p = sub.add_parser("info", help="what a run (or fused detector) is: model, size, input, thresholds, training data, shipped epoch")
    p.add_argument("run")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("serve", help="HTTP service and web page: POST /predict, GET / (see surfad.serve.app)")
    p.add_argument("run")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--runtime", default="onnx", choices=["onnx", "torch"], help="onnx needs `surfad export` first")
    p.add_argument("--api-key", help="require this key in the X-API-Key header on /model and /predict "
                   "(default: $SURFAD_API_KEY, which keeps it out of the process list)")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest upload, in MB (10^6 bytes)")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="largest image, width x height")
    p.add_argument("--workers", type=int, default=1, help="images inspected at once")
    p.add_argument("--record", help="folder: log every inspection to inspections.jsonl and keep the uploads "
                   "chosen by --keep-images (for traceability, and to collect real defects for validation)")
    p.add_argument("--keep-images", default="ng", choices=["ng", "all", "none"],
                   help="with --record: which uploads to keep, unchanged (default: ng)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("preview-defects", help="write a grid of synthetic defects on your images")
    p.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--out", default="defect_preview.png")
    p.add_argument("--source", default="procedural", help="procedural | self | surface | a folder of texture images")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("-n", type=int, default=8, help="number of images")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_preview_defects)

    p = sub.add_parser("demo", help="synth -> train -> calibrate -> evaluate -> predict on built-in data")
    p.add_argument("--out", default="demo_out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        args.func(args)
    except SurfadError as err:
        print(f"surfad {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = " (continue with --resume)" if args.command == "train" else ""
        print(f"surfad {args.command}: interrupted{hint}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
