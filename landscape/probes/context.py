"""What every probe shares: measuring without leaving a trace.

A probe reads the parameters and never writes them (perturbed points are evaluated with
``torch.func.functional_call``); BatchNorm runs in train mode on the batch's own statistics but
updates clones of its buffers; ``.grad`` is untouched because gradients come from
``torch.autograd.grad``; TF32 and autocast are off, so a probe measures in float32 whatever the
training step uses.

Random draws. A probe measures one deterministic function of the parameters, also for models
that draw random numbers in training mode (``nn.Dropout`` and its family, ``F.dropout`` inside
``forward``, stochastic depth, ...): every forward pass of a probe (``probe_forward``: g, each
eta point, each ICS pass) starts from the state torch's generators had when the probe began,
so each pass draws the same dropout masks and the same noise. At exit that state -- training's
-- is set back: the training stream of random numbers is as if no probe had run. The noise
layers (``models.NoiseInjection``) draw from their own generator keyed by a buffer, which
every pass reads from the same clone of the model's buffers: one draw for all points as well.
The generators cannot be reset inside a CUDA graph being recorded; graphs hold only models
that draw nothing (``train.streams.supports_graphs``).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn
from torch.func import functional_call

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def trainable_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached views of the parameters that receive gradients, by name."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def buffer_clones(model: nn.Module) -> dict[str, torch.Tensor]:
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


RngState = tuple[torch.Tensor, "torch.Tensor | None"]  # CPU, CUDA


def rng_state(device: torch.device) -> RngState:
    """torch's CPU generator state, and that of ``device``'s CUDA generator when it is one."""
    return (torch.get_rng_state(),
            torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def same_rng_state(a: RngState, b: RngState) -> bool:
    """Whether no random number was drawn between two ``rng_state`` readings."""
    return torch.equal(a[0], b[0]) and (a[1] is None) == (b[1] is None) and (
        a[1] is None or torch.equal(a[1], b[1]))


# The generator state each forward pass of the running probe starts from (innermost last).
_PROBE_DRAWS: list[tuple[torch.device, RngState]] = []


def _set_rng_state(device: torch.device, state: RngState) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


@contextlib.contextmanager
def _same_random_draws(device: torch.device) -> Iterator[None]:
    """Every ``probe_forward`` inside draws what the first one draws; training's state after."""
    entry = rng_state(device)
    _PROBE_DRAWS.append((device, entry))
    try:
        yield
    finally:
        _PROBE_DRAWS.pop()
        _set_rng_state(device, entry)


def replay_random_draws() -> None:
    """Reset torch's generators to the running probe's entry state (no-op outside a probe).

    Not while a CUDA graph is being recorded: a graph cannot reset a generator, and graphs
    hold only models that draw no random numbers."""
    if not _PROBE_DRAWS:
        return
    device, state = _PROBE_DRAWS[-1]
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return
    _set_rng_state(device, state)


def probe_forward(model: nn.Module, params: dict[str, torch.Tensor],
                  buffers: dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
    """The model's output at ``params`` with ``buffers`` (clones it may write): every forward
    pass of a probe, starting from the probe's random draws (see the module docstring)."""
    replay_random_draws()
    return functional_call(model, (params, buffers), (inputs,))


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
    """Train-mode, float32 (no autocast, no TF32), grad-enabled probe context in which every
    ``probe_forward`` draws the same random numbers, and which leaves the RNG as it was."""
    with _train_mode(model), _same_random_draws(device), torch.enable_grad(), _full_float32(), \
            torch.autocast(device.type, enabled=False):
        yield


def loss_and_grad(model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor,
                  params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """L(params; B) and its gradient, without touching the model's parameters, grads or buffers."""
    leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    out = probe_forward(model, leaves, buffer_clones(model), inputs)
    loss = loss_fn(out, targets)
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(leaves.values(), grads)]
    return loss.detach(), grads
