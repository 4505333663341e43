"""landscape's benchmarks: one entry point, one suite per question (results: benchmarks/RESULTS.md).

    python benchmarks/bench.py --suite cpu          # speed on the CPU, and against the course-style
                                                    # reference (about 10 min on 2 cores)
    python benchmarks/bench.py --suite gpu          # the same on a CUDA GPU, full width
    python benchmarks/bench.py --suite fig4         # the paper's Fig. 4 grid end to end on one GPU
    python benchmarks/bench.py --suite gpucheck     # correctness on a GPU: the probe against float64
                                                    # on the CPU, graphed sweeps against eager ones
    python benchmarks/bench.py --suite curvature    # lambda_max against PyHessian (when installed),
                                                    # weight statistics, sharpness sweep overhead
    python benchmarks/bench.py --suite spectrum     # one Hessian density (SLQ) against its floor of
                                                    # Hessian-vector products and PyHessian's density()
    python benchmarks/bench.py --suite experiments  # each experiment file's runs, N steps, projected
    python benchmarks/bench.py --suite ray          # 2 Ray workers against 1, and the driver's
                                                    # cost per row block and per flush (needs ray)
    python benchmarks/bench.py --suite store        # a flush at 10, 100 and 1,000 runs of 15,000
                                                    # steps, and the bytes a sweep writes
    python benchmarks/bench.py --suite report       # `landscape plot` of 60 and 1,000 runs of
                                                    # 15,000 steps: seconds, page, Chromium load
    python benchmarks/bench.py --suite slices       # a 21x21 slice of VGG-A+BN on 4,096 images vs
                                                    # its floor and loss-landscapes (issue 25)

cpu, gpu: every ratio is measured side by side in one run. Each configuration runs
``run_sweep`` (the code path of ``landscape run``) on cifar10-mini into a temporary HDF5 file;
ratios compare configurations that differ in one thing only. Prints one markdown table at the
end. ``--quick`` is a smoke run of the same code (a few minutes on a busy 2-core CPU), not a
measurement.

fig4: full CIFAR-10 cannot be downloaded on the GPU machines, so cifar10-mini's real images are
tiled to CIFAR-10's sizes (50,000 training images: 390 steps of 128 an epoch; 10,000 test
images evaluated after every epoch). 2 models x 5 LRs x 20 epochs = 78,000 run-steps, 780
probes, every HDF5 write of ``landscape run``; prints where the time went.

experiments: VGG files name full CIFAR-10: the same networks and step counts run on
cifar10-mini instead (a step costs the same; evaluating 1,017 test images is cheaper than
10,000). Measured seconds for N steps per run, projected linearly to the file's step count.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import os
import platform
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import replace
from datetime import date
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import curvature_bench  # noqa: E402
import spectrum_bench  # noqa: E402
import slices_bench  # noqa: E402
import ray_bench  # noqa: E402
import report_bench  # noqa: E402
import store_bench  # noqa: E402
from reference_course import course_sweep  # noqa: E402

import landscape.train.sweep as sweep_module  # noqa: E402
from landscape.data import ImageData, load_cifar10_mini, mini_path  # noqa: E402
from landscape.errors import LandscapeError  # noqa: E402
from landscape.models import build_model  # noqa: E402
from landscape.probes import along_gradient  # noqa: E402
from landscape.store import SweepStore  # noqa: E402
from landscape.train import (WARMUP, CapturedProbe, CapturedStep, ClassificationTask,  # noqa: E402
                             GridRuns, SequentialRun, StreamRuns, SweepConfig, TrainerContext,
                             build_run, plan_sweep, resolve_device, run_sweep,
                             training_precision)

ROOT = Path(__file__).resolve().parents[1]
ETAS = (0.05, 0.1, 0.2, 0.4)  # the probe's default step sizes (x LR 1, as the micro-timings use)
FIG4_MODELS, FIG4_LRS = ("vgg_a", "vgg_a_bn"), (0.05, 0.075, 0.1, 0.125, 0.15)
FIG4_TRAIN, FIG4_TEST, FIG4_EPOCHS, FIG4_PROBE_EVERY = 50_000, 10_000, 20, 100
FIG4_STEPS = len(FIG4_MODELS) * len(FIG4_LRS) * FIG4_EPOCHS * (FIG4_TRAIN // 128)  # 78,000

# --------------------------------------------------------------------------- shared helpers


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn, device: torch.device, repeat: int) -> float:
    """Median wall seconds of one call of ``fn``, the device drained before and after each.

    Untimed calls first: a ``CapturedStep`` runs ``WARMUP`` eager steps, then records its graph.
    """
    for _ in range(WARMUP + 2):
        fn()
    times = []
    for _ in range(repeat):
        sync(device)
        started = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def first_batch(data: ImageData, n: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` training images (normalized) and labels: a real batch for micro-timings."""
    return data.normalize(data.x_train[:n]).clone(), data.y_train[:n].clone()


