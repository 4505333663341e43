"""The Hessian's eigenvalue density by stochastic Lanczos quadrature (SLQ), its outliers, and
how much of the gradient lies in their eigenspace (Ghorbani, Krishnan & Xiao, ICML 2019).

For one start vector v (Rademacher, unit norm), m Lanczos steps on H build the tridiagonal
T_m = Q^T H Q; with T_m = S diag(theta) S^T, the Ritz values theta_i and weights
tau_i = S_{1i}^2 are an m-point Gauss quadrature of the spectral measure of H seen from v:
sum_i tau_i f(theta_i) = v^T f(H) v exactly for every polynomial f of degree <= 2m - 1. Averaged
over independent v, E[v^T f(H) v] = tr f(H) / n: the quadrature is an unbiased estimate of the
density phi(t) = (1/n) sum_j delta(t - lambda_j), drawn smoothed by a Gaussian of variance sigma2.

Defaults are PyHessian's ``density()``: 100 iterations, one vector, sigma^2 = 1e-5 x
max(1, lambda_max - lambda_min), a grid padded by 0.01 on each side. One difference, stated:
the grid has ``grid_points`` points (PyHessian: 10,000, too many to store per probe) and sigma
is at least one grid spacing, so the stored curve resolves every peak it draws.

Full reorthogonalization (default): every new Lanczos vector is orthogonalized twice against all
earlier ones, so no ghost copies of converged eigenvalues appear and the top Ritz vectors are
usable. Memory: iterations x parameters numbers in the parameters' dtype (100 x 9.2 M float32 =
3.7 GB for VGG-A), on the parameters' device. ``reorthogonalize=False`` is the bounded-memory
mode: the three-term recurrence with three vectors; its quadrature stays correct (Paige: ghost
copies of a converged Ritz value share its weight) but ghosts are merged, and Ritz values of
weight below 1e-6 / n left out, before outliers are counted; no gradient fraction (NaN).

Outliers, the rule: in each run's distinct Ritz values sorted descending, theta_1 >= theta_2 >=
... >= theta_m, only the values above the bulk -- the smallest set from the top holding
``bulk_mass`` of the quadrature weight -- are candidates; the outliers are theta_1 .. theta_j
for the largest such j with theta_{j+1} > 0 and theta_j - theta_{j+1} > outlier_gap x
(theta_{j+1} - theta_m): separated from the next value below (the bulk's edge, for the last
outlier) by more than ``outlier_gap`` times the width of the spectrum under it. A gap measured
against that width, not against the edge alone: at initialization a network's bulk edge sits
near 0, where any ratio to it is large, and the Ritz nodes of a continuous tail would all count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from .context import (Batch, Batches, LossFn, ModelInputs, no_trace, trainable_parameters)
from .curvature import HessianOperator

HESSIAN_BN_MODES = ("batch", "running")  # BN on each batch's statistics (train) / running (eval)
PYHESSIAN_OVERHEAD = 0.01  # PyHessian's padding of the density's grid, in eigenvalue units


@dataclass(frozen=True)
class SpectrumSettings:
    """How a density is estimated (defaults: PyHessian's ``density()``, see the module)."""

    iterations: int = 100  # Lanczos steps per vector (fewer when the Krylov space closes)
    vectors: int = 1  # independent start vectors (runs); the density is their mean
    top_k: int = 10  # top Ritz values kept, and eigenspaces the gradient fraction is given for
    grid_points: int = 1024
    sigma2: float = 1e-5  # Gaussian smoothing variance per unit of max(1, spectral width)
    outlier_gap: float = 1.0  # an outlier exceeds the value below it by this x that value
    bulk_mass: float = 0.05  # quadrature weight from the top searched for outliers
    reorthogonalize: bool = True  # full (memory iterations x parameters) or bounded (3 vectors)

    def check(self) -> None:
        for name in ("iterations", "vectors", "top_k", "grid_points"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"spectrum: {name} must be a positive integer, got {value!r}")
        if self.grid_points < 2:
            raise ValueError("spectrum: grid_points must be at least 2")
        if not (self.sigma2 > 0 and self.outlier_gap > 0 and 0 < self.bulk_mass < 1):
            raise ValueError("spectrum: sigma2 and outlier_gap must be positive, bulk_mass in "
                             "(0, 1)")


@dataclass
class SpectrumRecord:
    """The Hessian's eigenvalue density at one point, on one Hessian set."""

    ritz_values: np.ndarray  # (vectors, iterations) ascending per run; NaN past an early stop
    ritz_weights: np.ndarray  # (vectors, iterations) quadrature weights, each row sums to 1
    grid: np.ndarray  # (grid_points,) eigenvalues where the density is drawn
    density: np.ndarray  # (grid_points,) smoothed density, integrating to 1 on the grid
    sigma: float  # the Gaussian's standard deviation
    top: np.ndarray  # (top_k,) largest distinct Ritz values of the first run, descending
    lambda_min: float  # smallest Ritz value over the runs
    trace: float  # n x mean over runs of sum tau theta: Hutchinson with the runs' vectors
    trace_stderr: float  # NaN for one vector
    outliers: int  # the first run's outlier count (the module's rule)
    outlier_counts: np.ndarray  # (vectors,) each run's count
    bulk_edge: float  # the first run's largest Ritz value below its outliers
    grad_fraction: np.ndarray  # (top_k,) ||P_k g||^2 / ||g||^2 in the span of the top 1..k
    grad_in_outliers: float  # that fraction for k = outliers (0 with no outlier)
    grad_norm: float  # ||g|| of the measured loss
    loss: float
    hvps: int  # Hessian-vector products made
    parameters: int
    basis_bytes: int  # memory the Lanczos vectors took (full: iterations x parameters)
    samples: int = 0  # images in the Hessian set (0: not given, e.g. an operator)
    bn: str = "batch"  # HESSIAN_BN_MODES
    repeat: int = 0  # which independent Hessian set (--hessian-repeats)
    step: int | None = None


@dataclass
class LanczosRun:
    """One Lanczos run: Ritz values ascending, their weights, and a vector's coordinates on
    the Ritz vectors."""

    values: np.ndarray
    weights: np.ndarray
    # (m,) y_i . u for the Ritz vectors y_i (ascending as ``values``) of ``project``'s u; None
    # without one or without the basis (bounded memory)
    projection: np.ndarray | None = None


def lanczos(matvec: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor,
            iterations: int, reorthogonalize: bool = True,
            project: torch.Tensor | None = None) -> LanczosRun:
    """``iterations`` Lanczos steps of the symmetric operator ``matvec`` from ``start``; the
    Ritz pairs of T by ``numpy.linalg.eigh`` in float64. Stops early when the Krylov space is
    invariant (beta below 1000 eps of the spectrum's scale). ``project``: a vector whose
    coordinates on the Ritz vectors Q s_i are returned, as s_i^T (Q^T u): no Ritz vector is
    formed (needs the full basis)."""
    size = start.numel()
    q = start / torch.linalg.vector_norm(start)
    basis = (torch.empty(min(iterations, size), size, dtype=q.dtype, device=q.device)
             if reorthogonalize else None)
    alphas, betas, previous, beta = [], [], torch.zeros_like(q), 0.0
    floor = 1e3 * torch.finfo(q.dtype).eps
    for j in range(min(iterations, size)):
        if basis is not None:
            basis[j] = q
        w = matvec(q)
        alpha = float(q @ w)
        w = w - alpha * q - beta * previous
        if basis is not None:  # twice is enough (Kahan-Parlett)
            for _ in range(2):
                w = w - basis[:j + 1].T @ (basis[:j + 1] @ w)
        alphas.append(alpha)
        beta = float(torch.linalg.vector_norm(w))
        scale = max(abs(a) for a in alphas + betas + [beta])
        if j + 1 == min(iterations, size) or beta <= floor * scale:
            break
        betas.append(beta)
        previous, q = q, w / beta
    values, vectors = np.linalg.eigh(_tridiagonal(alphas, betas))
    weights = vectors[0] ** 2
    projection = None
    if project is not None and basis is not None:
        coordinates = (basis[:len(alphas)] @ project.to(q.dtype)).cpu().double().numpy()
        projection = vectors.T @ coordinates
    return LanczosRun(values, weights, projection)


def _tridiagonal(alphas: list[float], betas: list[float]) -> np.ndarray:
    t = np.diag(np.asarray(alphas, np.float64))
    off = np.asarray(betas[:len(alphas) - 1], np.float64)
    return t + np.diag(off, 1) + np.diag(off, -1)


def smoothed_density(values: np.ndarray, weights: np.ndarray, grid_points: int,
                     sigma2: float) -> tuple[np.ndarray, np.ndarray, float]:
    """The mean over runs of sum_i tau_i N(t; theta_i, sigma^2) on a grid (PyHessian's
    padding and sigma, sigma at least one grid step), normalized to integrate to 1."""
    finite = np.isfinite(values)
    low, high = values[finite].min(), values[finite].max()
    grid = np.linspace(low - PYHESSIAN_OVERHEAD, high + PYHESSIAN_OVERHEAD, grid_points)
    variance = max(sigma2 * max(1.0, high - low), (grid[1] - grid[0]) ** 2)
    nodes, mass = values[finite], weights[finite] / len(values)
    density = np.zeros(grid_points)
    for start in range(0, len(nodes), 256):  # bounded memory: grid x 256 at a time
        d = grid[:, None] - nodes[None, start:start + 256]
        density += (np.exp(-d ** 2 / (2 * variance)) * mass[start:start + 256]).sum(1)
    density /= math.sqrt(2 * math.pi * variance)
    return grid, density / (density.sum() * (grid[1] - grid[0])), math.sqrt(variance)


def distinct_ritz(values: np.ndarray, weights: np.ndarray,
                  min_weight: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """One run's Ritz values descending and their weights, copies merged and values of weight
    below ``min_weight`` left out: the weightless ghosts of the bounded mode."""
    order = np.argsort(values)[::-1]
    if (weights >= min_weight).any():
        order = order[weights[order] >= min_weight]
    return _merge_ghosts(values[order], weights[order])


def count_outliers(theta: np.ndarray, tau: np.ndarray, gap: float,
                   bulk_mass: float) -> tuple[int, float]:
    """(outliers, bulk edge) of one run's ``distinct_ritz`` by the module's rule."""
    above = int(np.searchsorted(np.cumsum(tau), bulk_mass))  # theta[:above+1] hold bulk_mass
    count, bottom = 0, theta[-1]
    for j in range(min(above, len(theta) - 1)):
        if theta[j + 1] > 0 and theta[j] - theta[j + 1] > gap * (theta[j + 1] - bottom):
            count = j + 1
    edge = float(theta[count]) if count < len(theta) else math.nan
    return count, edge


def _merge_ghosts(theta: np.ndarray, tau: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Descending Ritz values with copies within 1e-6 of the spread merged (their weights
    added): the ghosts of Lanczos without reorthogonalization (converging copies included)."""
    tol = 1e-6 * max(float(theta[0] - theta[-1]), float(np.abs(theta).max()), 1e-300)
    keep, mass = [theta[0]], [tau[0]]
    for t, w in zip(theta[1:], tau[1:]):
        if keep[-1] - t <= tol:
            mass[-1] += w
        else:
            keep.append(t)
            mass.append(w)
    return np.asarray(keep), np.asarray(mass)


def gradient_fraction(run: LanczosRun, gradient: torch.Tensor | None) -> np.ndarray:
    """||P_k g||^2 / ||g||^2 for the span of the top k = 1..m Ritz vectors (orthonormal);
    NaN where there is no basis, no gradient, or g = 0."""
    norm2 = float(gradient @ gradient) if gradient is not None else 0.0
    if run.projection is None or norm2 == 0:
        return np.full(len(run.values), math.nan)
    order = np.argsort(run.values)[::-1]
    return np.cumsum(run.projection[order] ** 2) / norm2


def rademacher(size: int, generator: torch.Generator, dtype: torch.dtype,
               device: torch.device) -> torch.Tensor:
    return (torch.randint(0, 2, (size,), generator=generator) * 2 - 1).to(device, dtype)


def slq(matvec: Callable[[torch.Tensor], torch.Tensor], size: int, settings: SpectrumSettings,
        generator: torch.Generator, dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
        gradient: torch.Tensor | None = None) -> SpectrumRecord:
    """The density of the symmetric operator ``matvec`` on R^size (see the module); the
    Rademacher start vectors come from ``generator``. ``gradient``: the vector whose share
    in the top eigenspaces is given (NaN without)."""
    settings.check()
    runs = [lanczos(matvec, rademacher(size, generator, dtype, torch.device(device)),
                    settings.iterations, settings.reorthogonalize,
                    project=gradient if i == 0 else None) for i in range(settings.vectors)]
    values = np.full((settings.vectors, settings.iterations), math.nan)
    weights = np.full_like(values, math.nan)
    for i, run in enumerate(runs):
        values[i, :len(run.values)], weights[i, :len(run.values)] = run.values, run.weights
    grid, density, sigma = smoothed_density(values, weights, settings.grid_points,
                                            settings.sigma2)
    # Bounded mode: a ghost's weight is ~1e-30; a true eigenvalue's ~chi2_1 / n, below 1e-6 / n
    # with probability 8e-4.
    min_weight = 0.0 if settings.reorthogonalize else 1e-6 / size
    distinct = [distinct_ritz(r.values, r.weights, min_weight) for r in runs]
    counts = [count_outliers(theta, tau, settings.outlier_gap, settings.bulk_mass)
              for theta, tau in distinct]
    estimates = np.asarray([size * float(r.weights @ r.values) for r in runs])
    shares = gradient_fraction(runs[0], gradient)
    fraction = np.full(settings.top_k, math.nan)
    fraction[:min(settings.top_k, len(shares))] = shares[:settings.top_k]
    outliers = counts[0][0]
    top = np.full(settings.top_k, math.nan)
    first = distinct[0][0][:settings.top_k]
    top[:len(first)] = first
    itemsize = torch.empty((), dtype=dtype).element_size()
    return SpectrumRecord(
        ritz_values=values, ritz_weights=weights, grid=grid, density=density, sigma=sigma,
        top=top, lambda_min=float(np.nanmin(values)), trace=float(estimates.mean()),
        trace_stderr=(float(estimates.std(ddof=1) / math.sqrt(len(estimates)))
                      if len(estimates) > 1 else math.nan),
        outliers=outliers, outlier_counts=np.asarray([c for c, _ in counts], np.int64),
        bulk_edge=counts[0][1], grad_fraction=fraction,
        grad_in_outliers=float(shares[outliers - 1]) if outliers else 0.0,
        grad_norm=math.nan if gradient is None else float(torch.linalg.vector_norm(gradient)),
        loss=math.nan, hvps=sum(len(r.values) for r in runs), parameters=size,
        basis_bytes=(min(settings.iterations, size) if settings.reorthogonalize else 3)
        * size * itemsize)


def hessian_batches(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                    batch_size: int, bn: str = "batch") -> Batches:
    """A Hessian set as one objective: the mean of its batch losses, batches of ``batch_size``
    in order, each evaluated with BN on its own statistics (``bn="batch"``, train mode: what
    SGD sees) or on the running statistics (``"running"``: BN layers in eval mode, every other
    module in train mode, so dropout and noise still draw as in training)."""
    if bn not in HESSIAN_BN_MODES:
        raise ValueError(f"hessian_batches: bn must be one of {', '.join(HESSIAN_BN_MODES)}, "
                         f"got {bn!r}")
    batch_norm = nn.modules.batchnorm._BatchNorm
    training = (None if bn == "batch" else
                tuple(not isinstance(m, batch_norm) for m in model.modules()))
    starts = range(0, len(images), batch_size)
    weight = 1.0 / len(starts)
    return Batches(tuple(Batch(ModelInputs((images[s:s + batch_size],), {}, training),
                               labels[s:s + batch_size], weight) for s in starts))


def spectrum(model: nn.Module, loss_fn: LossFn, inputs, targets,
             settings: SpectrumSettings = SpectrumSettings(), seed: int = 0) -> SpectrumRecord:
    """The Hessian's eigenvalue density (SLQ, see the module) of the loss on a batch, or on a
    Hessian set (``hessian_batches``: ``inputs`` its ``Batches``, ``targets`` None), at the
    model's parameters; the gradient's share of each top eigenspace. Hessian-vector products
    by double backward through one retained graph (``curvature.HessianOperator``: its memory
    is the set's forward graph). Leaves no trace: parameters, ``.grad``, buffers and the
    global RNG untouched (the start vectors come from a generator seeded by ``seed``)."""
    settings.check()
    params = trainable_parameters(model)
    if not params:
        raise ValueError("spectrum: the model has no trainable parameters")
    device = next(iter(params.values())).device
    generator = torch.Generator().manual_seed(seed)
    with no_trace(model, device):
        op = HessianOperator(model, loss_fn, inputs, targets, params)
        record = slq(op.matvec, op.size, settings, generator, op.dtype, device, op.gradient())
        record.loss = float(op.loss.detach())
    if isinstance(inputs, Batches):
        record.samples = sum(len(b.targets) for b in inputs.parts)
        training = model_inputs_training(inputs)
        record.bn = "batch" if training is None else "running"
    else:
        record.samples = len(targets) if isinstance(targets, torch.Tensor) else 0
    return record


def model_inputs_training(inputs: Batches) -> tuple[bool, ...] | None:
    first = inputs.parts[0].inputs
    return first.training if isinstance(first, ModelInputs) else None
