"""Command line: parses arguments and calls the library; every verb is also a Python call.

One builder per verb (add_<verb>) declares its flags; its cmd_<verb> parses them and calls the
library. The train flags of the data and train sections are generated from the config
dataclasses' fields (surfad.config.setting: name, type, help, accepted values), and each model's
own flags from its registry entry, so a new setting is a flag by being declared.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import math
import os
import re
import sys
import typing
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from surfad import __version__
from surfad.config import LAYOUTS, DataConfig, RunConfig, TrainConfig, load_yaml
from surfad.errors import SurfadError

MODEL_FLAG = "model_flag:"
CONFIG_SECTIONS = (DataConfig, TrainConfig)
# What argparse takes for a value, not an option, after a flag: any negative number (argparse's own rule knows
# only forms like -3 and -3.5, so `--threshold -inf` or `-1e-3` was taken for an unknown option).
NEGATIVE_NUMBER = re.compile(r"^-((\d+\.?\d*|\.\d+)(e[-+]?\d+)?|inf|infinity|nan)$", re.IGNORECASE)


class Parser(argparse.ArgumentParser):
    """argparse with every negative number a value (NEGATIVE_NUMBER); its type then accepts or refuses it,
    e.g. finite_float refuses -inf. Subcommand parsers are of this class too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = NEGATIVE_NUMBER


# --- argument types -------------------------------------------------------------------------------


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text}")
    return value


def port_number(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 1 to 65535, got {text}")
    return value


def finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def yaml_list(text: str) -> list[Any]:
    """'8,16' -> [8, 16]."""
    return [yaml.safe_load(part) for part in text.split(",") if part.strip()]


def comma_list(text: str | None) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c']."""
    return [part.strip() for part in (text or "").split(",") if part.strip()]


# --- flags generated from the config --------------------------------------------------------------


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """A flag per field of the data and train sections (dest "section.field"), typed and described
    by the field's setting."""
    for cls in CONFIG_SECTIONS:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            meta = f.metadata
            if not meta.get("cli", True):
                continue
            flags = [f"--{meta.get('flag') or f.name.replace('_', '-')}", *(f"--{a}" for a in meta.get("aliases", ()))]
            kind = next((t for t in typing.get_args(hints[f.name]) if t is not type(None)), hints[f.name])
            dest = f"{cls.section}.{f.name}"
            # A None default is described by the help itself (e.g. "default: the model's own").
            help_text = meta["help"] if f.default is None else f"{meta['help']} (default: {f.default})"
            if kind is bool:
                p.add_argument(*flags, dest=dest, action="store_true", default=None, help=meta["help"])
            else:
                p.add_argument(*flags, dest=dest, type=finite_float if kind is float else kind,
                               choices=meta.get("choices"), default=None, metavar=None if meta.get("choices") else
                               f.name.upper(), help=help_text)


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """Each model's own flags (its registry entry's `flags`), valid only with the models that declare
    them (one flag may belong to several, e.g. --defect-source)."""
    from surfad.models import available_models, model_spec

    owners: dict[str, dict[str, str]] = {}  # flag -> {model: its config field}
    for name in available_models():
        for flag, field in model_spec(name).flags.items():
            owners.setdefault(flag, {})[name] = field
    for flag, fields in owners.items():
        models = ",".join(f"{name}={field}" for name, field in fields.items())
        dest = f"{MODEL_FLAG}{flag}:{models}"
        name, field = next(iter(fields.items()))
        hint = typing.get_type_hints(model_spec(name).config)[field]
        help_text = "[" + ", ".join(f"{n}: model_params.{f}" for n, f in fields.items()) + "]"
        if hint is bool:
            p.add_argument(f"--{flag}", dest=dest, action="store_true", default=None, help=help_text)
        elif typing.get_origin(hint) is list:
            p.add_argument(f"--{flag}", dest=dest, type=yaml_list, metavar="A,B", help=help_text)
        else:
            p.add_argument(f"--{flag}", dest=dest, type=yaml.safe_load, metavar=field.upper(), help=help_text)


def parse_param(text: str) -> tuple[str, Any]:
    """`name=value` with a YAML value (numbers, booleans, lists like [8,16])."""
    if "=" not in text:
        raise SurfadError(f"--param {text!r}: expected name=value, e.g. --param beta=0.01")
    name, value = text.split("=", 1)
    try:
        return name.strip(), yaml.safe_load(value)
    except yaml.YAMLError:
        raise SurfadError(f"--param {text!r}: {value!r} is not a value (a number, true/false, a word or [a,b])") from None


def build_run_config(args: argparse.Namespace) -> RunConfig:
    """Defaults <- YAML file (--config) <- command-line flags."""
    raw: dict[str, Any] = load_yaml(args.config) if args.config else {}
    if args.model:
        raw["model"] = args.model
    for dest, value in vars(args).items():
        section, _, name = dest.partition(".")
        if name and value is not None:
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
            flag, models = dest[len(MODEL_FLAG):].split(":")
            fields = dict(item.split("=") for item in models.split(","))
            if model not in fields:
                raise SurfadError(f"--{flag} is an option of model {', '.join(fields)}, but this run trains {model}")
            params[fields[model]] = value
    config = RunConfig.from_dict(raw)
    if not config.data.path:
        raise SurfadError("no dataset: give --data PATH (or data.path in the --config file)")
    return config


# --- verbs ----------------------------------------------------------------------------------------


def add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_checkpoint_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", "--cpt-path", dest="checkpoint", default="best_detect",
                   help="best_detect (shipped), best_seg, last, or a .safetensors path (torch runtime)")


