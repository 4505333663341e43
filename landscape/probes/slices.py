"""Slices of the loss landscape: the loss on a line or a plane through the weights.

Li, Xu, Taylor, Studer & Goldstein, "Visualizing the Loss Landscape of Neural Nets" (NeurIPS
2018): with theta the trained weights and d1, d2 directions in weight space, the slice is

    f(a)    = L(theta + a d1)                 (1D)
    f(a, b) = L(theta + a d1 + b d2)          (2D)

on a fixed evaluation set (the same batches at every point). Directions (over the trainable
parameters; buffers are never a direction):

- ``random_direction``: Gaussian entries from a private generator seeded by ``seed`` (drawn in
  float64 on the CPU, so a float32 and a float64 model get the same direction);
- ``pca_directions``: the first two principal components of a trajectory theta_t - theta_end
  (centred, as Li's sklearn PCA), with their explained variance and the trajectory's
  coordinates on that plane;
- ``hessian_directions``: the top Hessian eigenvectors at theta (``curvature.sharpness``);
- ``interpolation_direction``: theta_b - theta_a (a from one saved step, or run, to another).

Scale (``normalize_direction``, for random and Hessian directions, which have none of their
own): ``filter`` (Li: each output filter d_i -- a slice along the first axis of a weight with
two or more axes -- rescaled to the norm of that filter in the weights, ||d_i|| = ||w_i||),
``layer`` (each parameter tensor as a whole), ``none``. The parameters with at most one axis
(biases, BatchNorm's gamma and beta) follow ``bn_params``: ``zero`` (the direction is 0 there:
they stay at theta's values; Li's ``--xignore biasbn``), ``filter`` (the vector rescaled to
the norm of theta's as one filter), ``copy`` (the direction equals theta's values there: what
Li's CLI does by default). PCA and interpolation directions are differences of real weights and
are taken whole (rescaling them would leave the trajectory's plane).

BatchNorm statistics (``bn_mode``): ``batch`` -- train mode, each evaluation batch normalized
by its own statistics, the function the optimizer sees; ``running`` -- eval mode, with the
running statistics re-estimated at every point (reset, then the cumulative average over
every evaluation batch in train mode, ``momentum=None``), since the centre's statistics are
wrong away from it.

The slice leaves no trace (``context.no_trace``): parameters are never written (points are
``functional_call``s), buffers are clones, BatchNorm's momentum is restored, every pass draws
the same random numbers and torch's generators are as they were after it.

Points are evaluated one after another (``points="sequential"``, the CPU's choice: vmap turns
the convolutions into grouped ones, slower there; image models then run channels-last, about
twice as fast on the CPU as the default layout) or in chunks of stacked weights by one
``torch.func.vmap`` pass per evaluation batch (``"vmap"``, the GPU's); ``"auto"`` picks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from .context import LossFn, ModelInputs, buffer_clones, call_model, no_trace, \
    replay_random_draws, trainable_parameters
from .curvature import sharpness

NORMALIZATIONS = ("filter", "layer", "none")
BN_PARAMS = ("zero", "filter", "copy")
BN_MODES = ("batch", "running")
POINT_MODES = ("auto", "sequential", "vmap")
DIRECTIONS = ("random", "pca", "hessian", "interpolate")

Direction = dict[str, torch.Tensor]  # parameter name -> a tensor shaped like it


def _check(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def random_direction(params: Direction, seed: int) -> Direction:
    """Gaussian N(0, 1) entries shaped like ``params``, from a private generator."""
    generator = torch.Generator().manual_seed(int(seed))
    return {n: torch.randn(p.shape, generator=generator, dtype=torch.float64)
            .to(p.device, p.dtype) for n, p in params.items()}


def _rescaled(d: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``d`` scaled to the norm of ``w`` (0 where ``d`` is 0)."""
    norm = torch.linalg.vector_norm(d)
    return d * (torch.linalg.vector_norm(w) / norm) if norm > 0 else torch.zeros_like(d)


def normalize_direction(direction: Direction, weights: Direction, normalization: str = "filter",
                        bn_params: str = "zero") -> Direction:
    """``direction`` rescaled against ``weights`` (see the module docstring)."""
    _check("normalization", normalization, NORMALIZATIONS)
    _check("bn_params", bn_params, BN_PARAMS)
    out = {}
    for name, d in direction.items():
        w = weights[name].to(d.dtype)
        if d.dim() <= 1:
            out[name] = {"zero": torch.zeros_like(d), "copy": w.clone(),
                         "filter": _rescaled(d, w)}[bn_params]
        elif normalization == "filter":
            d_norm = torch.linalg.vector_norm(d.flatten(1), dim=1)
            w_norm = torch.linalg.vector_norm(w.flatten(1), dim=1)
            scale = torch.where(d_norm > 0, w_norm / torch.where(d_norm > 0, d_norm, 1), 0)
            out[name] = d * scale.view(-1, *([1] * (d.dim() - 1)))
        elif normalization == "layer":
            out[name] = _rescaled(d, w)
        else:
            out[name] = d.clone()
    return out


