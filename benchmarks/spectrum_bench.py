"""Benchmark of the spectral density (issue 26): one SLQ density against its floor and PyHessian.

    python benchmarks/bench.py --suite spectrum          # CPU: VGG-A width 0.25, batch 128
    python benchmarks/bench.py --suite spectrum --device cuda   # full width on a GPU

One density of ``iterations`` Lanczos steps (default 90) on one model and batch, three ways,
side by side in one process, alternated (A B C A B C ...), medians reported:

- floor: building the double-backward graph and ``iterations`` Hessian-vector products, timed
  alone (``curvature.HessianOperator``): what any SLQ must pay;
- ``probes.spectrum`` (full reorthogonalization, the density on its grid, outliers, gradient
  share): the target is within 1.2x of the floor;
- PyHessian's ``hessian(...).density(iter, n_v=1)`` (when installed: ``pip install pyhessian``,
  for this benchmark only, never a dependency). PyHessian 0.1 calls ``torch.eig``, removed from
  torch 2: the benchmark gives it ``torch.linalg.eigh`` under that name (T is symmetric), which
  changes nothing else. PyHessian puts the model in eval mode, so the model is VGG-A without BN
  (train and eval mode agree there).

Agreement: the two densities' moments sum_i tau_i theta_i^k (k = 1, 2), each an estimate of
tr(H^k)/n from one Rademacher vector: they agree within the spread of that estimate, which the
table gives as the spread of ours over the repeats (different vectors).
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from landscape.data import load_cifar10_mini
from landscape.models import build_model
from landscape.probes import (HessianOperator, SpectrumSettings, no_trace, spectrum,
                              trainable_parameters)


def one_batch(width: float, device: str, batch: int = 128):
    data = load_cifar10_mini()
    torch.manual_seed(0)
    model = build_model("vgg_a", width=width).to(device)
    x = data.normalize(data.x_train[:batch]).to(device)
    return model, x, data.y_train[:batch].to(device)


def floor_seconds(model, x, y, iterations: int) -> float:
    """The graph and ``iterations`` Hessian-vector products, nothing else."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    started = time.perf_counter()
    with no_trace(model, x.device):
        op = HessianOperator(model, F.cross_entropy, x, y, trainable_parameters(model))
        v = torch.ones(op.size, device=x.device) / op.size ** 0.5
        for _ in range(iterations):
            v = op.matvec(v)
            v = v / torch.linalg.vector_norm(v)
    sync()
    return time.perf_counter() - started


def moments(values: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    finite = np.isfinite(values)
    v, w = values[finite], weights[finite]
    return float((w * v).sum()), float((w * v ** 2).sum())


def import_pyhessian():
    try:
        import pyhessian
    except ImportError:
        return None
    def eig(matrix, eigenvectors=True):  # PyHessian 0.1's torch.eig (see the module docstring)
        values, vectors = torch.linalg.eigh(matrix)
        return torch.stack([values, torch.zeros_like(values)], 1), vectors

    torch.eig = eig  # torch 2 keeps a stub that raises
    return pyhessian


def spectrum_tables(device: str, iterations: int = 90, repeats: int = 3) -> list[list[str]]:
    width = 1.0 if device == "cuda" else 0.25
    if device == "cpu":
        torch.set_num_threads(1)  # a shared 2-core machine: one thread per process is fastest
    model, x, y = one_batch(width, device)
    pyhessian = import_pyhessian()
    settings = SpectrumSettings(iterations=iterations)
    spectrum(model, F.cross_entropy, x[:8], y[:8], SpectrumSettings(iterations=3))  # warm-up
    times = {"floor": [], "ours": [], "pyhessian": []}
    ours_moments, theirs_moments = [], []
    for r in range(repeats):
        times["floor"].append(floor_seconds(model, x, y, iterations))
        started = time.perf_counter()
        record = spectrum(model, F.cross_entropy, x, y, settings, seed=r)
        times["ours"].append(time.perf_counter() - started)
        ours_moments.append(moments(record.ritz_values[0], record.ritz_weights[0]))
        if pyhessian is not None:
            torch.manual_seed(r)
            started = time.perf_counter()
            values, weights = pyhessian.hessian(model, F.cross_entropy, data=(x, y),
                                                cuda=device == "cuda").density(iter=iterations)
            times["pyhessian"].append(time.perf_counter() - started)
            theirs_moments.append(moments(np.asarray(values[0]), np.asarray(weights[0])))
            model.zero_grad(set_to_none=True)  # PyHessian's backward wrote .grad
    floor = statistics.median(times["floor"])
    params = sum(p.numel() for p in model.parameters())
    rows = [f"| one density, vgg_a width {width:g} ({params:,} parameters), batch 128, {device}, "
            f"{iterations} iterations, {repeats} repeats | median s | x floor |", "|---|---|---|",
            f"| floor: graph + {iterations} Hessian-vector products alone | {floor:.2f} | 1.00 |"]
    ours = statistics.median(times["ours"])
    rows.append(f"| landscape spectrum (full reorthogonalization) | {ours:.2f} | "
                f"{ours / floor:.2f} |")
    if times["pyhessian"]:
        theirs = statistics.median(times["pyhessian"])
        rows.append(f"| PyHessian density(iter={iterations}, n_v=1) | {theirs:.2f} | "
                    f"{theirs / floor:.2f} |")
    else:
        rows.append("| PyHessian | not installed (pip install pyhessian): skipped | |")
    table = [rows]
    if theirs_moments:
        mine, other = np.asarray(ours_moments), np.asarray(theirs_moments)
        table.append(["| moment (one Rademacher vector each) | landscape median | PyHessian median "
                      "| spread of ours over repeats (max - min) |", "|---|---|---|---|",
                      *(f"| sum tau theta^{k + 1} | {np.median(mine[:, k]):.4g} | "
                        f"{np.median(other[:, k]):.4g} | {np.ptp(mine[:, k]):.3g} |"
                        for k in range(2))])
    return table


if __name__ == "__main__":
    for lines in spectrum_tables("cuda" if "--cuda" in sys.argv else "cpu"):
        print("\n".join(lines) + "\n")
