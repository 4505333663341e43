"""The classification losses a run trains on (``--loss``, ``--label-smoothing``).

``classification_loss(name, smoothing)`` is the one place a run's loss is built from its
settings; the task (``tasks.ClassificationTask.loss_fn``) hands it to every trainer, probe and
instrument, and to the evaluation (test loss, train/eval-mode losses): a run measures the
loss it trains on. Each loss is ``loss(logits, class_indices, reduction="mean")`` with
``reduction`` ``"mean"`` (over the batch), ``"sum"`` or ``"none"`` (one value per sample), as
``F.cross_entropy`` is called; C is the number of classes, q the targets:

- ``cross_entropy``: ``F.cross_entropy`` itself (with ``label_smoothing=ε`` when ε > 0);
- ``mse``: the mean over batch and classes of (z − q)², z the logits (not probabilities);
- ``bce``: ``F.binary_cross_entropy_with_logits(z, q)``, the mean over batch and classes;
- ``hinge``: the multi-class hinge of ``F.multi_margin_loss`` (Weston–Watkins, margin 1,
  p = 1): per sample (1/C) Σ_{j≠y} max(0, 1 − z_y + z_j);
- ``focal``: per sample −Σ_c q_c (1 − p_c)^γ log p_c, p = softmax(z), γ = ``FOCAL_GAMMA``
  (with one-hot targets: −(1 − p_y)^γ log p_y).

The targets q are one-hot, or with label smoothing ε (1 − ε)·one_hot + ε/C (torch's
smoothing of cross-entropy, so focal with γ = 0 is cross-entropy at every ε). The hinge has no
target distribution to smooth: a non-zero smoothing with it is refused (``config.validate``).

Every loss is written without host synchronization and from operations vmap batches, so the
same function trains in a CUDA graph (``--grid streams``) and in the vmapped grid
(``--grid batched``), and the probe's vmapped points evaluate it.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import LandscapeError

LOSSES = ("cross_entropy", "mse", "bce", "hinge", "focal")
FOCAL_GAMMA = 2.0  # Lin et al. (2017)'s choice, the common default
HINGE_MARGIN = 1.0

LossFn = Callable[..., torch.Tensor]


def one_hot(targets: torch.Tensor, classes: int, dtype: torch.dtype) -> torch.Tensor:
    """(..., C) one-hot rows of class indices, by comparison with arange: unlike
    ``F.one_hot``, no range check that reads the indices back to the host."""
    return (targets.unsqueeze(-1) == torch.arange(classes, device=targets.device)).to(dtype)


def soft_targets(targets: torch.Tensor, classes: int, smoothing: float,
                 dtype: torch.dtype) -> torch.Tensor:
    """(1 − ε)·one_hot + ε/C; exactly one-hot when ε = 0."""
    hot = one_hot(targets, classes, dtype)
    return hot if smoothing == 0 else hot * (1 - smoothing) + smoothing / classes


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    raise ValueError(f"reduction must be mean, sum or none, got {reduction!r}")


def mse_loss(outputs, targets, smoothing: float = 0.0, reduction: str = "mean"):
    """Squared error of the logits to the (smoothed) one-hot targets, mean over classes."""
    q = soft_targets(targets, outputs.shape[-1], smoothing, outputs.dtype)
    return _reduce((outputs - q).pow(2).mean(-1), reduction)


def bce_loss(outputs, targets, smoothing: float = 0.0, reduction: str = "mean"):
    """One binary cross-entropy per class on the logits, mean over classes."""
    q = soft_targets(targets, outputs.shape[-1], smoothing, outputs.dtype)
    per_class = F.binary_cross_entropy_with_logits(outputs, q, reduction="none")
    return _reduce(per_class.mean(-1), reduction)


def hinge_loss(outputs, targets, reduction: str = "mean"):
    """``F.multi_margin_loss`` (margin 1, p = 1) written out: vmap has no batching rule for it."""
    classes = outputs.shape[-1]
    true = outputs.gather(-1, targets.unsqueeze(-1))
    margins = (HINGE_MARGIN - true + outputs).clamp(min=0)
    # The true class is no term of the sum (its margin is 1, a constant without gradient).
    others = torch.where(one_hot(targets, classes, torch.bool), 0.0, margins)
    return _reduce(others.sum(-1) / classes, reduction)


def focal_loss(outputs, targets, smoothing: float = 0.0, reduction: str = "mean",
               gamma: float = FOCAL_GAMMA):
    """−Σ_c q_c (1 − p_c)^γ log p_c per sample, from the log-softmax (stable at p → 0)."""
    log_p = F.log_softmax(outputs, -1)
    q = soft_targets(targets, outputs.shape[-1], smoothing, log_p.dtype)
    return _reduce(-(q * (1 - log_p.exp()).pow(gamma) * log_p).sum(-1), reduction)


SMOOTHED = {"mse": mse_loss, "bce": bce_loss, "focal": focal_loss}


def classification_loss(name: str = "cross_entropy", smoothing: float = 0.0) -> LossFn:
    """The loss ``name`` with label smoothing ``smoothing`` (ε): ``F.cross_entropy`` itself for
    the default, so that a run of the defaults computes what it did before the axes."""
    if name not in LOSSES:
        raise LandscapeError(f"unknown --loss {name!r}; choose from {', '.join(LOSSES)}")
    if name == "cross_entropy":
        return (F.cross_entropy if smoothing == 0
                else functools.partial(F.cross_entropy, label_smoothing=smoothing))
    if name == "hinge":
        if smoothing != 0:
            raise LandscapeError(f"--label-smoothing {smoothing:g} does not apply to --loss "
                                 "hinge (no target distribution to smooth)")
        return hinge_loss
    return functools.partial(SMOOTHED[name], smoothing=smoothing)
