"""Benchmark of the curvature instruments (issue 14): overhead in training, and lambda_max vs PyHessian.

    python benchmarks/curvature_bench.py --suite cpu      # 2-core CPU (about 15 minutes)
    python benchmarks/curvature_bench.py --suite gpu      # on a CUDA machine

Self-contained (``bench.py`` can call ``main(["--suite", ...])``). Two measurements, each
side by side in one run, configurations alternated (A B C A B C ...) and medians reported:

1. Overhead in a sweep (``run_sweep``, the code path of ``landscape run``): plain training
   (the landscape probe at its default, every 100 steps) vs the same plus ``sharpness_every=100``
   (lambda_max, k = 1) vs the same plus ``weight_stats`` (every step). Also the steady-state
   cost of one sharpness probe in training steps, and of the weight statistics per step,
   timed in the same process (less exposed to the shared machine's load than whole sweeps).
2. One lambda_max (k = 1, relative tolerance 1e-3) on one model and batch: ``probes.sharpness``
   (Lanczos) vs PyHessian's ``hessian(...).eigenvalues(top_n=1, tol=1e-3)`` (power iteration),
   both from a cold start and both including building the double-backward graph; the error of
   each against a tight reference (``sharpness`` at tol 1e-10). PyHessian is installed only
   for this benchmark (``pip install pyhessian``), never a dependency. It sets the model to
   eval mode, so the comparison uses VGG-A without BN, where train and eval mode agree.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from landscape.data import load_cifar10_mini
from landscape.models import build_model
from landscape.probes import WeightStats, sharpness
from landscape.train import SweepConfig, run_sweep


def sweep_seconds(config: SweepConfig) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        run_sweep(config, str(Path(tmp) / "b.h5"))
        return time.perf_counter() - started


def overhead(device: str, width: float, steps: int, repeats: int) -> list[str]:
    """Side-by-side sweep times: plain, + lambda_max every 100 steps, + weight stats."""
    base = SweepConfig(models=("vgg_a_bn",), lrs=(0.1,), steps=steps, dataset="cifar10-mini",
                       width=width, device=device, probe_every=100, grid="sequential")
    variants = {"plain (probe every 100)": base,
                "+ lambda_max every 100": SweepConfig(**{**base.__dict__, "sharpness_every": 100,
                                                         "weight_stats": False}),
                "+ weight stats every step": SweepConfig(**{**base.__dict__,
                                                            "weight_stats": True})}
    times = {name: [] for name in variants}
    sweep_seconds(SweepConfig(**{**base.__dict__, "steps": 2}))  # warm-up: data, kernels
    for _ in range(repeats):
        for name, config in variants.items():
            times[name].append(sweep_seconds(config))
            print(f"  {name}: {times[name][-1]:.1f} s", file=sys.stderr)
    plain = statistics.median(times["plain (probe every 100)"])
    rows = [f"| sweep ({steps} steps, vgg_a_bn, width {width:g}, {device}) | median s "
            f"(all runs) | ratio to plain |", "|---|---|---|"]
    for name, values in times.items():
        med = statistics.median(values)
        rows.append(f"| {name} | {med:.1f} ({', '.join(f'{v:.1f}' for v in values)}) | "
                    f"{med / plain:.3f}x |")
    return rows


def one_batch(width: float, device: str, model_name: str, batch: int = 128):
    data = load_cifar10_mini()
    torch.manual_seed(0)
    model = build_model(model_name, width=width).to(device)
    x = torch.as_tensor(data.normalize(data.x_train[:batch])).to(device)
    y = torch.as_tensor(data.y_train[:batch]).long().to(device)
    return model, x, y


def step_vs_probe(width: float, device: str, repeats: int) -> list[str]:
    """Steady state: one SGD step vs one sharpness probe (k = 1, tol 1e-3, warm start)."""
    model, x, y = one_batch(width, device, "vgg_a_bn")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def step():
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(3):
        step()
    warm = sharpness(model, F.cross_entropy, x, y, keep_vectors=True).eigenvectors[:, 0]
    steps, probes, products = [], [], []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(5):
            step()
        steps.append((time.perf_counter() - started) / 5)
        started = time.perf_counter()
        record = sharpness(model, F.cross_entropy, x, y, v0=warm, keep_vectors=True)
        probes.append(time.perf_counter() - started)
        warm, products = record.eigenvectors[:, 0], products + [record.iterations]
    s, p = statistics.median(steps), statistics.median(probes)
    return [f"| steady state (vgg_a_bn, width {width:g}, batch 128, {device}) | median |",
            "|---|---|",
            f"| one training step | {s * 1e3:.0f} ms |",
            f"| one sharpness probe (k=1, tol 1e-3, warm start; +2 products: residual, gHg) | "
            f"{p * 1e3:.0f} ms = {p / s:.1f} steps; Lanczos products {products} |",
            f"| projected overhead every 100 steps | {1 + p / s / 100:.3f}x |"]


def weight_stats_cost(width: float, device: str, repeats: int, steps: int = 20) -> list[str]:
    """Steady state: blocks of SGD steps with and without ``WeightStats`` attached, alternated,
    rows drained after every step (the CPU loop's host sync)."""
    model, x, y = one_batch(width, device, "vgg_a_bn")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def block(stats) -> float:
        started = time.perf_counter()
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            if stats is not None:
                stats.pop()
        if device == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - started) / steps

    block(None)
    plain, with_stats = [], []
    for _ in range(repeats):
        plain.append(block(None))
        stats = WeightStats(model).attach(opt)
        with_stats.append(block(stats))
        stats.detach()
    p, w = statistics.median(plain), statistics.median(with_stats)
    return [f"| weight statistics (vgg_a_bn, width {width:g}, batch 128, {device}; {repeats} "
            f"alternated blocks of {steps} steps) | median ms per step |", "|---|---|",
            f"| plain SGD step | {p * 1e3:.1f} |", f"| with WeightStats, drained every step | "
            f"{w * 1e3:.1f} = {w / p:.3f}x |"]


