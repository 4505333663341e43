"""The landscape along the gradient (Santurkar et al. 2018, section 3.1, Fig. 4).

With theta the parameters, B the batch, L the loss on B and g = grad L(theta):

    loss[i]      = L(theta - eta_i g)
    grad_diff[i] = || grad L(theta - eta_i g) - g ||_2          (gradient predictiveness)
    beta         = max_i grad_diff[i] / (eta_i ||g||_2)          (effective beta-smoothness)

``along_gradient`` takes a model and a batch and returns a ``LandscapeRecord``; it leaves no
trace (``context.no_trace``) and knows nothing of files, plots or the CLI.

One function is measured: for a model that draws random numbers in training mode (dropout,
noise), g and every eta point see the same draws (``context.probe_forward``).

Steps below the parameters' resolution. theta - eta g is rounded to the parameters' dtype; when
eta |g| is small next to |theta| the step actually taken is not eta g (at eta ||g|| far below
float32's resolution, theta - eta g == theta and grad_diff is 0 or rounding noise). Each point's
rounding error ||(theta - eta g) - theta + eta g|| / (eta ||g||) is measured; above
``STEP_ROUNDING_LIMIT`` (1%: at a real learning rate such as 0.05 it is ~1e-5) that point's
grad_diff is NaN, beta is the maximum over the other points (NaN when none is left), and a
``StepResolutionWarning`` says so, once per process.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .context import (LossFn, batch_loss, buffer_clones, contiguous_inputs, in_dtype,
                      loss_and_grad, no_trace, trainable_parameters)

PROBE_DTYPES = {"float32": torch.float32, "float64": torch.float64}

# Largest fraction of a step (in norm) that rounding theta - eta g may lose or add before the
# point's grad_diff is not counted: measured ~1e-5 at lr 0.05 on VGG-A, ~0.8-1 at lr 1e-12.
STEP_ROUNDING_LIMIT = 0.01


class StepResolutionWarning(UserWarning):
    """Some step eta g of a probe is below the resolution of the parameters' dtype."""


@functools.cache  # once per process: a sweep probes thousands of times
def _warn_of_step_resolution() -> None:
    # Not Python's "default"/"once" filters: every catch_warnings block (torch enters some as
    # it runs) resets their record of what was shown.
    warnings.warn("along_gradient: at some step sizes eta, eta * g is below the resolution of "
                  "the parameters' dtype (rounding theta - eta * g changes the step by more "
                  f"than {STEP_ROUNDING_LIMIT:.0%}); their grad_diff is NaN and beta leaves them "
                  "out. Use larger step sizes (learning rate, etas) or measure the model in "
                  "float64.", StepResolutionWarning, stacklevel=4)


@dataclass
class LandscapeRecord:
    """The landscape along the gradient at one point, for k step sizes ``eta``."""

    eta: np.ndarray  # (k,) absolute step sizes
    loss: np.ndarray  # (k,) L(theta - eta g)
    grad_diff: np.ndarray  # (k,) ||grad L(theta - eta g) - g||; NaN: step lost to rounding
    beta: float  # max_i grad_diff / (eta_i ||g||) over the points not lost to rounding
    grad_norm: float  # ||g||
    loss_at_theta: float  # L(theta)
    step: int | None = None  # training step, when taken inside a training loop
    lr: float | None = None  # the optimizer's learning rate at that step, when known
    # By layer (the module owning each parameter: conv, linear, BN), from the same gradients:
    # sum over layers of grad_diff_layer[i] ** 2 is grad_diff[i] ** 2.
    layer: tuple[str, ...] = ()  # (L,) module names
    grad_diff_layer: np.ndarray | None = None  # (k, L) ||grad_l L(theta - eta g) - g_l||
    grad_norm_layer: np.ndarray | None = None  # (L,) ||g_l||


