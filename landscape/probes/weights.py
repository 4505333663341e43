"""Weight norms, effective learning rate and angular update of each weight tensor, every step.

For the weight w of each weight layer (conv / linear), at step t with learning rate eta and
g = grad_w L on the step's batch (read in an optimizer step pre-hook, before the update):

    norm                = ||w_t||
    effective_lr        = eta / ||w_t||^2
    effective_grad_norm = ||w_t|| * ||g_t||
    angular_update      = angle(w_t, w_{t+1}) = atan2(||w_t x w_{t+1}||, <w_t, w_{t+1}>)

(from the norms of w_t, w_{t+1} and d = w_{t+1} - w_t, see ``update_angle``: it equals
arccos(<w_t, w_{t+1}> / (||w_t|| ||w_{t+1}||)) and keeps its accuracy for the small angles of
one step, where arccos of a float32 cosine cannot resolve below ~5e-4 rad).

Why these: a weight followed by a normalization (``models.normalized_layers``: BatchNorm and
its kin divide by a statistic of degree 1) is scale-invariant, L(c w) = L(w), so its gradient is
orthogonal to w, shrinks like 1/||w||, and a step of eta moves its direction by about
eta ||g|| / ||w|| = (eta / ||w||^2) (||w|| ||g||): the effective learning rate times the
scale-free effective gradient norm. Growing weight norms therefore anneal the step on their
own. For the other weights these are just the norms. Values stay on the device until ``pop()``:
recording never waits for the host.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..models import normalized_layers, weight_layers
from .steps import after_gradient

WEIGHT_STAT_FIELDS = ("norm", "effective_lr", "effective_grad_norm", "angular_update")


class WeightStats:
    """Per-step statistics of every weight layer's weight, read around ``optimizer.step()``."""

    def __init__(self, model: nn.Module):
        modules = dict(model.named_modules())
        self.layers = weight_layers(model)
        normalized = set(normalized_layers(model))
        self.scale_invariant = np.asarray([n in normalized for n in self.layers], bool)
        self._weights = [modules[n].weight for n in self.layers]
        self._rows: list[torch.Tensor] = []
        self._lrs: list[list[float]] = []
        self._before = None
        self._previous: list[torch.Tensor] | None = None
        self._handles: list = []

    def attach(self, optimizer: torch.optim.Optimizer) -> "WeightStats":
        group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        self._groups = [group_of.get(id(w)) for w in self._weights]
        # before_step at theta_t once .grad holds the step's gradient (after the closure's
        # first call for optimizer.step(closure)).
        self._handles = [optimizer.register_step_pre_hook(
                             lambda opt, a, k: after_gradient(a, k, self.before_step)),
                         optimizer.register_step_post_hook(lambda opt, a, k: self.after_step())]
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    @torch.no_grad()
    def before_step(self) -> None:
        weights = [w.detach() for w in self._weights]
        grads = [w.grad if w.grad is not None else torch.zeros_like(w) for w in self._weights]
        if self._previous is None:  # allocated once: no allocation (page faults) per step
            self._previous = [torch.empty_like(w) for w in weights]
        torch._foreach_copy_(self._previous, weights)
        self._before = (torch.stack(torch._foreach_norm(weights)),
                        torch.stack(torch._foreach_norm(grads)))
        self._lrs.append([float(g["lr"]) if g is not None else 0.0 for g in self._groups])

    @torch.no_grad()
    def after_step(self) -> None:
        norm, grad_norm = self._before
        now = [w.detach() for w in self._weights]
        torch._foreach_sub_(self._previous, now)  # in place: w_t - w_{t+1} = -delta
        angle = update_angle(norm, torch.stack(torch._foreach_norm(now)),
                             torch.stack(torch._foreach_norm(self._previous)))
        self._rows.append(torch.stack([norm, grad_norm, angle]))
        self._before = None

    def pop(self) -> dict[str, np.ndarray]:
        """(n, L) float64 arrays of ``WEIGHT_STAT_FIELDS`` since the last pop."""
        if not self._rows:
            return {f: np.zeros((0, len(self.layers))) for f in WEIGHT_STAT_FIELDS}
        rows = torch.stack(self._rows).to("cpu", torch.float64).numpy()  # (n, 3, L)
        lrs = np.asarray(self._lrs[:len(self._rows)], np.float64)
        self._rows, self._lrs = [], self._lrs[len(rows):]
        norm, grad_norm, angle = rows[:, 0], rows[:, 1], rows[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            effective_lr = lrs / norm ** 2
        return {"norm": norm, "effective_lr": effective_lr,
                "effective_grad_norm": norm * grad_norm, "angular_update": angle}


def update_angle(norm: torch.Tensor, new_norm: torch.Tensor, step_norm: torch.Tensor
                 ) -> torch.Tensor:
    """Angles between w and w + d from the three norms ||w||, ||w + d||, ||d||, (L,) each.

    With c = <w, d> = (||w + d||^2 - ||w||^2 - ||d||^2) / 2: <w, w + d> = ||w||^2 + c and
    ||w x (w + d)|| = ||w x d|| = sqrt(||w||^2 ||d||^2 - c^2), so the angle is their atan2:
    accurate for the small angles of one step (arccos of a cosine near 1 is not), and it needs
    no temporary the size of the weights (measured: 1.09x a CPU step with the temporaries of
    2 atan2(||u - v||, ||u + v||), 1.02x this way). The arithmetic is float64 (L numbers), but
    the norms are float32: the perpendicular part is a difference, so the absolute error is
    about 1e-3 ||d|| / ||w|| rad, far below a step's angle unless the step is almost purely
    radial (tests/test_weights.py).
    """
    a, b, d = norm.double(), new_norm.double(), step_norm.double()
    c = (b * b - a * a - d * d) / 2
    return torch.atan2(torch.sqrt(torch.clamp(a * a * d * d - c * c, min=0)), a * a + c).to(
        norm.dtype)