def add_roi_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--roi", help="a region-of-interest mask to inspect within instead of the run's own (roi.png), "
                                 "or 'none' for the whole image")


def add_image_set_flags(p: argparse.ArgumentParser, default_split: str) -> None:
    p.add_argument("--data", help="dataset (default: the one the run was trained on)")
    p.add_argument("--layout", choices=["auto", *LAYOUTS], help="layout of --data (default: the run's)")
    p.add_argument("--split", help=f"train | val | test | test_a | test_b | all (default: {default_split})")
    p.add_argument("--good", help="instead of a dataset split: a folder of good images (e.g. reviewed inspections)")
    p.add_argument("--defect", help="instead of a dataset split: a folder of defective images")


def image_set(args: argparse.Namespace, default_split: str) -> tuple[str, Any]:
    """(name, samples) from --good/--defect folders, or (split, None) for a split of the dataset."""
    from surfad.data.layouts import folder_samples

    if not (args.good or args.defect):
        return args.split or default_split, None
    if args.data or args.split or args.layout:
        raise SurfadError("--good/--defect replace the dataset: drop --data, --layout and --split")
    named = [f"{kind} {folder}" for kind, folder in (("good", args.good), ("defect", args.defect)) if folder]
    return "folders: " + ", ".join(named), folder_samples(args.good, args.defect)


def add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write a procedural MVTec-layout dataset (built-in data)")
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=positive_int, default=256)
    for name, default in (("n-train", 80), ("n-test-good", 30), ("n-test-defect", 30), ("n-val-good", 10),
                          ("n-val-defect", 10)):
        p.add_argument(f"--{name}", type=int, default=default)
    p.set_defaults(func=cmd_synth)


def cmd_synth(args: argparse.Namespace) -> None:
    from surfad.data.synthetic_wood import write_synthetic_dataset

    root = write_synthetic_dataset(Path(args.out), seed=args.seed, size=args.size, n_train=args.n_train,
                                   n_test_good=args.n_test_good, n_test_defect=args.n_test_defect,
                                   n_val_good=args.n_val_good, n_val_defect=args.n_val_defect, progress=True)
    print(f"synthetic dataset written to {root}")


