"""What every probe shares: measuring without leaving a trace.

A probe reads the parameters and never writes them (perturbed points are evaluated with
``torch.func.functional_call``, with the model's positional and keyword arguments:
``ModelInputs``); BatchNorm runs in train mode on the batch's own statistics (unless
``ModelInputs.training`` says which mode the measured call ran in) but updates clones of its
buffers; ``.grad`` is untouched because gradients come from
``torch.autograd.grad``; TF32 and autocast are off, so a probe measures in float32 whatever the
training step uses.

Random draws. A probe measures one deterministic function of the parameters, also for models
that draw random numbers in training mode (``nn.Dropout`` and its family, ``F.dropout`` inside
``forward``, stochastic depth, ...): every evaluation of the objective by a probe
(``batch_loss`` and ``probe_forward``: g, each eta point, each ICS pass, the activations pass)
starts from the state torch's generators had when the probe began, so each draws the same
dropout masks and the same noise (the micro-batches of one accumulated step draw in sequence
from there, as in training). At exit that state -- training's -- is set back: the training
stream of random numbers is as if no probe had run. The noise layers
(``models.NoiseInjection``) draw from their own generator keyed by a buffer, which every pass
reads from the same clone of the model's buffers: one draw for all points as well. The
generators cannot be reset inside a CUDA graph being recorded; graphs hold only models that
draw nothing (``models.draws_random``, ``train.config.SweepConfig.training_mode``).
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn
from torch.func import functional_call

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ModelInputs:
    """One call of the model, replayed by a probe: ``model(*args, **kwargs)``.

    ``training``, when given, holds each submodule's ``training`` flag at that call (in
    ``model.modules()`` order): the probe then evaluates the model in those modes, i.e. the very
    function that call computed. Without it a probe runs every module in train mode.
    """

    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    training: tuple[bool, ...] | None = None


@dataclass(frozen=True)
class Batch:
    """One term of an objective: ``weight * loss_fn(model(inputs), targets, **loss_kwargs)``
    (``weight`` a number, or a tensor shaped like the loss, summed after weighting)."""

    inputs: Any
    targets: Any
    weight: float | torch.Tensor = 1.0
    loss_kwargs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Batches:
    """Several batches forming one objective, sum_i w_i L(B_i): a step that accumulated the
    gradients of several micro-batches. Passed as ``inputs`` (with ``targets=None``)."""

    parts: tuple[Batch, ...]


def model_inputs(inputs: Any) -> ModelInputs:
    """How ``inputs`` are given to the model: a tensor (or anything else) is the one positional
    argument, a tuple or list the positional arguments, a dict the keyword arguments."""
    if isinstance(inputs, ModelInputs):
        return inputs
    if isinstance(inputs, (tuple, list)):
        return ModelInputs(tuple(inputs))
    if isinstance(inputs, dict):
        return ModelInputs((), dict(inputs))
    return ModelInputs((inputs,))


def contiguous_inputs(inputs: Any) -> Any:
    """``inputs`` with every tensor argument in the default memory format (what vmap needs)."""
    if isinstance(inputs, Batches):
        return Batches(tuple(Batch(contiguous_inputs(b.inputs), b.targets, b.weight,
                                   b.loss_kwargs) for b in inputs.parts))
    call = model_inputs(inputs)
    fix = lambda v: v.contiguous() if isinstance(v, torch.Tensor) else v  # noqa: E731
    return ModelInputs(tuple(fix(a) for a in call.args),
                       {k: fix(v) for k, v in call.kwargs.items()}, call.training)


@contextlib.contextmanager
def _modes(model: nn.Module, training: Sequence[bool] | None) -> Iterator[None]:
    """Each submodule's ``training`` flag set to ``training`` (if given) for the call, then back."""
    if training is None:
        yield
        return
    modules = list(model.modules())
    if len(modules) != len(training):
        raise ValueError("ModelInputs.training has one flag per submodule of the model: "
                         f"{len(training)} given, the model has {len(modules)}")
    flags = [m.training for m in modules]
    for m, flag in zip(modules, training):
        m.training = flag
    try:
        yield
    finally:
        for m, flag in zip(modules, flags):
            m.training = flag


def call_model(model: nn.Module, inputs: Any, params: dict[str, torch.Tensor],
               buffers: dict[str, torch.Tensor]) -> Any:
    """``model(inputs)`` at ``params`` and ``buffers`` (``functional_call``), as it was called."""
    call = model_inputs(inputs)
    with _modes(model, call.training):
        return functional_call(model, (params, buffers), call.args, call.kwargs)


def batch_loss(model: nn.Module, loss_fn: LossFn, inputs: Any, targets: Any,
               params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor]) -> torch.Tensor:
    """L(params; B): the loss of ``inputs`` and ``targets``, or the weighted sum of ``Batches``,
    evaluated from the probe's random draws (see the module docstring)."""
    replay_random_draws()
    if not isinstance(inputs, Batches):
        return loss_fn(call_model(model, inputs, params, buffers), targets)
    total = None
    for b in inputs.parts:
        term = (b.weight * loss_fn(call_model(model, b.inputs, params, buffers), b.targets,
                                   **b.loss_kwargs)).sum()
        total = term if total is None else total + term
    return total