def flatten(direction: Direction, names: Sequence[str] | None = None,
            dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The tensors of a direction as one vector (on the CPU), in the order of ``names``
    (default: its own; a loaded state dict's may differ: safetensors sorts by name)."""
    names = list(direction) if names is None else names
    return torch.cat([direction[n].detach().reshape(-1).to("cpu", dtype) for n in names])


def unflatten(vector: torch.Tensor, like: Direction) -> Direction:
    """A vector as a direction shaped, typed and placed like ``like``."""
    out, offset = {}, 0
    for name, t in like.items():
        out[name] = vector[offset:offset + t.numel()].view(t.shape).to(t.device, t.dtype)
        offset += t.numel()
    return out


@dataclass
class PCAPlane:
    """The plane of a trajectory's first two principal components."""

    directions: list[Direction]  # the two unit components
    explained: np.ndarray  # (2,) their share of the variance
    coords: np.ndarray  # (T, 2) each theta_t - theta_end on the plane


def pca_directions(trajectory: Sequence[Direction], end: Direction) -> PCAPlane:
    """The first two principal components of theta_t - theta_end over ``trajectory`` (centred,
    by the T x T Gram matrix: T snapshots, P parameters, T << P), the explained variance
    ratios and the coordinates of every theta_t - theta_end on the plane."""
    if len(trajectory) < 3:
        raise ValueError(f"pca needs at least 3 saved steps, got {len(trajectory)}")
    rows = torch.stack([flatten(t, list(end)) - flatten(end) for t in trajectory])  # (T, P)
    centred = rows - rows.mean(0)
    values, vectors = torch.linalg.eigh(centred @ centred.T)
    values, vectors = values.flip(0).clamp(min=0), vectors.flip(1)
    if values[1] <= 0:
        raise ValueError("pca: the saved steps lie on a line or a point (no second component)")
    components = (centred.T @ vectors[:, :2]) / values[:2].sqrt()  # (P, 2), orthonormal
    explained = (values[:2] / values.sum()).numpy()
    return PCAPlane([unflatten(c, end) for c in components.T], explained,
                    (rows @ components).numpy())


def project(points: Sequence[Direction], centre: Direction,
            directions: Sequence[Direction]) -> np.ndarray:
    """Least-squares coordinates (T, k) of each point - centre on the directions' span."""
    names = list(centre)
    basis = torch.stack([flatten(d, names) for d in directions], 1)  # (P, k)
    offsets = torch.stack([flatten(p, names) - flatten(centre) for p in points], 1)  # (P, T)
    return torch.linalg.lstsq(basis, offsets).solution.T.numpy()


def hessian_directions(model: nn.Module, loss_fn: LossFn, inputs: Any, targets: Any,
                       k: int = 2, seed: int = 0, tol: float = 1e-3
                       ) -> tuple[list[Direction], np.ndarray]:
    """The top-k Hessian eigenvectors of the loss on (inputs, targets) at the model's weights
    (unit vectors, by ``curvature.sharpness``) and their eigenvalues."""
    record = sharpness(model, loss_fn, inputs, targets, k=k, seed=seed, tol=tol,
                       keep_vectors=True)
    params = trainable_parameters(model)
    return ([unflatten(torch.from_numpy(np.ascontiguousarray(v)), params)
             for v in record.eigenvectors.T], record.lambda_max)


def interpolation_direction(start: Direction, end: Direction) -> Direction:
    """theta_end - theta_start: a = 0 is ``start``, a = 1 is ``end``."""
    return {n: end[n].to(start[n].dtype) - start[n] for n in start}


# ----------------------------------------------------------------------------- evaluation

@dataclass
class PointValues:
    """The loss and accuracy of the evaluation set at each point."""

    loss: np.ndarray  # (N,) mean over the evaluation samples
    accuracy: np.ndarray  # (N,) fraction right (NaN for targets that are not class indices)


def _batchnorms(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def _reset_statistics(model: nn.Module, buffers: dict[str, torch.Tensor]) -> dict:
    """``buffers`` with every BatchNorm's running statistics reset (fresh tensors)."""
    out = dict(buffers)
    for name, _ in _batchnorms(model):
        prefix = f"{name}." if name else ""
        out[prefix + "running_mean"] = torch.zeros_like(buffers[prefix + "running_mean"])
        out[prefix + "running_var"] = torch.ones_like(buffers[prefix + "running_var"])
        out[prefix + "num_batches_tracked"] = torch.zeros_like(
            buffers[prefix + "num_batches_tracked"])
    return out


class _CumulativeStatistics:
    """BatchNorm's momentum None (a cumulative average over the passes) inside; restored."""

    def __init__(self, model: nn.Module):
        self.modules = [m for _, m in _batchnorms(model)]

    def __enter__(self):
        self.saved = [m.momentum for m in self.modules]
        for m in self.modules:
            m.momentum = None

    def __exit__(self, *exc):
        for m, momentum in zip(self.modules, self.saved):
            m.momentum = momentum


def _loss_and_right(loss_fn: LossFn, logits: torch.Tensor, targets: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    right = (logits.argmax(-1) == targets).sum() if not targets.is_floating_point() \
        else torch.tensor(math.nan)
    return loss_fn(logits, targets), right


def _point_sums(model: nn.Module, loss_fn: LossFn, batches, params: Direction,
                buffers: dict[str, torch.Tensor], bn_mode: str, eval_flags) -> tuple[float, float]:
    """Sum over the evaluation batches of n_b L_b and of the right predictions, at ``params``."""
    if bn_mode == "running":
        buffers = _reset_statistics(model, buffers)
        for x, _ in batches:
            replay_random_draws()
            functional_call(model, (params, buffers), (x,))
        call = lambda x: ModelInputs((x,), {}, eval_flags)  # noqa: E731
    else:
        buffers = {n: b.clone() for n, b in buffers.items()}
        call = lambda x: x  # noqa: E731
    loss_sum = right = 0.0
    for x, y in batches:
        replay_random_draws()
        loss, correct = _loss_and_right(loss_fn, call_model(model, call(x), params, buffers), y)
        loss_sum += float(loss) * len(y)
        right += float(correct)
    return loss_sum, right


def evaluate_weights(model: nn.Module, loss_fn: LossFn, batches: Sequence[tuple],
                     weights: Sequence[Direction], bn_mode: str = "batch") -> PointValues:
    """The loss and accuracy of ``batches`` at each parameter set of ``weights`` (the model's
    buffers as the centre's), one after another. Leaves no trace."""
    return _evaluate(model, loss_fn, batches, lambda i: weights[i], len(weights), bn_mode)


def _evaluate(model, loss_fn, batches, params_at, count: int, bn_mode: str) -> PointValues:
    _check("bn_mode", bn_mode, BN_MODES)
    device = next(model.parameters()).device
    total = sum(len(y) for _, y in batches)
    loss, acc = np.empty(count), np.empty(count)
    eval_flags = tuple(False for _ in model.modules())
    with no_trace(model, device), torch.no_grad(), _CumulativeStatistics(model):
        buffers = buffer_clones(model)
        for i in range(count):
            loss_sum, right = _point_sums(model, loss_fn, batches, params_at(i), buffers, bn_mode,
                                          eval_flags)
            loss[i], acc[i] = loss_sum / total, right / total
    return PointValues(loss, acc)


def evaluate_points(model: nn.Module, loss_fn: LossFn, batches: Sequence[tuple],
                    centre: Direction, directions: Sequence[Direction], coords: np.ndarray,
                    bn_mode: str = "batch", points: str = "auto", chunk: int = 16
                    ) -> PointValues:
    """The loss and accuracy of ``batches`` at centre + sum_j coords[i, j] directions[j] for
    each row i of ``coords`` (N, k). ``points``: sequential, vmap (``chunk`` points a pass)
    or auto (vmap on a GPU, else sequential)."""
    _check("points", points, POINT_MODES)
    coords = np.asarray(coords, np.float64).reshape(len(coords), len(directions))
    device = next(iter(centre.values())).device
    if points == "vmap" or (points == "auto" and device.type == "cuda"):
        return _evaluate_vmap(model, loss_fn, batches, centre, directions, coords, bn_mode, chunk)

    if _channels_last_runs(model, batches, centre, device):
        batches = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in batches]
        centre, directions = _channels_last(centre), [_channels_last(d) for d in directions]

    def params_at(i: int) -> Direction:
        return {n: _moved(c, [d[n] for d in directions], coords[i]) for n, c in centre.items()}

    return _evaluate(model, loss_fn, batches, params_at, len(coords), bn_mode)


def _channels_last(params: Direction) -> Direction:
    return {n: t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t
            for n, t in params.items()}


def _channels_last_runs(model: nn.Module, batches: Sequence[tuple], centre: Direction,
                        device: torch.device) -> bool:
    """Whether the sequential points run in channels-last layout: on the CPU, for a model with
    2D convolutions fed image batches, about twice as fast there (oneDNN's convolutions and a
    vectorized max-pooling; the same function, rounded differently), and only if the model
    accepts it (a ``view`` of a channels-last activation fails): tried on two images."""
    images = all(isinstance(x, torch.Tensor) and x.dim() == 4 and x.is_floating_point()
                 for x, _ in batches)
    if device.type != "cpu" or not images or not any(
            isinstance(m, nn.Conv2d) for m in model.modules()):
        return False
    x = batches[0][0][:2].contiguous(memory_format=torch.channels_last)
    with no_trace(model, device), torch.no_grad():
        try:
            replay_random_draws()
            functional_call(model, (_channels_last(centre), buffer_clones(model)), (x,))
        except RuntimeError:
            return False
    return True


def _moved(c: torch.Tensor, ds: Sequence[torch.Tensor], at: Sequence[float]) -> torch.Tensor:
    """c + a_1 d_1 + a_2 d_2 + ..., term by term left to right (the order a test recomputes)."""
    out = c
    for d, a in zip(ds, at):
        out = out + float(a) * d
    return out


def _evaluate_vmap(model, loss_fn, batches, centre, directions, coords, bn_mode,
                   chunk: int) -> PointValues:
    """``chunk`` points at a time: stacked parameters, per-point buffer clones, one vmapped
    pass per batch (``randomness="same"``: every point draws one pass's dropout masks)."""
    _check("bn_mode", bn_mode, BN_MODES)
    device = next(iter(centre.values())).device
    total = sum(len(y) for _, y in batches)
    loss, acc = np.empty(len(coords)), np.empty(len(coords))
    with no_trace(model, device), torch.no_grad(), _CumulativeStatistics(model):
        base = buffer_clones(model)
        if bn_mode == "running":
            base = _reset_statistics(model, base)
        for start in range(0, len(coords), chunk):
            at = torch.as_tensor(coords[start:start + chunk])
            stacked = {n: _stacked(c, [d[n] for d in directions], at) for n, c in centre.items()}
            buffers = {n: b.expand(len(at), *b.shape).clone() for n, b in base.items()}
            sums = _vmap_sums(model, loss_fn, batches, stacked, buffers, bn_mode)
            loss[start:start + len(at)] = sums[0] / total
            acc[start:start + len(at)] = sums[1] / total
    return PointValues(loss, acc)


def _stacked(c: torch.Tensor, ds: Sequence[torch.Tensor], at: torch.Tensor) -> torch.Tensor:
    out = c.expand(len(at), *c.shape)
    for j, d in enumerate(ds):
        out = out + at[:, j].to(c.dtype).to(c.device).view(-1, *([1] * c.dim())) * d
    return out


def _vmap_sums(model, loss_fn, batches, stacked, buffers, bn_mode) -> tuple[np.ndarray, ...]:
    # The batch counters are one for all points (unbatched): BatchNorm's cumulative average
    # reads the count as a number, which vmap allows only of an unbatched tensor.
    dims = {n: None if n.endswith("num_batches_tracked") else 0 for n in buffers}
    buffers = {n: b[0].clone() if dims[n] is None else b for n, b in buffers.items()}

    def statistics(p, b, x):
        functional_call(model, (p, b), (x,))  # writes the running statistics into b

    def value(p, b, x, y):
        return _loss_and_right(loss_fn, functional_call(model, (p, b), (x,)), y)

    if bn_mode == "running":
        model.train()
        for x, _ in batches:
            replay_random_draws()
            torch.func.vmap(statistics, (0, dims, None), None, randomness="same")(
                stacked, buffers, x.contiguous())
        model.eval()  # no_trace puts every module back in train mode at exit
    loss_sum = right = 0
    for x, y in batches:
        replay_random_draws()
        loss, correct = torch.func.vmap(value, (0, dims, None, None), randomness="same")(
            stacked, buffers, x.contiguous(), y)
        loss_sum = loss_sum + loss.double() * len(y)
        right = right + correct.double()
    return loss_sum.cpu().numpy(), right.cpu().numpy()


def grid_coords(axes: Sequence[np.ndarray]) -> np.ndarray:
    """The points of a 1D or 2D grid, (n1 [* n2], k), the last axis fastest."""
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([m.reshape(-1) for m in mesh], 1)