def add_train(sub: argparse._SubParsersAction) -> None:
    from surfad.models import available_models

    p = sub.add_parser("train", help="train (or fit) a model on good images")
    p.add_argument("--model", help=f"model name: {', '.join(available_models())} (default {RunConfig.model}), or auto: "
                   "train candidates within --time-budget (default 10 min) and ship the best on validation")
    p.add_argument("--candidates", help="with --model auto: only the candidates of these models (a,b,c)")
    p.add_argument("--preset", help="a named preset of the model's parameters")
    p.add_argument("--param", action="append", metavar="NAME=VALUE", help="a model parameter (repeatable)")
    p.add_argument("--config", help="YAML file with any of the settings (the sections and names of config.yaml)")
    add_config_flags(p)
    p.add_argument("--out", help="run folder (default: runs/TAG)")
    p.add_argument("--tag", help="name of the run: --out defaults to runs/TAG")
    p.add_argument("--category", help="a,b,c: train one model per category folder of --data, then a summary table")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    p.add_argument("--step", type=int, default=0, help="-1: same as --resume")
    p.add_argument("--dry-run", action="store_true",
                   help="check the data and settings, show the splits, image and defect sizes, the model, the "
                        "estimated duration on this machine and advice; then stop without writing anything")
    add_model_flags(p)
    add_quiet(p)
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> None:
    from surfad.categories import train_categories
    from surfad.training import train
    from surfad.training.distributed import launched_rank

    if args.model == "auto":
        return train_auto_command(args)
    if args.candidates:
        raise SurfadError("--candidates chooses among the candidates of --model auto")
    if args.dry_run:
        from surfad.plan import plan_runs, plans_report

        if args.resume or args.step:
            raise SurfadError("--dry-run checks new runs: drop --resume and --step")
        print(plans_report(plan_runs(build_run_config(args), comma_list(args.category), progress=not args.quiet)))
        return
    if args.step not in (0, -1):
        raise SurfadError(f"--step {args.step}: only -1 (resume from the last checkpoint) or 0 (start) are kept")
    resume = args.resume or args.step == -1
    if not (args.out or args.tag):
        raise SurfadError("give --out RUN (or --tag NAME for runs/NAME)")
    out = Path(args.out) if args.out else Path("runs") / args.tag
    config = RunConfig() if resume else build_run_config(args)
    if args.category:
        table = train_categories(config, comma_list(args.category), out, resume=resume, progress=not args.quiet)
        print(f"summary: {table}")
        return
    run = train(config, out, resume=resume, progress=not args.quiet)
    if launched_rank() == 0:  # under torchrun every process returns here; one reports
        print(f"run folder: {run}")


def train_auto_command(args: argparse.Namespace) -> None:
    """`train --model auto`: the candidates' settings are auto's own, the data and train settings the user's."""
    from surfad.auto import DEFAULT_BUDGET_MIN, plan_auto, train_auto

    if args.param or args.preset or any(d.startswith(MODEL_FLAG) and v is not None for d, v in vars(args).items()):
        raise SurfadError("--model auto sets each candidate's model parameters itself: drop --param, --preset and "
                          "model flags (or --candidates to choose among the models)")
    if args.category:
        raise SurfadError("--model auto trains one dataset: drop --category (or run it per category folder)")
    args.model = None  # the base config: the user's data and train settings
    base = build_run_config(args)
    budget = base.train.time_budget_min or DEFAULT_BUDGET_MIN
    base = replace(base, train=replace(base.train, time_budget_min=0.0))
    models = comma_list(args.candidates) or None
    if args.dry_run:
        print(plan_auto(base, budget, models))
        return
    if not (args.out or args.tag):
        raise SurfadError("give --out RUN (or --tag NAME for runs/NAME)")
    out = Path(args.out) if args.out else Path("runs") / args.tag
    train_auto(base, out, budget, resume=args.resume or args.step == -1, progress=not args.quiet, models=models)
    print(f"run folder: {out}")


