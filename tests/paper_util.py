"""Helpers shared by the tests of the paper's extra experiments (ICS, norms, DLN, ...)."""

from __future__ import annotations

import copy

import pytest
import torch

# Tiny models: a second thread only adds synchronization, and on a busy 2-core machine that
# costs 10-50x (measured: 20 s vs 0.4 s for one ICS probe of a width-1/16 VGG).
torch.set_num_threads(1)


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def snapshot(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict:
    """Everything a probe must leave bit-identical: parameters, .grad, buffers, optimizer, RNG."""
    state = {
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "buffers": {n: b.clone() for n, b in model.named_buffers()},
        "training": [m.training for m in model.modules()],
        "rng": torch.get_rng_state(),
    }
    if optimizer is not None:
        state["optimizer"] = copy.deepcopy(optimizer.state_dict())
    return state


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def assert_no_trace(before: dict, after: dict) -> None:
    for key in before:
        assert _equal(before[key], after[key]), f"the probe changed {key}"


def tiny_step(model, optimizer, loss_fn, x, y, steps: int = 1) -> None:
    """``steps`` training steps, then one more forward/backward (gradients in place, no update)."""
    for _ in range(steps):
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()
    optimizer.zero_grad()
    loss_fn(model(x), y).backward()