def _tensor_norms(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """(T,) the norm of each tensor: the global norm's parts, kept for the split by layer."""
    return torch.stack([torch.linalg.vector_norm(t) for t in tensors])


POINT_MODES = ("auto", "sequential", "vmap", "streams")


def evaluate_points(model: nn.Module, loss_fn: LossFn, inputs, targets,
                    params: dict[str, torch.Tensor], grad: Sequence[torch.Tensor],
                    etas: torch.Tensor, points: str = "auto",
                    by_tensor: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and ||grad L(theta - eta g) - g|| at every eta: the one place the points are evaluated.

    Returns two (k,) tensors on the parameters' device; with ``by_tensor`` the second is
    (k, T) instead: that norm for each of the T parameter tensors (its norm over T is the
    global one). ``points`` says how the k points run:
    ``sequential`` one after another; ``vmap`` in one ``torch.func.vmap`` pass over stacked
    perturbed parameters; ``streams`` each on its own CUDA stream, concurrently (on the CPU:
    sequential). None of them synchronizes with the host, so each can be recorded in a CUDA
    graph. ``auto`` (default) is what measured fastest (benchmarks/): on the CPU, sequential
    (vmap's grouped convolutions are slower there); on a GPU eagerly, vmap (fewer launches),
    falling back to sequential for models vmap cannot trace. Recorded in a CUDA graph, where
    launches cost nothing, streams is the fastest (``graphs.CapturedProbe``).
    """
    if points not in POINT_MODES:
        raise ValueError(f"points must be one of {', '.join(POINT_MODES)}, got {points!r}")
    on_cuda = next(iter(params.values())).device.type == "cuda"
    if points == "auto" and not on_cuda:
        points = "sequential"
    losses, diffs = _points_by_tensor(model, loss_fn, inputs, targets, params, grad, etas,
                                      points, on_cuda)
    return losses, diffs if by_tensor else torch.linalg.vector_norm(diffs, dim=1)


def _points_by_tensor(model, loss_fn, inputs, targets, params, grad, etas, points, on_cuda):
    if points == "auto":
        try:
            return _evaluate_points_vmap(model, loss_fn, inputs, targets, params, grad, etas)
        except (RuntimeError, NotImplementedError):
            points = "sequential"
    if points == "streams" and on_cuda:
        return _evaluate_points_on_streams(model, loss_fn, inputs, targets, params, grad, etas)
    if points == "vmap":
        return _evaluate_points_vmap(model, loss_fn, inputs, targets, params, grad, etas)
    evaluated = [_evaluate_point(model, loss_fn, inputs, targets, params, grad, eta)
                 for eta in etas]
    return torch.stack([e[0] for e in evaluated]), torch.stack([e[1] for e in evaluated])


def step_rounding(params: dict[str, torch.Tensor], grad: Sequence[torch.Tensor],
                  etas: torch.Tensor) -> torch.Tensor:
    """(k,) ||(theta - eta g) - theta + eta g|| / (eta ||g||): the fraction of each step that
    rounding to the parameters' dtype loses or adds (0 exact, 1 when theta - eta g == theta)."""
    # Flat: a few kernels per eta, not a few per parameter tensor (eager GPU probes are
    # launch-bound). theta - eta * g rounds exactly as the points' moved parameters do.
    theta = torch.cat([p.reshape(-1) for p in params.values()])
    g = torch.cat([t.reshape(-1) for t in grad])
    errors = []
    for eta in etas:
        step = eta * g
        errors.append(torch.linalg.vector_norm(((theta - step) - theta) + step))
    return torch.stack(errors) / (etas * torch.linalg.vector_norm(g))


def _evaluate_point(model, loss_fn, inputs, targets, params, grad, eta):
    moved = {n: p - eta * g for (n, p), g in zip(params.items(), grad)}
    loss, grad_there = loss_and_grad(model, loss_fn, inputs, targets, moved)
    return loss, _tensor_norms([a - b for a, b in zip(grad_there, grad)])


_SIDE_STREAMS: dict[torch.device, list] = {}


def _evaluate_points_on_streams(model, loss_fn, inputs, targets, params, grad, etas):
    """Each eta point's forward/backward on its own CUDA stream: k narrow passes that each
    leave the GPU partly idle overlap (and, recorded in a CUDA graph, become parallel branches)."""
    device = next(iter(params.values())).device
    main = torch.cuda.current_stream(device)
    streams = _SIDE_STREAMS.setdefault(device, [])
    streams.extend(torch.cuda.Stream(device) for _ in range(len(etas) - len(streams)))
    evaluated = []
    for i, stream in enumerate(streams[:len(etas)]):
        stream.wait_stream(main)
        with torch.cuda.stream(stream):
            evaluated.append(_evaluate_point(model, loss_fn, inputs, targets, params, grad,
                                             etas[i]))
    for stream in streams[:len(etas)]:
        main.wait_stream(stream)
    for loss, diff in evaluated:  # made on side streams, read and freed on this one
        loss.record_stream(main)
        diff.record_stream(main)
    return torch.stack([e[0] for e in evaluated]), torch.stack([e[1] for e in evaluated])


def _evaluate_points_vmap(model, loss_fn, inputs, targets, params, grad, etas):
    """All eta points in one vmapped forward/backward; BN buffers are per-point clones.
    ``randomness="same"``: every point draws the dropout masks of one unbatched pass."""
    k = len(etas)
    # vmap supports only the default memory format: channels-last tensors become contiguous.
    inputs = contiguous_inputs(inputs)
    moved = {n: (p.unsqueeze(0) - etas.view(-1, *([1] * p.ndim)) * g.unsqueeze(0)).contiguous()
             for (n, p), g in zip(params.items(), grad)}
    # Batched clones: BatchNorm's in-place running-statistic updates land in them, per point.
    dtype = next(iter(params.values())).dtype
    buffers = {n: b.unsqueeze(0).repeat(k, *([1] * b.ndim))
               for n, b in buffer_clones(model, dtype).items()}

    def loss_at(p, b):
        return batch_loss(model, loss_fn, inputs, targets, p, b)

    grads_there, losses = torch.func.vmap(torch.func.grad_and_value(loss_at),
                                          randomness="same")(moved, buffers)
    norms = torch.stack([torch.linalg.vector_norm((grads_there[n] - g.unsqueeze(0)).reshape(k, -1),
                                                  dim=1) for n, g in zip(params, grad)], 1)
    return losses.detach(), norms.detach()


def _as_float64(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def along_gradient(model: nn.Module, loss_fn: LossFn, inputs, targets, etas: Sequence[float],
                   points: str = "auto",
                   at_theta: tuple[torch.Tensor, Sequence[torch.Tensor]] | None = None,
                   dtype: torch.dtype | None = None) -> LandscapeRecord:
    """Loss, gradient predictiveness and effective beta-smoothness along the gradient on a batch.

    ``etas`` are absolute step sizes (e.g. ``lr * [0.5, 1, 2, 4]`` as in the paper).
    ``inputs`` is what the model is called with: a tensor is its one argument, a tuple its
    positional arguments, a dict its keyword arguments, a ``ModelInputs(args, kwargs)`` both;
    ``Batches`` (with ``targets=None``) is an objective summed over several weighted batches
    (what a step with gradient accumulation descends). ``loss_fn(outputs, targets)``; bind
    extra loss arguments with ``functools.partial``.
    BatchNorm uses the batch's statistics (unless ``ModelInputs.training`` gives the modes);
    the model, its ``.grad``, its buffers and the RNG are left exactly as they were. A model
    that draws random numbers (dropout, noise) draws the same ones for g and at every point:
    the probe measures one deterministic function. A point whose step eta g is lost to
    rounding (see the module docstring) gets a NaN grad_diff, with a ``StepResolutionWarning``.
    ``points`` chooses how the eta points are evaluated (sequential, vmap, streams or auto: see
    ``evaluate_points``); the numbers agree to float rounding whichever it is.

    ``at_theta = (L(theta), g)``, when the caller already has them in full float32 (a training
    step's loss and ``.grad`` on this very batch, one per trainable parameter in
    ``named_parameters`` order), saves the probe its first forward/backward pass: the probe
    then costs k gradient evaluations instead of k + 1. Not for a model that draws random
    numbers: the training step's draws are not the probe's.

    ``dtype`` (e.g. ``torch.float64``): measure in that precision, on copies of the parameters,
    buffers and floating inputs/targets in it (the model itself stays as it is). Near a saddle
    of a small model, float32 rounding in ||grad L(theta - eta g) - g|| inflates beta_eff; a
    ``dtype`` other than the parameters' ignores ``at_theta`` (float32 values).
    """
    if points not in POINT_MODES:
        raise ValueError(f"along_gradient: points must be one of {', '.join(POINT_MODES)}, "
                         f"got {points!r}")
    params = trainable_parameters(model)
    if not params:
        raise ValueError("along_gradient: the model has no trainable parameters")
    device = next(iter(params.values())).device
    if at_theta is not None and (len(at_theta[1]) != len(params) or any(
            a.shape != b.shape for a, b in zip(at_theta[1], params.values()))):
        raise ValueError("along_gradient: at_theta's gradient does not match the model's "
                         "trainable parameters")
    model_dtype = next(iter(params.values())).dtype
    dtype = dtype or model_dtype
    if dtype != model_dtype:
        at_theta = None
    eta_t = torch.as_tensor(list(etas), dtype=dtype, device=device)
    if eta_t.ndim != 1 or len(eta_t) == 0 or not bool(((eta_t > 0) & eta_t.isfinite()).all()):
        raise ValueError(f"along_gradient: etas must be positive finite numbers, got {list(etas)}")
    with no_trace(model, device):
        tensors = probe_tensors(model, loss_fn, inputs, targets, eta_t, points, at_theta)
    return record_from(eta_t, *tensors, names=list(params))


def probe_tensors(model: nn.Module, loss_fn: LossFn, inputs, targets, etas: torch.Tensor,
                  points: str = "auto",
                  at_theta: tuple[torch.Tensor, Sequence[torch.Tensor]] | None = None
                  ) -> tuple[torch.Tensor, ...]:
    """``along_gradient``'s arithmetic alone, on device tensors: L(theta), loss (k,),
    grad_diff (k,), ||g||, the steps' rounding (k,) (``step_rounding``), and the parts of
    grad_diff and ||g|| by parameter tensor, (k, T) and (T,) (``record_from`` sums them into
    layers). It makes no host synchronization, so that it can be recorded as a CUDA graph. Call
    it inside ``no_trace(model, device)``; ``etas`` is a (k,) tensor of step sizes, in the dtype
    the probe measures in (the parameters' dtype, or another one: then parameters, buffers and
    floating inputs/targets are copies in it)."""
    params = {n: in_dtype(p, etas.dtype) for n, p in trainable_parameters(model).items()}
    inputs, targets = in_dtype(inputs, etas.dtype), in_dtype(targets, etas.dtype)
    if at_theta is None:
        loss0, g = loss_and_grad(model, loss_fn, inputs, targets, params)
    else:
        loss0, g = at_theta[0].detach(), [t.detach() for t in at_theta[1]]
    losses, diff_parts = evaluate_points(model, loss_fn, inputs, targets, params, g, etas, points,
                                         by_tensor=True)
    g_parts = _tensor_norms(g)
    return (loss0, losses, torch.linalg.vector_norm(diff_parts, dim=1),
            torch.linalg.vector_norm(g_parts), step_rounding(params, g, etas), diff_parts, g_parts)


def record_from(etas: torch.Tensor, loss0: torch.Tensor, losses: torch.Tensor,
                diffs: torch.Tensor, g_norm: torch.Tensor, rounding: torch.Tensor,
                diff_parts: torch.Tensor | None = None, g_parts: torch.Tensor | None = None,
                names: Sequence[str] | None = None) -> LandscapeRecord:
    """The typed record (float64 on the host) from a probe's device tensors; points whose step
    is lost to rounding (``rounding`` > ``STEP_ROUNDING_LIMIT``) get a NaN grad_diff. With the
    parts by parameter tensor and the parameters' ``names``, also split by layer
    (``parameter_layers``)."""
    eta_np, diff_np, g_norm_f = _as_float64(etas), _as_float64(diffs), float(g_norm)
    lost = _as_float64(rounding) > STEP_ROUNDING_LIMIT
    if lost.any():
        _warn_of_step_resolution()
        diff_np = np.where(lost, math.nan, diff_np)
    kept = ~lost
    beta = (float(np.max(diff_np[kept] / (eta_np[kept] * g_norm_f)))
            if g_norm_f > 0 and kept.any() else math.nan)
    record = LandscapeRecord(eta=eta_np, loss=_as_float64(losses), grad_diff=diff_np, beta=beta,
                             grad_norm=g_norm_f, loss_at_theta=float(loss0))
    if diff_parts is not None and g_parts is not None and names is not None:
        layers, index = parameter_layers(names)
        record.layer = tuple(layers)
        split = _sum_by_layer(_as_float64(diff_parts) ** 2, index, len(layers))
        record.grad_diff_layer = np.where(lost[:, None], math.nan, split)
        record.grad_norm_layer = _sum_by_layer(_as_float64(g_parts) ** 2, index, len(layers))
    return record


def parameter_layers(names: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Layers (the module owning each parameter, e.g. ``features.0`` for ``features.0.weight``),
    in first-seen order, and each parameter's index among them."""
    owners = [name.rpartition(".")[0] or name for name in names]
    layers = list(dict.fromkeys(owners))
    return layers, np.asarray([layers.index(o) for o in owners], np.int64)


def _sum_by_layer(squares: np.ndarray, index: np.ndarray, count: int) -> np.ndarray:
    """sqrt of the sums of squares over each layer's parameters (last axis: tensors -> layers)."""
    summed = np.zeros(squares.shape[:-1] + (count,))
    for t, layer in enumerate(index):
        summed[..., layer] += squares[..., t]
    return np.sqrt(summed)