def add_curve(sub: argparse._SubParsersAction) -> None:
    from surfad.models import available_models

    p = sub.add_parser("curve", help="accuracy against the number of good training images: fit on random subsets, "
                       "the same validation and test for all; curve.csv and curve.png")
    p.add_argument("--model", help=f"model name: {', '.join(available_models())} (default {RunConfig.model})")
    p.add_argument("--preset", help="a named preset of the model's parameters")
    p.add_argument("--param", action="append", metavar="NAME=VALUE", help="a model parameter (repeatable)")
    p.add_argument("--config", help="YAML file with any of the settings (the sections and names of config.yaml)")
    add_config_flags(p)
    p.add_argument("--sizes", default="5,10,20,50,all", help="numbers of good training images, 'all' for every one "
                   "(default: 5,10,20,50,all)")
    p.add_argument("--seeds", type=positive_int, default=3, help="random subsets of each size (default: 3)")
    p.add_argument("--out", required=True, help="folder for curve.csv, curve.png and the points (a rerun resumes)")
    p.add_argument("--keep-runs", action="store_true", help="keep each point's run folder (out/runs/)")
    add_model_flags(p)
    add_quiet(p)
    p.set_defaults(func=cmd_curve)


def cmd_curve(args: argparse.Namespace) -> None:
    from surfad.curve import run_curve

    run_curve(build_run_config(args), args.sizes, args.seeds, args.out, progress=not args.quiet,
              keep_runs=args.keep_runs)


def add_calibrate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="choose the decision threshold on a split")
    p.add_argument("run")
    add_image_set_flags(p, "val")
    p.add_argument("--strategy", default="f1", help="f1 | youden | recall:X | fpr:X")
    p.add_argument("--review", metavar="LOW,HIGH",
                   help="also an OK / REVIEW / NG band: two rules or numbers, e.g. recall:0.995,fpr:0.005 (OK at or "
                        "below LOW, NG above HIGH, REVIEW between)")
    add_roi_flag(p)
    add_checkpoint_flag(p)
    add_quiet(p)
    p.set_defaults(func=cmd_calibrate)


def cmd_calibrate(args: argparse.Namespace) -> None:
    from surfad.evaluate import calibrate_run

    split, samples = image_set(args, "val")
    c = calibrate_run(args.run, data=args.data, split=split, strategy=args.strategy, layout=args.layout,
                      checkpoint=args.checkpoint, progress=not args.quiet, samples=samples, roi=args.roi,
                      review=args.review)
    band = f"; review band {c.review[0]:.6g} to {c.review[1]:.6g} ({c.review_strategy})" if c.review else ""
    print(f"threshold {c.threshold:.6g} ({c.strategy} on {c.split}: {c.n_good} good, {c.n_defect} defective); "
          f"pixel threshold {c.pixel_threshold:.6g}{band}; saved in {Path(args.run) / 'calibration.json'}")


def add_runtime_flag(p: argparse.ArgumentParser, default: str) -> None:
    from surfad.detector import RUNTIMES

    p.add_argument("--runtime", default=default, choices=RUNTIMES,
                   help=f"default {default}; onnx and onnx-int8 need `surfad export` (--quantize int8) first")


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="metrics and an HTML report on a split")
    p.add_argument("run")
    add_image_set_flags(p, "test")
    p.add_argument("--out")
    add_roi_flag(p)
    add_checkpoint_flag(p)
    add_runtime_flag(p, "torch")
    add_quiet(p)
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from surfad.evaluate import evaluate_run, summary_line

    split, samples = image_set(args, "test")
    out = Path(args.out) if args.out else Path(args.run) / f"eval_{'folders' if samples else split}"
    metrics = evaluate_run(args.run, data=args.data, split=split, out=out, runtime=args.runtime, layout=args.layout,
                           checkpoint=args.checkpoint, progress=not args.quiet, samples=samples, roi=args.roi)
    print(summary_line(metrics))
    print(f"report: {out / 'report.html'}")


