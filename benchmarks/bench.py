"""Benchmark: steps/s, images/s, probe overhead and speed-up over the course-style reference.

    python benchmarks/bench.py --suite cpu     # the 2-core CPU numbers (about 10 minutes)
    python benchmarks/bench.py --suite gpu     # on a CUDA machine (full-width VGG-A)

Every ratio is measured side by side in one run. Each configuration runs ``run_sweep`` (the
code path of ``landscape run``) on cifar10-mini into a temporary HDF5 file; ratios compare
configurations that differ in one thing only. Prints one table (markdown) at the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_course import course_sweep  # noqa: E402

from landscape.data import load_cifar10_mini, mini_path  # noqa: E402
from landscape.errors import LandscapeError  # noqa: E402
from landscape.models import build_model  # noqa: E402
from landscape.probes import along_gradient  # noqa: E402
from landscape.train import SweepConfig, resolve_device, run_sweep, training_precision  # noqa: E402

FIG4_STEPS = 2 * 5 * 20 * (50_000 // 128)  # 2 models x 5 lrs x 20 epochs of full CIFAR-10


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_sweep(config: SweepConfig, data, device) -> dict:
    """Wall time of run_sweep (data already on the device), steps and peak device memory."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory() as tmp:
        sync(device)
        started = time.perf_counter()
        summaries = run_sweep(config, os.path.join(tmp, "b.h5"), data=data)
        sync(device)
        seconds = time.perf_counter() - started
    steps = sum(s.steps for s in summaries)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    return {"seconds": seconds, "steps": steps, "images": steps * config.batch_size,
            "peak_mib": peak, "run_steps": [s.steps for s in summaries]}