def in_dtype(value: Any, dtype: torch.dtype) -> Any:
    """``value`` (a tensor, the model's inputs, ``ModelInputs``, ``Batches``, targets) with every
    floating tensor in it cast to ``dtype``: what a probe in another precision evaluates."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, Batches):
        return Batches(tuple(Batch(in_dtype(b.inputs, dtype), in_dtype(b.targets, dtype),
                                   in_dtype(b.weight, dtype), b.loss_kwargs) for b in value.parts))
    if isinstance(value, ModelInputs):
        return ModelInputs(in_dtype(value.args, dtype), in_dtype(value.kwargs, dtype),
                           value.training)
    if isinstance(value, (tuple, list)):
        return type(value)(in_dtype(v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: in_dtype(v, dtype) for k, v in value.items()}
    return value


def trainable_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached views of the parameters that receive gradients, by name."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def buffer_clones(model: nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    # BatchNorm in train mode writes running statistics into these clones, not the model's.
    # ``dtype``: floating buffers in the parameters' dtype (a float64 probe of a float32 model).
    return {n: b.to(dtype, copy=True) if dtype is not None and b.is_floating_point()
            else b.clone() for n, b in model.named_buffers()}


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


RngState = tuple[torch.Tensor, "torch.Tensor | None"]  # CPU, CUDA


def rng_state(device: torch.device) -> RngState:
    """torch's CPU generator state, and that of ``device``'s CUDA generator when it is one."""
    return (torch.get_rng_state(),
            torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def same_rng_state(a: RngState, b: RngState) -> bool:
    """Whether no random number was drawn between two ``rng_state`` readings."""
    return torch.equal(a[0], b[0]) and (a[1] is None) == (b[1] is None) and (
        a[1] is None or torch.equal(a[1], b[1]))


# The generator state each forward pass of the running probe starts from (innermost last), per
# thread (a context variable: a training task that Ray runs on a thread, or any other thread,
# has its own; a new thread starts with none).
_PROBE_DRAWS: contextvars.ContextVar[tuple[tuple[torch.device, RngState], ...]] = \
    contextvars.ContextVar("landscape_probe_draws", default=())


def _set_rng_state(device: torch.device, state: RngState) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


@contextlib.contextmanager
def _same_random_draws(device: torch.device) -> Iterator[None]:
    """Every ``probe_forward`` inside draws what the first one draws; training's state after."""
    entry = rng_state(device)
    token = _PROBE_DRAWS.set(_PROBE_DRAWS.get() + ((device, entry),))
    try:
        yield
    finally:
        _PROBE_DRAWS.reset(token)
        _set_rng_state(device, entry)


def replay_random_draws() -> None:
    """Reset torch's generators to the running probe's entry state (no-op outside a probe).

    Not while a CUDA graph is being recorded: a graph cannot reset a generator, and graphs
    hold only models that draw no random numbers."""
    draws = _PROBE_DRAWS.get()
    if not draws:
        return
    device, state = draws[-1]
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return
    _set_rng_state(device, state)


def probe_forward(model: nn.Module, params: dict[str, torch.Tensor],
                  buffers: dict[str, torch.Tensor], inputs: Any) -> Any:
    """The model's output at ``params`` with ``buffers`` (clones it may write), starting from
    the probe's random draws (see the module docstring): one forward pass of a probe."""
    replay_random_draws()
    return call_model(model, inputs, params, buffers)


@contextlib.contextmanager
def _full_float32() -> Iterator[None]:
    """No TF32 in matmuls and convolutions: training may use it, measurements never do."""
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


# How many probe measurements are open in this thread (``no_trace`` or ``probe_passes``): forward
# passes and losses there are a probe's, not training's. A context variable, not a global: a
# thread that trains while another thread measures must not take its own training passes for
# a probe's (nor the other way round), e.g. two Ray tasks on threads of one worker.
_PROBE_DEPTH: contextvars.ContextVar[int] = contextvars.ContextVar("landscape_probe_depth",
                                                                   default=0)


def probing() -> bool:
    """Whether a probe is measuring now, in this thread: hooks that keep training batches skip
    its passes (a float64 probe's inputs are copies, not the training batch)."""
    return _PROBE_DEPTH.get() > 0


@contextlib.contextmanager
def probe_passes() -> Iterator[None]:
    """Inside, ``probing()`` is true in this thread: the model calls and losses are a probe's."""
    token = _PROBE_DEPTH.set(_PROBE_DEPTH.get() + 1)
    try:
        yield
    finally:
        _PROBE_DEPTH.reset(token)


@contextlib.contextmanager
def no_trace(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Train-mode, float32 (no autocast, no TF32), grad-enabled probe context in which every
    evaluation draws the same random numbers, and which leaves the RNG as it was."""
    with probe_passes(), _train_mode(model), _same_random_draws(device), torch.enable_grad(), \
            _full_float32(), torch.autocast(device.type, enabled=False):
        yield


def loss_and_grad(model: nn.Module, loss_fn: LossFn, inputs: Any, targets: Any,
                  params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """L(params; B) and its gradient, without touching the model's parameters, grads or buffers.

    ``inputs``: a tensor, a tuple (positional arguments), a dict (keyword arguments), a
    ``ModelInputs``, or ``Batches`` (then ``targets`` is None); see ``batch_loss``."""
    leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    dtype = next(iter(leaves.values())).dtype if leaves else None
    loss = batch_loss(model, loss_fn, inputs, targets, leaves, buffer_clones(model, dtype))
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(leaves.values(), grads)]
    return loss.detach(), grads
