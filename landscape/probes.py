"""Probes: measurements of the optimization landscape that take a model and a batch.

The central measurement is Santurkar et al.'s (2018, section 3.1, Fig. 4) walk along the
gradient. With theta the parameters, B the batch, L the loss on B and g = grad L(theta):

    loss[i]      = L(theta - eta_i g)
    grad_diff[i] = || grad L(theta - eta_i g) - g ||_2          (gradient predictiveness)
    beta         = max_i grad_diff[i] / (eta_i ||g||_2)          (effective beta-smoothness)

Every probe here is side-effect free: parameters are read, never written (the perturbed
points are evaluated with ``torch.func.functional_call``); BatchNorm runs in train mode on the
batch's own statistics but updates clones of its buffers; ``.grad`` is untouched because
gradients come from ``torch.autograd.grad``; the RNG state is restored. Probes know nothing
of files, plots or the CLI: they return typed records.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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


# ----------------------------------------------------------------------------- helpers


def trainable_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached views of the parameters that receive gradients, by name."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def _buffer_clones(model: nn.Module) -> dict[str, torch.Tensor]:
    # BatchNorm in train mode writes running statistics into these clones, not the model's.
    return {n: b.clone() for n, b in model.named_buffers()}


@contextlib.contextmanager
def _train_mode(model: nn.Module) -> Iterator[None]:
    """Train mode for every submodule (BN uses batch statistics), restoring each flag after."""
    flags = [(m, m.training) for m in model.modules()]
    model.train()
    try:
        yield
    finally:
        for m, was_training in flags:
            m.training = was_training


@contextlib.contextmanager
def _restored_rng(device: torch.device) -> Iterator[None]:
    """Whatever random numbers the probe's forward passes draw, training's stream is unchanged."""
    cpu_state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    try:
        yield
    finally:
        torch.set_rng_state(cpu_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state(cuda_state, device)


@contextlib.contextmanager
def _full_float32() -> Iterator[None]:
    """No TF32 in matmuls and convolutions: training may use it, measurements never do."""
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


@contextlib.contextmanager
def no_trace(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Train-mode, float32 (no autocast, no TF32), grad-enabled, RNG-restoring probe context."""
    with _train_mode(model), _restored_rng(device), torch.enable_grad(), _full_float32(), \
            torch.autocast(device.type, enabled=False):
        yield


def loss_and_grad(model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor,
                  params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """L(params; B) and its gradient, without touching the model's parameters, grads or buffers."""
    leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    out = functional_call(model, (leaves, _buffer_clones(model)), (inputs,))
    loss = loss_fn(out, targets)
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(leaves.values(), grads)]
    return loss.detach(), grads


def _global_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors]))


POINT_MODES = ("auto", "sequential", "vmap", "streams")


def evaluate_points(model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor,
                    targets: torch.Tensor, params: dict[str, torch.Tensor],
                    grad: Sequence[torch.Tensor], etas: torch.Tensor, points: str = "auto"
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and ||grad L(theta - eta g) - g|| at every eta: the one place the points are evaluated.

    Returns two (k,) tensors on the parameters' device. ``points`` says how the k points run:
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
    return loss, _global_norm([a - b for a, b in zip(grad_there, grad)])


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
    squared = sum((grads_there[n] - g.unsqueeze(0)).pow(2).reshape(k, -1).sum(1)
                  for n, g in zip(params, grad))
    return losses.detach(), squared.sqrt().detach()


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
    return record_from(eta_t, *tensors)


def probe_tensors(model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor,
                  etas: torch.Tensor, points: str = "auto",
                  at_theta: tuple[torch.Tensor, Sequence[torch.Tensor]] | None = None
                  ) -> tuple[torch.Tensor, ...]:
    """``along_gradient``'s arithmetic alone, on device tensors: L(theta), loss (k,),
    grad_diff (k,), ||g||. It makes no host synchronization, so that it can be recorded as a
    CUDA graph. Call it inside ``no_trace(model, device)``; ``etas`` is a
    (k,) tensor of step sizes."""
    params = trainable_parameters(model)
    if at_theta is None:
        loss0, g = loss_and_grad(model, loss_fn, inputs, targets, params)
    else:
        loss0, g = at_theta[0].detach(), [t.detach() for t in at_theta[1]]
    losses, diffs = evaluate_points(model, loss_fn, inputs, targets, params, g, etas, points)
    return loss0, losses, diffs, _global_norm(g)


def record_from(etas: torch.Tensor, loss0: torch.Tensor, losses: torch.Tensor,
                diffs: torch.Tensor, g_norm: torch.Tensor) -> LandscapeRecord:
    """The typed record (float64 on the host) from a probe's device tensors."""
    eta_np, diff_np, g_norm_f = _as_float64(etas), _as_float64(diffs), float(g_norm)
    beta = float(np.max(diff_np / (eta_np * g_norm_f))) if g_norm_f > 0 else math.nan
    return LandscapeRecord(eta=eta_np, loss=_as_float64(losses), grad_diff=diff_np, beta=beta,
                           grad_norm=g_norm_f, loss_at_theta=float(loss0))


# ----------------------------------------------------------------------------- hooks


@dataclass
class LandscapeProbe:
    """Runs ``along_gradient`` every ``every`` optimizer steps, attached from outside the loop.

    Three lines in any training loop::

        probe = LandscapeProbe(every=100)                    # etas are multiples of the lr
        loss_fn = probe.attach(model, optimizer, loss_fn)     # hooks + a loss that sees targets
        ...                                                   # train as usual; read probe.records

    A forward pre-hook keeps the latest training inputs, the wrapped loss keeps the targets,
    and an optimizer step pre-hook measures at theta_t on that step's batch, before the update.
    """

    every: int = 100
    etas: Sequence[float] = (0.5, 1.0, 2.0, 4.0)
    relative: bool = True  # etas are multiples of the optimizer's (first group's) learning rate
    on_record: Callable[[LandscapeRecord], None] | None = None
    keep: bool = True  # also append each record to ``records``
    # Take g and L(theta) from the training step (``.grad`` and the loss) instead of computing
    # them again: one gradient evaluation fewer per probe. Only when that step's loss and
    # ``.grad`` are exactly L and its gradient in float32 on the batch: no autocast or TF32,
    # no clipping, accumulation or extra gradient terms between backward() and step().
    reuse_grad: bool = False
    records: list[LandscapeRecord] = field(default_factory=list)
    step: int = 0  # optimizer steps seen so far

    def __post_init__(self):
        if self.every < 1:
            raise ValueError(f"LandscapeProbe: every must be >= 1, got {self.every}")
        self._handles: list = []
        self._inputs = self._targets = self._loss = None
        self._measuring = False

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: LossFn) -> LossFn:
        """Register the hooks; returns ``loss_fn`` wrapped so that it records the targets."""
        self.detach()
        self._model, self._optimizer, self._loss_fn = model, optimizer, loss_fn

        def keep_inputs(module, args):
            if module.training and not self._measuring:
                self._inputs = args[0]

        def measure_before_step(opt, args, kwargs):
            if self.step % self.every == 0:
                self.measure()
            self.step += 1

        self._handles = [model.register_forward_pre_hook(keep_inputs),
                         optimizer.register_step_pre_hook(measure_before_step)]

        def loss_keeping_targets(outputs, targets):
            loss = loss_fn(outputs, targets)
            if not self._measuring:
                self._targets, self._loss = targets, loss.detach()
            return loss

        return loss_keeping_targets

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def measure(self) -> LandscapeRecord:
        """Measure now, at the current parameters, on the last training batch seen."""
        if self._inputs is None or self._targets is None:
            raise RuntimeError("LandscapeProbe: no training batch seen yet (call the wrapped "
                               "loss_fn returned by attach())")
        lr = float(self._optimizer.param_groups[0]["lr"])
        etas = [e * lr for e in self.etas] if self.relative else list(self.etas)
        at_theta = None
        if self.reuse_grad:
            params = [p for p in self._model.parameters() if p.requires_grad]
            at_theta = (self._loss, [p.grad if p.grad is not None else torch.zeros_like(p)
                                     for p in params])
        self._measuring = True
        try:
            record = along_gradient(self._model, self._loss_fn, self._inputs, self._targets, etas,
                                    at_theta=at_theta)
        finally:
            self._measuring = False
        record.step, record.lr = self.step, lr
        if self.keep:
            self.records.append(record)
        if self.on_record is not None:
            self.on_record(record)
        return record


