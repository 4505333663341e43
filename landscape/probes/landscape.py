"""The landscape along the gradient (Santurkar et al. 2018, section 3.1, Fig. 4).

With theta the parameters, B the batch, L the loss on B and g = grad L(theta):

    loss[i]      = L(theta - eta_i g)
    grad_diff[i] = || grad L(theta - eta_i g) - g ||_2          (gradient predictiveness)
    beta         = max_i grad_diff[i] / (eta_i ||g||_2)          (effective beta-smoothness)

``along_gradient`` takes a model and a batch and returns a ``LandscapeRecord``; it leaves no
trace (``context.no_trace``) and knows nothing of files, plots or the CLI.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from .context import LossFn, loss_and_grad, no_trace, trainable_parameters


@dataclass
class LandscapeRecord:
    """The landscape along the gradient at one point, for k step sizes ``eta``."""

    eta: np.ndarray  # (k,) absolute step sizes
    loss: np.ndarray  # (k,) L(theta - eta g)
    grad_diff: np.ndarray  # (k,) ||grad L(theta - eta g) - g||
    beta: float  # max_i grad_diff / (eta_i ||g||)
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


def evaluate_points(model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor,
                    targets: torch.Tensor, params: dict[str, torch.Tensor],
                    grad: Sequence[torch.Tensor], etas: torch.Tensor, points: str = "auto",
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
    if points == "auto" and inputs.device.type != "cuda":
        points = "sequential"
    losses, diffs = _points_by_tensor(model, loss_fn, inputs, targets, params, grad, etas,
                                      points)
    return losses, diffs if by_tensor else torch.linalg.vector_norm(diffs, dim=1)


def _points_by_tensor(model, loss_fn, inputs, targets, params, grad, etas, points):
    if points == "auto":
        try:
            return _evaluate_points_vmap(model, loss_fn, inputs, targets, params, grad, etas)
        except (RuntimeError, NotImplementedError):
            points = "sequential"
    if points == "streams" and inputs.device.type == "cuda":
        return _evaluate_points_on_streams(model, loss_fn, inputs, targets, params, grad, etas)
    if points == "vmap":
        return _evaluate_points_vmap(model, loss_fn, inputs, targets, params, grad, etas)
    evaluated = [_evaluate_point(model, loss_fn, inputs, targets, params, grad, eta)
                 for eta in etas]
    return torch.stack([e[0] for e in evaluated]), torch.stack([e[1] for e in evaluated])


def _evaluate_point(model, loss_fn, inputs, targets, params, grad, eta):
    moved = {n: p - eta * g for (n, p), g in zip(params.items(), grad)}
    loss, grad_there = loss_and_grad(model, loss_fn, inputs, targets, moved)
    return loss, _tensor_norms([a - b for a, b in zip(grad_there, grad)])


_SIDE_STREAMS: dict[torch.device, list] = {}


def _evaluate_points_on_streams(model, loss_fn, inputs, targets, params, grad, etas):
    """Each eta point's forward/backward on its own CUDA stream: k narrow passes that each
    leave the GPU partly idle overlap (and, recorded in a CUDA graph, become parallel branches)."""
    device = inputs.device
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
    """All eta points in one vmapped forward/backward; BN buffers are per-point clones."""
    k = len(etas)
    # vmap supports only the default memory format: channels-last tensors become contiguous.
    inputs = inputs.contiguous()
    moved = {n: (p.unsqueeze(0) - etas.view(-1, *([1] * p.ndim)) * g.unsqueeze(0)).contiguous()
             for (n, p), g in zip(params.items(), grad)}
    # Batched clones: BatchNorm's in-place running-statistic updates land in them, per point.
    buffers = {n: b.unsqueeze(0).repeat(k, *([1] * b.ndim)) for n, b in model.named_buffers()}

    def loss_at(p, b):
        return loss_fn(functional_call(model, (p, b), (inputs,)), targets)

    grads_there, losses = torch.func.vmap(torch.func.grad_and_value(loss_at))(moved, buffers)
    norms = torch.stack([torch.linalg.vector_norm((grads_there[n] - g.unsqueeze(0)).reshape(k, -1),
                                                  dim=1) for n, g in zip(params, grad)], 1)
    return losses.detach(), norms.detach()


def _as_float64(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def along_gradient(model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor,
                   targets: torch.Tensor, etas: Sequence[float],
                   points: str = "auto",
                   at_theta: tuple[torch.Tensor, Sequence[torch.Tensor]] | None = None
                   ) -> LandscapeRecord:
    """Loss, gradient predictiveness and effective beta-smoothness along the gradient on a batch.

    ``etas`` are absolute step sizes (e.g. ``lr * [0.5, 1, 2, 4]`` as in the paper).
    BatchNorm uses the batch's statistics; the model, its ``.grad``, its buffers and the RNG
    are left exactly as they were. ``points`` chooses how the eta points are evaluated
    (sequential, vmap, streams or auto: see ``evaluate_points``); the numbers agree to float
    rounding whichever it is.

    ``at_theta = (L(theta), g)``, when the caller already has them in full float32 (a training
    step's loss and ``.grad`` on this very batch, one per trainable parameter in
    ``named_parameters`` order), saves the probe its first forward/backward pass: the probe
    then costs k gradient evaluations instead of k + 1.
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
    eta_t = torch.as_tensor(list(etas), dtype=next(iter(params.values())).dtype, device=device)
    if eta_t.ndim != 1 or len(eta_t) == 0 or not bool((eta_t > 0).all()):
        raise ValueError(f"along_gradient: etas must be positive numbers, got {list(etas)}")
    with no_trace(model, device):
        tensors = probe_tensors(model, loss_fn, inputs, targets, eta_t, points, at_theta)
    return record_from(eta_t, *tensors, names=list(params))