def add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="inspect images: verdict, score, heatmap, mask, regions")
    p.add_argument("run")
    p.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--out")
    p.add_argument("--threshold", type=finite_float, help="override the calibrated threshold")
    add_runtime_flag(p, "torch")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--min-area", type=positive_int, default=16, help="smallest region kept, in pixels")
    p.add_argument("--sort-into", help="also copy each image into DIR/OK, DIR/REVIEW or DIR/NG by its verdict (to "
                   "review, correct, then `surfad calibrate --good DIR/OK --defect DIR/NG`)")
    add_roi_flag(p)
    add_checkpoint_flag(p)
    add_quiet(p)
    p.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> None:
    from surfad.batch_predict import predict_files
    from surfad.detector import Detector

    detector = Detector.load(args.run, runtime=args.runtime, min_area=args.min_area, checkpoint=args.checkpoint,
                             roi=args.roi)
    out = Path(args.out) if args.out else Path(args.run) / "predictions"
    counts = predict_files(detector, args.inputs, out, threshold=args.threshold, batch_size=args.batch_size,
                           progress=not args.quiet, sort_into=args.sort_into)
    review = f", {counts['review']} to review" if counts["review"] else ""
    print(f"{counts['done']} predicted ({counts['ng']} NG{review}), {counts['already_done']} already done, "
          f"{counts['failed']} unreadable; results in {out / 'predictions.jsonl'}")


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export the model to ONNX (checked against torch) for CPU deployment")
    p.add_argument("run")
    p.add_argument("--format", default="onnx", choices=["onnx"])
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--quantize", choices=["int8"], help="also write model.int8.onnx (padim, patchcore), kept only if "
                   "its validation verdicts agree with model.onnx's (--runtime onnx-int8)")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> None:
    from surfad.detector import model_runs
    from surfad.export.onnx import EXPORT_JSON, export_onnx

    for run in model_runs(args.run):  # a fused detector: each member's own model.onnx
        path = export_onnx(run, opset=args.opset, quantize=args.quantize)
        record = json.loads((run / EXPORT_JSON).read_text())
        parity = record["parity"]
        print(f"exported {path} (opset {args.opset}); torch vs onnxruntime max abs diff: map "
              f"{parity['max_abs_diff_map']:.2g}, score {parity['max_abs_diff_score']:.2g}"
              + (f", descriptors {parity['max_abs_diff_descriptors']:.2g}" if "max_abs_diff_descriptors" in parity else "")
              + f" ({parity['random_inputs']} random + {parity['val_images']} val images)")
        if "int8" in record:
            agree = record["int8"]["agreement"]
            print(f"exported {run / record['int8']['file']}: {agree['verdicts_changed']} of {agree['val_images']} "
                  f"validation verdicts changed, score rank correlation {agree['score_spearman']:.3f}, largest "
                  f"score difference {agree['max_abs_diff_score']:.2g}")


def add_fuse(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fuse", help="one detector from several runs: the mean of their standardised scores and maps")
    p.add_argument("runs", nargs="+", help="run folders trained on the same data and splits")
    p.add_argument("--out", required=True, help="folder for the fused detector")
    p.add_argument("--strategy", help="calibration strategy (default: f1 with real validation defects, else fpr:0.01)")
    add_quiet(p)
    p.set_defaults(func=cmd_fuse)


def cmd_fuse(args: argparse.Namespace) -> None:
    from surfad.detector import fuse_runs

    out = fuse_runs(args.runs, args.out, strategy=args.strategy, progress=not args.quiet)
    print(f"fused {len(args.runs)} runs into {out} (standardised and calibrated on their validation split)")


def add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="what a run (or fused detector) is: model, size, input, thresholds, training "
                       "data, shipped epoch")
    p.add_argument("run")
    p.set_defaults(func=cmd_info)


def cmd_info(args: argparse.Namespace) -> None:
    from surfad.detector import Detector
    from surfad.utils import to_json

    print(to_json(Detector.describe(args.run), indent=2))


