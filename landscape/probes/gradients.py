"""Per-step statistics of the training gradient between consecutive minibatches.

For each step t: ||g_t||, ||g_t - g_{t-1}|| (consecutive minibatches: the course
reproductions' "gradient predictiveness") and ||g_t - g_{t-1}|| / ||theta_t - theta_{t-1}||
(their beta estimate; not the paper's effective beta).
"""

from __future__ import annotations

import numpy as np
import torch

from .steps import after_gradient

# The columns of ``GradientStats.pop()``, in order.
GRADIENT_STAT_FIELDS = ("grad_norm", "grad_diff", "beta_consecutive")


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
        # At theta_t once .grad holds the step's gradient (after the closure's first call for
        # optimizer.step(closure)).
        self._handle = optimizer.register_step_pre_hook(
            lambda opt, a, k: after_gradient(a, k, self.observe))
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

    def state_dict(self) -> dict:
        """What the next ``record`` depends on: the previous step's gradient and parameters
        (take it between steps, after ``pop``: rows not popped are not in it)."""
        return {"prev_grad": self._prev_grad, "prev_theta": self._prev_theta}

    def load_state_dict(self, state: dict) -> None:
        self._prev_grad, self._prev_theta = state["prev_grad"], state["prev_theta"]
        self._rows = []

    def pop(self) -> np.ndarray:
        """(n, 3) float64 array of ``GRADIENT_STAT_FIELDS`` (grad_norm, grad_diff,
        beta_consecutive) since the last pop ((n, K, 3) when ``record`` was given K runs)."""
        if not self._rows:
            return np.zeros((0, 3))
        rows = torch.stack(self._rows).to("cpu", torch.float64).numpy()
        self._rows = []
        return rows