def tiled(data: ImageData, n_train: int, n_test: int) -> ImageData:
    """``data``'s images repeated up to ``n_train``/``n_test`` (the normalization stays the same)."""
    def repeat(t: torch.Tensor, n: int) -> torch.Tensor:
        return t.repeat(-(-n // len(t)), *([1] * (t.ndim - 1)))[:n].contiguous()

    return ImageData(f"{data.name} tiled", repeat(data.x_train, n_train), repeat(data.y_train, n_train),
                     repeat(data.x_test, n_test), repeat(data.y_test, n_test), data.mean, data.std)


def timed_sweep(config: SweepConfig, data, device: torch.device) -> dict:
    """Wall time of run_sweep (data already on the device), steps, peak device memory, file size."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.h5")
        sync(device)
        started = time.perf_counter()
        summaries = run_sweep(config, path, data=data)
        sync(device)
        seconds = time.perf_counter() - started
        hdf5_mib = os.path.getsize(path) / 2**20
    steps = sum(s.steps for s in summaries)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    return {"seconds": seconds, "steps": steps, "images": steps * config.batch_size,
            "peak_mib": peak, "summaries": summaries, "hdf5_mib": hdf5_mib}


@contextlib.contextmanager
def phase_timer(device: torch.device):
    """Wall seconds ``run_sweep`` spends in its phases, by label (the device drained at each
    phase's edges); the sweep's own functions are wrapped for the duration, then restored.

    What is left of a sweep's total is the training loop proper: steps and probes, which run
    asynchronously on a GPU and are not told apart here.
    """
    phases: dict[str, float] = {}
    running: list[str] = []  # a phase inside another (the memory trial builds runs) counts once
    wrapped = []

    def wrap(owner, name: str, label: str) -> None:
        inner = getattr(owner, name)  # run_sweep looks these up at call time, in their modules

        @functools.wraps(inner)
        def timed(*args, **kwargs):
            if running:
                return inner(*args, **kwargs)
            running.append(label)
            sync(device)
            started = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                sync(device)
                phases[label] = phases.get(label, 0.0) + time.perf_counter() - started
                running.pop()

        wrapped.append((owner, name, inner))
        setattr(owner, name, timed)

    try:
        wrap(sweep_module, "fit", "memory trial (fit)")
        wrap(sweep_module, "build_trainer", "building the runs")
        for trainer in (SequentialRun, GridRuns, StreamRuns):  # what the loop calls each epoch
            wrap(trainer, "evaluate", "test evaluations")
        wrap(SweepStore, "flush", "HDF5 flushes")
        yield phases
    finally:
        for owner, name, inner in reversed(wrapped):
            setattr(owner, name, inner)


def fmt(x, spec=".3g"):
    return "-" if x != x else format(x, spec)


def print_table(header, rows) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")


# --------------------------------------------------------------------------- cpu and gpu


def probe_vs_step(model_name: str, width: float, data: ImageData, device, repeat: int,
                  precision: str) -> dict:
    """Median seconds of one eager training step (the sweep's ``SequentialRun.step``), one
    4-point probe (vmapped and sequential points), and on a GPU one graphed step and one
    graphed probe (``CapturedStep``, ``CapturedProbe``: what ``--grid streams`` replays)."""
    config = SweepConfig(models=(model_name,), lrs=(0.1,), epochs=1, width=width,
                         device=str(device), precision=precision, probe=False)
    x, y = first_batch(data)
    out = {"graphed_step": float("nan"), "graphed_probe": float("nan")}
    with training_precision(precision, device) as autocast:
        (group,) = plan_sweep(config)
        run = SequentialRun(group, data, TrainerContext(device, autocast))
        out["step"] = seconds_per_call(lambda: run.step(x, y, 0), device, repeat)
        out["probe_batched"] = seconds_per_call(
            lambda: along_gradient(run.model, F.cross_entropy, x, y, ETAS, points="vmap"), device, repeat)
        out["probe_sequential"] = seconds_per_call(
            lambda: along_gradient(run.model, F.cross_entropy, x, y, ETAS, points="sequential"),
            device, repeat)
        if device.type == "cuda":
            model, optimizer = build_run(model_name, 0.1, config, data, device)
            step = CapturedStep(model, optimizer, ClassificationTask(data), x, y, autocast)
            probe = CapturedProbe(model, F.cross_entropy, step.x, step.y, ETAS, step.stream)

            def graphed_step():
                step.launch()
                step.join()

            def graphed_probe():
                probe.launch()
                torch.cuda.current_stream().wait_stream(step.stream)

            out["graphed_step"] = seconds_per_call(graphed_step, device, repeat)
            out["graphed_probe"] = seconds_per_call(graphed_probe, device, repeat)
    run.close()
    return out


def speed_suite(args, device: torch.device) -> None:
    """cpu/gpu: sweeps with and without probes, the other grid mode, the course-style reference."""
    if args.quick:  # on a busy 2-core machine, 2 spinning threads made tiny steps ~100x slower
        torch.set_num_threads(1)
    data = load_cifar10_mini().to(device)
    rows = []
    base = SweepConfig(models=("vgg_a", "vgg_a_bn"), lrs=(0.1,) if args.quick else (0.05, 0.1, 0.15),
                       epochs=args.epochs, dataset="cifar10-mini", width=args.width,
                       device=str(device), probe_every=100, precision=args.precision,
                       compile=args.compile)
    timed_sweep(replace(base, models=base.models[:1], lrs=base.lrs[:1], epochs=1), data, device)  # warm-up
    # The two sweeps whose ratio is the probe overhead alternate; each keeps its fastest run,
    # so that drifts of a shared machine do not land on one side only.
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

    row(f"sweep {len(base.models)}x{len(base.lrs)} lrs x{args.epochs} ep, no probe", no_probe)
    row("sweep, probe every 100 (4 eta)", default, default["seconds"] / no_probe["seconds"])
    row("sweep 1 ep, no probe", no_probe_1)
    row("sweep 1 ep, probe every step", every_step, every_step["seconds"] / no_probe_1["seconds"])
    row(f"sweep, no probe, --grid {other} (speed-up of --grid {base.grid} over it)", other_grid,
        float("nan"), other_grid["seconds"] / no_probe["seconds"])

    if args.suite == "cpu":
        ref = course_sweep(str(mini_path()), base.models, base.lrs, args.epochs, args.width)
        ref["images"], ref["peak_mib"] = ref["steps"] * 128, float("nan")
        row("reference: course-style sweep", ref)
        rows[1] = rows[1][:4] + (fmt(ref["seconds"] / default["seconds"]),) + rows[1][5:]

    pv = probe_vs_step("vgg_a_bn", args.width, data, device, 3 if args.quick else 10, args.precision)
    if device.type == "cuda":
        print(f"\none graphed training step (CUDA graph replay): {pv['graphed_step'] * 1e3:.2f} ms; "
              f"one graphed 4-point probe (points on streams): {pv['graphed_probe'] * 1e3:.2f} ms "
              f"= {pv['graphed_probe'] / pv['graphed_step']:.1f} graphed steps")
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

    print(f"\n{date.today()} | {device_name(device)} | torch {torch.__version__} | width {args.width} "
          f"| precision {args.precision} | grid {base.grid} | compile {args.compile}"
          f"{' | --quick: a smoke run, not a measurement' if args.quick else ''}\n")
    print_table(("configuration", "run-steps/s", "images/s", "probe overhead", "speed-up",
                 "peak MiB", "seconds"), rows)


# --------------------------------------------------------------------------- fig4


def fig4_suite(args, device: torch.device) -> None:
    """The paper's Fig. 4 grid end to end, and where its time went."""
    data = tiled(load_cifar10_mini(), FIG4_TRAIN, FIG4_TEST).to(device)
    config = SweepConfig(models=FIG4_MODELS, lrs=FIG4_LRS, epochs=args.epochs, dataset="cifar10",
                         device=str(device), precision=args.precision, probe=not args.no_probe,
                         probe_every=FIG4_PROBE_EVERY)
    with phase_timer(device) as phases:
        r = timed_sweep(config, data, device)
    seconds, run_steps = r["seconds"], r["steps"]
    probes = sum(-(-s.steps // FIG4_PROBE_EVERY) for s in r["summaries"]) if config.probe else 0
    print(f"{device_name(device)}, torch {torch.__version__}; precision {args.precision}, "
          f"{'no probes' if args.no_probe else 'probe every 100 (4 eta)'}\n")
    print_table(("run", "status", "steps", "test acc", "median beta", "group seconds"),
                [(s.name, s.status, s.steps, f"{s.final_test_acc:.3f}", f"{s.median_beta:.3g}",
                  f"{s.seconds:.1f}") for s in r["summaries"]])
    print(f"\nFig. 4 grid: {run_steps} run-steps, {probes} probes in {seconds:.1f} s "
          f"({seconds / 60:.2f} min): {run_steps / seconds:.0f} run-steps/s, "
          f"{r['images'] / seconds:.3g} images/s; peak GPU memory {r['peak_mib']:.0f} MiB; "
          f"HDF5 {r['hdf5_mib']:.1f} MiB\n")
    print_table(("phase", "seconds"),
                [*((label, f"{s:.1f}") for label, s in phases.items()),
                 ("the rest: training steps, probes, loop", f"{seconds - sum(phases.values()):.1f}")])


# --------------------------------------------------------------------------- gpucheck


def relative_error(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b)) / np.abs(np.asarray(b))))


def gpucheck_suite(args, device: torch.device) -> None:
    """1. Full-width VGG-A with and without BN on a real batch of 128: the probe on the GPU
    measures in float32 (TF32 and autocast off) even while training settings enable TF32, and
    leaves parameters, BN buffers and the CUDA RNG state bit-identical; float64 on the CPU is
    the reference. 2. ``--grid streams`` sweeps against ``--grid sequential`` (eager) ones."""
    data = load_cifar10_mini()
    x, y = first_batch(data)
    with training_precision("tf32", device):  # TF32 on, as while training
        for name in ("vgg_a", "vgg_a_bn"):
            torch.manual_seed(0)
            model = build_model(name)
            ref = along_gradient(copy.deepcopy(model).double(), F.cross_entropy, x.double(), y, ETAS)
            gpu = model.to(device).to(memory_format=torch.channels_last)
            xg, yg = x.to(device).contiguous(memory_format=torch.channels_last), y.to(device)
            before = [t.clone() for t in list(gpu.parameters()) + list(gpu.buffers())]
            rng = torch.cuda.get_rng_state(device)
            for points in ("vmap", "streams", "sequential"):
                rec = along_gradient(gpu, F.cross_entropy, xg, yg, ETAS, points=points)
                print(f"{name:9s} points={points:10s} loss rel err {relative_error(rec.loss, ref.loss):.2e}  "
                      f"grad_diff rel err {relative_error(rec.grad_diff, ref.grad_diff):.2e}  "
                      f"beta {rec.beta:.4f} vs float64 {ref.beta:.4f}")
            after = list(gpu.parameters()) + list(gpu.buffers())
            untouched = all(torch.equal(a, b) for a, b in zip(before, after))
            untouched &= torch.equal(rng, torch.cuda.get_rng_state(device))
            print(f"{name:9s} parameters, buffers and CUDA RNG unchanged: {untouched}")
    compare_streams_with_eager(data, device)


def compare_streams_with_eager(data, device, steps: int = 60) -> None:
    """Largest relative difference over every stored dataset: streams vs sequential (eager),
    and sequential vs itself (the noise floor), with cuDNN's default and deterministic kernels."""
    for deterministic in (True, False):
        torch.backends.cudnn.deterministic = deterministic
        with tempfile.TemporaryDirectory() as tmp:
            files = {}
            for label, grid in (("streams", "streams"), ("eager", "sequential"),
                                ("eager again", "sequential")):
                files[label] = os.path.join(tmp, f"{label}.h5")
                config = SweepConfig(models=("vgg_a", "vgg_a_bn"), lrs=(0.05, 0.1, 0.15),
                                     steps=steps, probe_every=10, dataset="cifar10-mini",
                                     device=str(device), precision="fp32", grid=grid)
                run_sweep(config, files[label], data=data)
            for other in ("streams", "eager again"):
                worst = largest_difference(files[other], files["eager"])
                print(f"cudnn.deterministic={deterministic!s:5s} {other:11s} vs eager, {steps} "
                      f"full-width fp32 steps, 6 runs: largest rel diff {worst[0]:.1e} ({worst[1]})")
    torch.backends.cudnn.deterministic = False


def largest_difference(path_a, path_b) -> tuple[float, str]:
    worst = (0.0, "-")
    with h5py.File(path_a, "r") as a, h5py.File(path_b, "r") as b:
        for name in b["runs"]:
            for path in ("steps/loss", "steps/grad_norm", "steps/grad_diff", "probe/loss",
                         "probe/grad_diff", "probe/beta", "epochs/test_loss"):
                x, y = a["runs"][name][path][()], b["runs"][name][path][()]
                ok = np.isfinite(y) & (y != 0)
                d = float(np.max(np.abs(x[ok] - y[ok]) / np.abs(y[ok]))) if ok.any() else 0.0
                worst = max(worst, (d, f"{name} {path}"))
    return worst


# --------------------------------------------------------------------------- experiments


def experiments_suite(args, device: torch.device) -> None:
    """Each experiment file through ``landscape run``: N steps of its paper setting, projected."""
    files = [Path(f) for f in args.files] or sorted((ROOT / "experiments").glob("*.toml"))
    for path in files:
        if not path.is_file():
            raise LandscapeError(f"no experiment file {path}")
    rows = []
    for path in files:
        run = tomllib.loads(path.read_text())["run"]
        runs = len(run["models"]) * len(run["lrs"])
        steps = min(args.steps, run["steps"])
        dataset = ["--dataset", "cifar10-mini"] if run.get("dataset") == "cifar10" else []
        cmd = [sys.executable, "-m", "landscape", "run", "--config", str(path), *dataset,
               "--steps", str(steps), "--device", str(device), "--overwrite",
               "--out", str(Path(args.out_dir) / f"{path.stem}.h5")]
        started = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if done.returncode:
            last = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
            rows.append((path.name, f"failed: {last}", "", ""))
            continue
        projected = seconds * run["steps"] / steps
        rows.append((path.name, f"{runs} runs x {steps} steps: {seconds:.0f} s",
                     f"{runs} runs x {run['steps']} steps", f"{projected / 60:.1f} min"))
        print(rows[-1], flush=True)
    print()
    print_table(("file", "measured", "paper setting", "projected"), rows)


def curvature_suite(args, device: torch.device) -> None:
    """The curvature instruments' cost (issue 14): one lambda_max against PyHessian, a probe
    in training steps, weight statistics per step, and the sweep overhead of sharpness."""
    tables = curvature_bench.curvature_tables(device.type, args.repeat, args.steps,
                                              sweep=not args.quick)
    print(f"\ntorch {torch.__version__}, {device}\n")
    for table in tables:
        print("\n".join(table) + "\n")


def spectrum_suite(args, device: torch.device) -> None:
    """One spectral density (issue 26): against its floor of Hessian-vector products alone,
    and against PyHessian's density() when installed."""
    print(f"\ntorch {torch.__version__}, {device}\n")
    for table in spectrum_bench.spectrum_tables(device.type, args.iterations, args.repeat):
        print("\n".join(table) + "\n", flush=True)


def ray_suite(args, device: torch.device) -> None:
    """A Ray sweep's scale (issue 18): 2 workers against 1, the driver's cost and capacity."""
    for table in ray_bench.ray_tables(quick=args.quick):
        print("\n".join(table) + "\n", flush=True)


def store_suite(args, device: torch.device) -> None:
    """The store's cost (issue 24): a 10-row flush at 10, 100, 1,000 runs, write amplification."""
    print("\n".join(store_bench.store_tables((10, 100) if args.quick else store_bench.RUN_COUNTS)))


def report_suite(args, device: torch.device) -> None:
    """The report at cluster scale (issue 29): plot seconds, page size, Chromium's load."""
    counts = (60, 200) if args.quick else (60, 1000)
    print("\n".join(report_bench.report_tables(counts, 3000 if args.quick else
                                               report_bench.STEPS)))


def slices_suite(args, device: torch.device) -> None:
    """A 21x21 slice of width-0.25 VGG-A+BN on 4,096 images vs its floor and loss-landscapes
    (issue 25; --quick: 5x5 on 512 images, a smoke run)."""
    n, samples = (5, 512) if args.quick else (21, 4096)
    print("\n".join(slices_bench.slices_table(n, samples)))


# --------------------------------------------------------------------------- command line

# suite: (what it runs, device it needs (None: any), the options it reads, their defaults)
SUITES = {
    "cpu": (speed_suite, "cpu", {"epochs": 3, "width": 0.25, "precision": "tf32", "compile": False,
                                 "repeat": 2, "quick": False}),
    "gpu": (speed_suite, "cuda", {"epochs": 3, "width": 1.0, "precision": "tf32", "compile": False,
                                  "repeat": 2, "quick": False, "device": "cuda"}),
    "fig4": (fig4_suite, "cuda", {"epochs": FIG4_EPOCHS, "precision": "tf32", "no_probe": False,
                                  "device": "cuda"}),
    "gpucheck": (gpucheck_suite, "cuda", {"device": "cuda"}),
    "curvature": (curvature_suite, None, {"repeat": 3, "steps": 200, "quick": False,
                                          "device": "auto"}),
    "spectrum": (spectrum_suite, None, {"repeat": 3, "iterations": 90, "device": "auto"}),
    "ray": (ray_suite, "cpu", {"quick": False}),
    "report": (report_suite, "cpu", {"quick": False}),
    "store": (store_suite, "cpu", {"quick": False}),
    "slices": (slices_suite, "cpu", {"quick": False}),
    "experiments": (experiments_suite, None, {"steps": 1000, "out_dir": "/tmp/landscape-experiments",
                                              "device": "auto", "files": []}),
}
QUICK = {"epochs": 2, "width": 0.125, "repeat": 1}  # --quick: defaults of a smoke run


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def parse_args(argv=None) -> argparse.Namespace:
    parser = OneLineParser(prog="bench.py", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="cpu", choices=list(SUITES),
                        help="what to measure (default cpu)")
    parser.add_argument("--device", help="cuda device of gpu/fig4/gpucheck (default cuda); "
                        "experiments: auto, cpu or cuda (default auto)")
    parser.add_argument("--width", type=float, help="cpu, gpu: VGG width (default 0.25 / 1.0)")
    parser.add_argument("--epochs", type=int, help="cpu, gpu: epochs of the long sweeps, at "
                        "least 2 (default 3); fig4: epochs (default 20)")
    parser.add_argument("--precision", choices=["fp32", "tf32", "bf16"],
                        help="cpu, gpu, fig4: training precision (default tf32)")
    parser.add_argument("--compile", action="store_true", default=None,
                        help="cpu: torch.compile training steps (CPU only)")
    parser.add_argument("--repeat", type=int, help="cpu, gpu: alternating repeats of the "
                        "probe-overhead pair, fastest kept (default 2)")
    parser.add_argument("--quick", action="store_true", default=None,
                        help="cpu, gpu, ray: a smoke run, not a measurement (width 0.125, 2 epochs, one LR, "
                        "one repeat, one CPU thread)")
    parser.add_argument("--no-probe", action="store_true", default=None,
                        help="fig4: the grid without probes")
    parser.add_argument("--steps", type=int, help="experiments: steps per run (default 1000)")
    parser.add_argument("--iterations", type=int,
                        help="spectrum: Lanczos steps of the density (default 90)")
    parser.add_argument("--out-dir", help="experiments: where the HDF5 files go "
                        "(default /tmp/landscape-experiments)")
    parser.add_argument("files", nargs="*", default=None,
                        help="experiments: experiment files (default: all of experiments/)")
    args = parser.parse_args(argv)
    _, _, defaults = SUITES[args.suite]
    for name, value in vars(args).items():
        if name != "suite" and value not in (None, []) and name not in defaults:
            option = ("experiment files do" if name == "files"
                      else f"--{name.replace('_', '-')} does")
            parser.error(f"{option} not apply to --suite {args.suite}")
    for name, default in defaults.items():
        if getattr(args, name) in (None, []):
            setattr(args, name, QUICK.get(name, default) if args.quick else default)
    smallest_epochs = 2 if args.suite in ("cpu", "gpu") else 1  # the projection needs two lengths
    for name, smallest in (("epochs", smallest_epochs), ("repeat", 1), ("steps", 1),
                           ("iterations", 2)):
        if name in defaults and getattr(args, name) < smallest:
            parser.error(f"--{name} must be at least {smallest} for --suite {args.suite}")
    if "width" in defaults and not args.width > 0:
        parser.error("--width must be positive")
    return args


def suite_device(suite: str, name: str | None) -> torch.device:
    """The device a suite runs on; a LandscapeError (one line) where this machine lacks it."""
    _, needs, defaults = SUITES[suite]
    if needs == "cuda" and not torch.cuda.is_available():
        raise LandscapeError(f"--suite {suite} needs a CUDA GPU and none is available here "
                             f"(--suite cpu measures the CPU)")
    device = resolve_device(name or defaults.get("device", needs))
    if needs is not None and device.type != needs:
        raise LandscapeError(f"--suite {suite} runs on {needs}, not on --device {name}")
    return device


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        run_suite, _, _ = SUITES[args.suite]
        run_suite(args, suite_device(args.suite, args.device))
    except LandscapeError as error:  # a bad setting (no GPU, --compile on a GPU): one line
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