def probe_vs_step(model_name: str, width: float, device, batch_size: int = 128, repeat: int = 10,
                  precision: str = "tf32") -> dict:
    """Median seconds of one training step and of one 4-point probe (batched and sequential)."""
    data = load_cifar10_mini().to(device)
    torch.manual_seed(0)
    model = build_model(model_name, width=width).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = data.normalize(data.x_train[:batch_size])
    y = data.y_train[:batch_size]
    etas = [0.05, 0.1, 0.2, 0.4]

    def step():
        with autocast():
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def median_time(fn):
        for _ in range(3):
            fn()
        times = []
        for _ in range(repeat):
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - t)
        return sorted(times)[len(times) // 2]

    with training_precision(precision, device) as autocast:
        t_step = median_time(step)
        t_graphed = float("nan")
        if device.type == "cuda":  # the step as --grid streams runs it: one CUDA graph replay
            from landscape.train.streams import CapturedStep
            from landscape.train.tasks import ClassificationTask

            captured = CapturedStep(model, opt, ClassificationTask(data), x.clone(), y.clone(),
                                    autocast)

            def graphed():
                captured.launch()
                captured.join()

            t_graphed = median_time(graphed)
        t_batched = median_time(lambda: along_gradient(model, F.cross_entropy, x, y, etas, points="vmap"))
        t_seq = median_time(lambda: along_gradient(model, F.cross_entropy, x, y, etas, points="sequential"))
    return {"step": t_step, "graphed_step": t_graphed, "probe_batched": t_batched,
            "probe_sequential": t_seq}


def fmt(x, spec=".3g"):
    return "-" if x != x else format(x, spec)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--width", type=float, default=None)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--precision", default="tf32", choices=["fp32", "tf32", "bf16"])
    parser.add_argument("--compile", action="store_true", help="torch.compile training steps")
    parser.add_argument("--repeat", type=int, default=2, help="alternating repeats of the "
                        "probe-overhead pair (fastest kept)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    width = args.width or (0.25 if args.suite == "cpu" else 1.0)
    data = load_cifar10_mini().to(device)
    rows = []

    base = SweepConfig(models=("vgg_a", "vgg_a_bn"), lrs=(0.05, 0.1, 0.15), epochs=args.epochs,
                       dataset="cifar10-mini", width=width, device=str(device), probe_every=100,
                       precision=args.precision, compile=args.compile)
    timed_sweep(replace(base, models=base.models[:1], lrs=base.lrs[:1], epochs=1), data, device)  # warm-up
    # The two sweeps whose ratio is the probe overhead alternate, twice; each keeps its fastest
    # run, so that drifts of a shared machine do not land on one side only.
    pairs = [(timed_sweep(replace(base, probe=False), data, device), timed_sweep(base, data, device))
             for _ in range(args.repeat)]
    no_probe = min((p[0] for p in pairs), key=lambda r: r["seconds"])
    default = min((p[1] for p in pairs), key=lambda r: r["seconds"])
    every_step = timed_sweep(replace(base, probe_every=1, epochs=1), data, device)
    no_probe_1 = timed_sweep(replace(base, probe=False, epochs=1), data, device)
    other = "sequential" if base.grid != "sequential" and device.type == "cuda" else "batched"
    other_grid = timed_sweep(replace(base, probe=False, grid=other), data, device)

    def row(name, r, overhead=float("nan"), speedup=float("nan")):
        rows.append((name, fmt(r["steps"] / r["seconds"]), fmt(r["images"] / r["seconds"], ".4g"),
                     fmt(overhead), fmt(speedup), fmt(r["peak_mib"], ".4g"), f"{r['seconds']:.1f}"))

    row(f"sweep 2x3 lrs x{args.epochs} ep, no probe", no_probe)
    row("sweep, probe every 100 (4 eta)", default, default["seconds"] / no_probe["seconds"])
    row("sweep 1 ep, no probe", no_probe_1)
    row("sweep 1 ep, probe every step", every_step, every_step["seconds"] / no_probe_1["seconds"])
    row(f"sweep, no probe, --grid {other} (speed-up of --grid {base.grid} over it)", other_grid, float("nan"),
        other_grid["seconds"] / no_probe["seconds"])

    if args.suite == "cpu":
        ref = course_sweep(str(mini_path()), base.models, base.lrs, args.epochs, width)
        ref["images"], ref["peak_mib"] = ref["steps"] * 128, float("nan")
        row("reference: course-style sweep", ref)
        rows[1] = rows[1][:4] + (fmt(ref["seconds"] / default["seconds"]),) + rows[1][5:]

    pv = probe_vs_step("vgg_a_bn", width, device, precision=args.precision)
    if device.type == "cuda":
        print(f"\none graphed training step (CUDA graph replay): {pv['graphed_step'] * 1e3:.2f} ms; "
              f"one 4-point probe = {pv['probe_sequential'] / pv['graphed_step']:.1f} graphed steps")
    print(f"\none training step: {pv['step'] * 1e3:.2f} ms; one 4-point probe: batched "
          f"{pv['probe_batched'] * 1e3:.2f} ms ({pv['probe_batched'] / pv['step']:.2f} steps), "
          f"sequential {pv['probe_sequential'] * 1e3:.2f} ms "
          f"({pv['probe_sequential'] / pv['step']:.2f} steps)")
    # Projection from marginal costs measured here, so that what a short sweep pays once (model
    # builds, graph recording, warm-up) is not charged to every step of the long grid:
    # seconds per run-step = the difference of the E-epoch and 1-epoch sweeps per extra step;
    # seconds per probe = the with-probe sweep minus the no-probe one, per probe it took.
    per_step = (no_probe["seconds"] - no_probe_1["seconds"]) / (no_probe["steps"] - no_probe_1["steps"])
    # (from the probe-every-step sweep: its probes are steady-state ones, whereas a short
    # probe-every-100 sweep's few probes are mostly first ones, which record CUDA graphs)
    per_probe = (every_step["seconds"] - no_probe_1["seconds"]) / every_step["steps"]
    print(f"steady-state probe overhead at every 100 steps: 1 + probe / (100 steps) = "
          f"{1 + per_probe / (100 * per_step):.3f}")
    fig4 = FIG4_STEPS * per_step + FIG4_STEPS / 100 * per_probe
    print(f"projected Fig. 4 grid ({FIG4_STEPS} run-steps, probe every 100): {fig4 / 60:.1f} min "
          f"= training {FIG4_STEPS * per_step / 60:.1f} min ({1 / per_step:.0f} run-steps/s "
          f"marginal) + {FIG4_STEPS // 100} probes {FIG4_STEPS / 100 * per_probe / 60:.1f} min "
          f"({per_probe * 1e3:.1f} ms a probe in the sweep)")

    print(f"\n{date.today()} | {device_name(device)} | torch {torch.__version__} | width {width} "
          f"| precision {args.precision} | grid {base.grid} | compile {args.compile}\n")
    header = ("configuration", "run-steps/s", "images/s", "probe overhead", "speed-up",
              "peak MiB", "seconds")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    try:
        main()
    except LandscapeError as error:  # a bad setting (no GPU, --compile on a GPU): one line
        sys.exit(f"bench.py: {error}")