def gradient_step_stats(g: torch.Tensor, theta: torch.Tensor, prev_g: torch.Tensor,
                        prev_theta: torch.Tensor) -> torch.Tensor:
    """[||g_t||, ||g_t - g_{t-1}||, ||g_t - g_{t-1}|| / ||theta_t - theta_{t-1}||] over the last
    axis of flat gradients and parameters: (3,) for (P,) inputs, (K, 3) for (K, P)."""
    norm = torch.linalg.vector_norm(g, dim=-1)
    diff = torch.linalg.vector_norm(g - prev_g, dim=-1)
    beta = diff / torch.linalg.vector_norm(theta - prev_theta, dim=-1)
    return torch.stack([norm, diff, beta], -1)


class GradientStats:
    """Per-step statistics of the training gradient, read in an optimizer step pre-hook.

    For each step t: ||g_t||, ||g_t - g_{t-1}|| (consecutive minibatches: the course
    reproductions' "gradient predictiveness") and ||g_t - g_{t-1}|| / ||theta_t - theta_{t-1}||
    (their beta estimate; not the paper's effective beta). Values stay on the device as
    0-d tensors until ``pop()`` so that training never waits for the host.
    """

    def __init__(self):
        self._prev_grad: torch.Tensor | None = None
        self._prev_theta: torch.Tensor | None = None
        self._rows: list[torch.Tensor] = []
        self._handle = None

    def attach(self, optimizer: torch.optim.Optimizer) -> "GradientStats":
        self._params = [p for group in optimizer.param_groups for p in group["params"]]
        self._handle = optimizer.register_step_pre_hook(lambda opt, a, k: self.observe())
        return self

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    @torch.no_grad()
    def observe(self) -> None:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self._params]
        g = torch.cat([t.reshape(-1).float() for t in grads])
        self.record(g, torch.cat([p.detach().reshape(-1).float() for p in self._params]))

    @torch.no_grad()
    def record(self, g: torch.Tensor, theta: torch.Tensor) -> None:
        """One step from flat gradient and parameters: (P,) for one run, (K, P) for K runs."""
        if self._prev_grad is None:
            norm = torch.linalg.vector_norm(g, dim=-1)
            row = torch.stack([norm, *[torch.full_like(norm, float("nan"))] * 2], -1)
        else:
            row = gradient_step_stats(g, theta, self._prev_grad, self._prev_theta)
        self._rows.append(row)
        self._prev_grad, self._prev_theta = g, theta

    def pop(self) -> np.ndarray:
        """(n, 3) float64 array of [grad_norm, grad_diff, beta_consecutive] since the last pop
        ((n, K, 3) when ``record`` was given K runs)."""
        if not self._rows:
            return np.zeros((0, 3))
        rows = torch.stack(self._rows).to("cpu", torch.float64).numpy()
        self._rows = []
        return rows
