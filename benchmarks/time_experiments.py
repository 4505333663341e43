"""Time each experiment file's runs on this machine: N steps of its paper setting, projected.

    python benchmarks/time_experiments.py --steps 1000 --out-dir /tmp/x   # on a GPU machine

VGG files name full CIFAR-10, which machines without internet cannot download: the same
networks and step counts run on cifar10-mini instead (the cost of a step does not depend on
the dataset; evaluation on the 1,017-image test split is cheaper than on 10,000 images).
Prints a markdown table: measured seconds for N steps per run and the projection to the
file's own step count.
"""

import argparse
import subprocess
import sys
import time
import tomllib
from pathlib import Path

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--out-dir", default="/tmp/landscape-experiments")
    parser.add_argument("--device", default="auto")
    parser.add_argument("files", nargs="*")
    args = parser.parse_args()
    files = [Path(f) for f in args.files] or sorted(EXPERIMENTS.glob("*.toml"))
    rows = []
    for path in files:
        run = tomllib.loads(path.read_text())["run"]
        runs = len(run["models"]) * len(run["lrs"])
        steps = min(args.steps, run["steps"])
        dataset = ["--dataset", "cifar10-mini"] if run.get("dataset") == "cifar10" else []
        cmd = [sys.executable, "-m", "landscape", "run", "--config", str(path), *dataset,
               "--steps", str(steps), "--device", args.device, "--overwrite",
               "--out", str(Path(args.out_dir) / f"{path.stem}.h5")]
        started = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if done.returncode:
            rows.append((path.name, f"failed: {done.stderr.strip().splitlines()[-1]}", "", ""))
            continue
        projected = seconds * run["steps"] / steps
        rows.append((path.name, f"{runs} runs x {steps} steps: {seconds:.0f} s",
                     f"{runs} runs x {run['steps']} steps", f"{projected / 60:.1f} min"))
        print(rows[-1], flush=True)
    print("\n| file | measured | paper setting | projected |\n|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