def probe_tensors(model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor,
                  etas: torch.Tensor, points: str = "auto",
                  at_theta: tuple[torch.Tensor, Sequence[torch.Tensor]] | None = None
                  ) -> tuple[torch.Tensor, ...]:
    """``along_gradient``'s arithmetic alone, on device tensors: L(theta), loss (k,),
    grad_diff (k,), ||g||, and their parts by parameter tensor (``record_from`` sums them into
    layers): grad_diff (k, T), ||g|| (T,). It makes no host synchronization, so that it can be recorded as a
    CUDA graph. Call it inside ``no_trace(model, device)``; ``etas`` is a
    (k,) tensor of step sizes."""
    params = trainable_parameters(model)
    if at_theta is None:
        loss0, g = loss_and_grad(model, loss_fn, inputs, targets, params)
    else:
        loss0, g = at_theta[0].detach(), [t.detach() for t in at_theta[1]]
    losses, diff_parts = evaluate_points(model, loss_fn, inputs, targets, params, g, etas, points,
                                         by_tensor=True)
    g_parts = _tensor_norms(g)
    return (loss0, losses, torch.linalg.vector_norm(diff_parts, dim=1),
            torch.linalg.vector_norm(g_parts), diff_parts, g_parts)


def record_from(etas: torch.Tensor, loss0: torch.Tensor, losses: torch.Tensor,
                diffs: torch.Tensor, g_norm: torch.Tensor, diff_parts: torch.Tensor | None = None,
                g_parts: torch.Tensor | None = None, names: Sequence[str] | None = None
                ) -> LandscapeRecord:
    """The typed record (float64 on the host) from a probe's device tensors; with the parts by
    parameter tensor and the parameters' ``names``, also split by layer (``parameter_layers``)."""
    eta_np, diff_np, g_norm_f = _as_float64(etas), _as_float64(diffs), float(g_norm)
    beta = float(np.max(diff_np / (eta_np * g_norm_f))) if g_norm_f > 0 else math.nan
    record = LandscapeRecord(eta=eta_np, loss=_as_float64(losses), grad_diff=diff_np, beta=beta,
                             grad_norm=g_norm_f, loss_at_theta=float(loss0))
    if diff_parts is not None and g_parts is not None and names is not None:
        layers, index = parameter_layers(names)
        record.layer = tuple(layers)
        record.grad_diff_layer = _sum_by_layer(_as_float64(diff_parts) ** 2, index, len(layers))
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
