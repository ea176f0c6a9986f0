"""Training throughput of one process with T threads against N processes (torchrun, gloo) with 1
thread each, at the same global batch, on this machine.

    python benchmarks/distributed.py --processes 2 --model recondiff --epochs 3 --json out.json

Trains on the built-in synthetic wood data (written to a temporary folder) and reports training
images per second from each run's history (the epochs' training time, validation included).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from surfad.data.synthetic_wood import write_synthetic_dataset


def run(command: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")


def images_per_second(run_folder: Path, samples_per_epoch: int) -> float:
    rows = list(csv.DictReader((run_folder / "history.csv").open()))
    return len(rows) * samples_per_epoch / float(rows[-1]["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--model", default="recondiff")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16, help="global batch")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = write_synthetic_dataset(Path(tmp) / "data", seed=0, size=256)
        common = ["--data", str(data), "--model", args.model, "--epochs", str(args.epochs), "--image-size",
                  str(args.image_size), "--quiet", "--grid-every", "0", "--select-after", "0"]
        env = dict(os.environ)
        single = Path(tmp) / "single"
        run([sys.executable, "-m", "surfad", "train", *common, "--out", str(single), "--batch-size", str(args.batch),
             "--threads", str(args.processes)], env)
        multi = Path(tmp) / "multi"
        run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.processes}",
             "-m", "surfad", "train", *common, "--out", str(multi), "--batch-size", str(args.batch // args.processes),
             "--threads", "1"], {**env, "OMP_NUM_THREADS": "1"})
        samples = len(json.loads((single / "splits.json").read_text())["train"])
        per_epoch = samples * (2 if args.model == "recondiff" else 1)  # recondiff: a clean and a defect sample each
        result = {
            "model": args.model, "image_size": args.image_size, "global_batch": args.batch, "epochs": args.epochs,
            f"1_process_x_{args.processes}_threads_img_per_s": round(images_per_second(single, per_epoch), 2),
            f"{args.processes}_processes_x_1_thread_img_per_s": round(images_per_second(multi, per_epoch), 2),
        }
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
