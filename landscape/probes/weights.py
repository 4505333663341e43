"""Weight norms, effective learning rate and angular update of each weight tensor, every step.

For the weight w of each weight layer (conv / linear), at step t with learning rate eta and
g = grad_w L on the step's batch (read in an optimizer step pre-hook, before the update):

    norm                = ||w_t||
    effective_lr        = eta / ||w_t||^2
    effective_grad_norm = ||w_t|| * ||g_t||
    angular_update      = angle(w_t, w_{t+1}) = 2 atan2(||u - v||, ||u + v||),  u, v = w / ||w||

(the atan2 form equals arccos(<w_t, w_{t+1}> / (||w_t|| ||w_{t+1}||)) and keeps its accuracy for
the small angles of one step, where arccos of a float32 cosine cannot resolve below ~5e-4 rad).

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
        self._handles: list = []

    def attach(self, optimizer: torch.optim.Optimizer) -> "WeightStats":
        group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        self._groups = [group_of.get(id(w)) for w in self._weights]
        self._handles = [optimizer.register_step_pre_hook(lambda opt, a, k: self.before_step()),
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
        self._before = ([w.clone() for w in weights], torch.stack(torch._foreach_norm(weights)),
                        torch.stack(torch._foreach_norm(grads)))
        self._lrs.append([float(g["lr"]) if g is not None else 0.0 for g in self._groups])

    @torch.no_grad()
    def after_step(self) -> None:
        previous, norm, grad_norm = self._before
        now = [w.detach() for w in self._weights]
        angle = angle_between(previous, norm, now)
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


def angle_between(previous: list[torch.Tensor], previous_norm: torch.Tensor,
                  now: list[torch.Tensor]) -> torch.Tensor:
    """(L,) angles between the tensors of two lists, 2 atan2(||u - v||, ||u + v||)."""
    now_norm = torch.stack(torch._foreach_norm(now))
    u = torch._foreach_div(previous, list(previous_norm.unbind()))
    v = torch._foreach_div(now, list(now_norm.unbind()))
    apart = torch.stack(torch._foreach_norm(torch._foreach_sub(u, v)))
    together = torch.stack(torch._foreach_norm(torch._foreach_add(u, v)))
    return 2 * torch.atan2(apart, together)