def add_serve(sub: argparse._SubParsersAction) -> None:
    from surfad.serve import MAX_BATCH

    p = sub.add_parser("serve", help="HTTP service and web page: POST /predict, GET / (see surfad.serve.app)")
    p.add_argument("run")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=port_number, default=8000)
    add_runtime_flag(p, "onnx")
    p.add_argument("--api-key", help="require this key in the X-API-Key header on /model and /predict "
                   "(default: $SURFAD_API_KEY, which keeps it out of the process list)")
    p.add_argument("--max-upload-mb", type=positive_float, default=10.0, help="largest upload, in MB (10^6 bytes)")
    p.add_argument("--max-pixels", type=positive_int, default=40_000_000, help="largest image, width x height")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="service processes on the port (their statistics and recording are shared)")
    p.add_argument("--concurrency", type=positive_int, default=1, help="images a process inspects at once")
    p.add_argument("--max-batch", type=positive_int, default=MAX_BATCH, help="requests waiting together are "
                   f"inspected in one forward pass, up to this many (default {MAX_BATCH}; 1: one at a time, "
                   "--concurrency at once)")
    p.add_argument("--threads", type=positive_int, help="inference threads per process (default: the cores shared "
                   "among the workers; every core for one)")
    p.add_argument("--record", help="folder: log every inspection to inspections.jsonl and keep the uploads "
                   "chosen by --keep-images (for traceability, and to collect real defects for validation)")
    p.add_argument("--keep-images", default="ng", choices=["ng", "all", "none"],
                   help="with --record: which uploads to keep, unchanged (default: ng, the NG and REVIEW ones)")
    add_roi_flag(p)
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="without --api-key, also answer requests naming this host (repeatable); by default only "
                        "the address served and localhost, so a foreign name (DNS rebinding) or site is refused")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> None:
    from surfad.serve.app import serve

    api_key = args.api_key if args.api_key is not None else os.environ.get("SURFAD_API_KEY")
    serve(args.run, host=args.host, port=args.port, runtime=args.runtime, api_key=api_key,
          max_upload_bytes=int(args.max_upload_mb * 1_000_000), max_pixels=args.max_pixels,
          concurrency=args.concurrency, record=args.record, keep_images=args.keep_images,
          allow_hosts=args.allow_host, roi=args.roi, workers=args.workers, threads=args.threads or 0,
          max_batch=args.max_batch)


def add_preview_defects(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("preview-defects", help="write a grid of synthetic defects on your images")
    p.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--out", default="defect_preview.png")
    p.add_argument("--source", default="procedural", help="procedural | self | surface | a folder of texture images")
    p.add_argument("--image-size", type=positive_int, default=128)
    p.add_argument("-n", type=positive_int, default=8, help="number of images")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_preview_defects)


def cmd_preview_defects(args: argparse.Namespace) -> None:
    from surfad.data.defects import preview_defects

    out = preview_defects(args.inputs, args.out, args.source, args.image_size, args.n, args.seed)
    print(f"preview of synthetic defects ({args.source}): {out}")


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="synth -> train -> calibrate -> evaluate -> predict on built-in data")
    p.add_argument("--out", default="demo_out")
    add_quiet(p)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> None:
    from surfad.demo import run_demo

    run_demo(Path(args.out), progress=not args.quiet)


VERBS = (add_synth, add_train, add_curve, add_calibrate, add_evaluate, add_predict, add_export, add_fuse, add_info, add_serve,
         add_preview_defects, add_demo)


def make_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="surfad", description="Unsupervised visual surface-defect detection.")
    parser.add_argument("--version", action="version", version=f"surfad {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in VERBS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = make_parser().parse_args(argv)
    except SystemExit as exit_:  # --help, or a flag argparse refused (it printed why)
        return int(exit_.code or 0)
    try:
        args.func(args)
    except SurfadError as err:
        print(f"surfad {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a folder that cannot be written, a full disk: say which file, no traceback
        where = f"{err.filename}: " if err.filename else ""
        full = err.errno in (errno.ENOSPC, errno.EDQUOT) and args.command == "train"
        hint = "; the last checkpoint is kept: free some space, then continue with --resume" if full else ""
        print(f"surfad {args.command}: error: {where}{err.strerror or err}{hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = " (continue with --resume)" if args.command == "train" else ""
        print(f"surfad {args.command}: interrupted{hint}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