def versus_pyhessian(width: float, device: str, repeats: int) -> list[str]:
    try:
        import pyhessian
        hessian_module = sys.modules["pyhessian.hessian"]
    except ImportError:
        return ["PyHessian not installed (pip install pyhessian): comparison skipped"]
    model, x, y = one_batch(width, device, "vgg_a")
    exact = float(sharpness(model, F.cross_entropy, x, y, tol=1e-10).lambda_max[0])
    counted = {"n": 0}
    original = hessian_module.hessian_vector_product

    def counting(*args, **kwargs):
        counted["n"] += 1
        return original(*args, **kwargs)

    hessian_module.hessian_vector_product = counting
    ours, theirs = [], []
    try:
        for r in range(repeats):
            started = time.perf_counter()
            record = sharpness(model, F.cross_entropy, x, y, tol=1e-3, seed=r)
            ours.append((time.perf_counter() - started, float(record.lambda_max[0]),
                         record.iterations + 2))
            torch.manual_seed(r)
            counted["n"] = 0
            started = time.perf_counter()
            value = pyhessian.hessian(model, F.cross_entropy, data=(x, y),
                                      cuda=device == "cuda").eigenvalues(top_n=1, tol=1e-3)[0][0]
            theirs.append((time.perf_counter() - started, float(value), counted["n"]))
            model.zero_grad(set_to_none=True)  # PyHessian's backward wrote .grad
        # ARPACK's tol bounds the Ritz residual, so its eigenvalue is far more accurate than
        # 1e-3; PyHessian at a tighter tolerance, for the time it takes to get as close.
        tight = []
        for r in range(2):
            torch.manual_seed(r)
            counted["n"] = 0
            started = time.perf_counter()
            value = pyhessian.hessian(model, F.cross_entropy, data=(x, y),
                                      cuda=device == "cuda").eigenvalues(
                top_n=1, tol=1e-6, maxIter=1000)[0][0]
            tight.append((time.perf_counter() - started, float(value), counted["n"]))
            model.zero_grad(set_to_none=True)
    finally:
        hessian_module.hessian_vector_product = original
    rows = [f"| lambda_max, vgg_a width {width:g}, batch 128, {device}, rel tol 1e-3 "
            f"(reference {exact:.6g}) | median s | Hessian-vector products | median s per product "
            f"| rel. error (max over {repeats} repeats) |", "|---|---|---|---|---|"]
    for name, results in (("landscape sharpness (Lanczos, ARPACK)", ours),
                          ("PyHessian eigenvalues (power iteration)", theirs),
                          ("PyHessian at tol 1e-6 (2 repeats)", tight)):
        seconds = statistics.median(t for t, _, _ in results)
        error = max(abs(v - exact) / abs(exact) for _, v, _ in results)
        products = sorted({n for _, _, n in results})
        per_product = statistics.median(t / n for t, _, n in results)
        rows.append(f"| {name} | {seconds:.2f} | {products} | {per_product:.3f} | {error:.1e} |")
    speedup = statistics.median(t for t, _, _ in theirs) / statistics.median(t for t, _, _ in ours)
    rows.append(f"| speed-up over PyHessian at tol 1e-3 | {speedup:.2f}x | | | |")
    return rows


def curvature_tables(device: str, repeats: int = 3, steps: int = 200,
                     sweep: bool = True) -> list[list[str]]:
    """The curvature benchmark's tables (``python benchmarks/bench.py --suite curvature``)."""
    width = 1.0 if device == "cuda" else 0.25
    if device == "cpu":
        torch.set_num_threads(1)  # a shared 2-core machine: one thread per process is fastest
    tables = [versus_pyhessian(width, device, max(repeats, 5)),
              step_vs_probe(width, device, max(repeats, 5)),
              weight_stats_cost(width, device, max(repeats, 7))]
    if sweep:
        tables.append(overhead(device, width, steps, repeats))
    return tables
