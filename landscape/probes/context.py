"""What every probe shares: measuring without leaving a trace.

A probe reads the parameters and never writes them (perturbed points are evaluated with
``torch.func.functional_call``); BatchNorm runs in train mode on the batch's own statistics but
updates clones of its buffers; ``.grad`` is untouched because gradients come from
``torch.autograd.grad``; the RNG state is restored; TF32 and autocast are off, so a probe
measures in float32 whatever the training step uses.
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


_open_probes = [0]  # how many no_trace contexts are open: forward passes there are a probe's


def probing() -> bool:
    """Whether a probe is measuring now: hooks that keep training batches skip its passes
    (a float64 probe's inputs are copies, not the training batch)."""
    return _open_probes[0] > 0


@contextlib.contextmanager
def no_trace(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Train-mode, float32 (no autocast, no TF32), grad-enabled, RNG-restoring probe context."""
    _open_probes[0] += 1
    try:
        with _train_mode(model), _restored_rng(device), torch.enable_grad(), _full_float32(), \
                torch.autocast(device.type, enabled=False):
            yield
    finally:
        _open_probes[0] -= 1


def loss_and_grad(model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor,
                  params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """L(params; B) and its gradient, without touching the model's parameters, grads or buffers."""
    leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    dtype = next(iter(leaves.values())).dtype if leaves else None
    out = functional_call(model, (leaves, buffer_clones(model, dtype)), (inputs,))
    loss = loss_fn(out, targets)
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(leaves.values(), grads)]
    return loss.detach(), grads
