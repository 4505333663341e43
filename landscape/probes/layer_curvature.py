"""Curvature per weight layer: the top eigenvalue and trace of each layer's diagonal Hessian block.

For a weight layer l with parameters theta_l (its weight and bias), the block H_ll =
d^2 L / d theta_l^2 is the Hessian of the loss as a function of theta_l alone, every other
parameter fixed: the product H_ll v is a Hessian-vector product through a graph whose leaves are
theta_l only (``curvature.HessianOperator`` over that subset). Its top eigenvalue is found by
ARPACK's Lanczos as ``sharpness`` finds the whole model's, its trace by Hutchinson's estimate.

For a weight feeding a normalization (``models.normalized_layers``: L(c w) = L(w)), the
curvature scales as 1 / ||w||^2 and the step's effect on w's direction as lr / ||w||^2
(the effective learning rate), so lambda_l ||w_l||^2 is the curvature the layer's direction
sees per unit of effective learning rate: comparable across layers (Lyu, Li & Arora 2022).
Leaves no trace (``context.no_trace``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..models import normalized_layers, weight_layers
from .context import LossFn, no_trace
from .curvature import HessianOperator, hutchinson, top_eigenpairs


@dataclass
class LayerCurvatureRecord:
    """The diagonal Hessian block of each weight layer, at one point on one batch."""

    layer: tuple[str, ...]  # (L,) weight-layer names
    lambda_max: np.ndarray  # (L,) top eigenvalue of each block
    trace: np.ndarray  # (L,) Hutchinson estimate of tr H_ll
    trace_stderr: np.ndarray  # (L,) its standard error (NaN for one sample)
    weight_norm_sq: np.ndarray  # (L,) ||w_l||^2 (the weight only, not the bias)
    scale_invariant: np.ndarray  # (L,) bool: a normalization follows the layer
    scaled_lambda: np.ndarray  # (L,) lambda_max x ||w||^2 (meaningful where scale_invariant)
    hvps: int  # Hessian-vector products made, all layers
    step: int | None = None


def layer_curvature(model: nn.Module, loss_fn: LossFn, inputs, targets,
                    layers: Sequence[str] | None = None, trace_samples: int = 10,
                    tol: float = 1e-3, seed: int = 0) -> LayerCurvatureRecord:
    """Top eigenvalue and Hutchinson trace (``trace_samples`` Rademacher vectors) of the
    diagonal Hessian block of each of ``layers`` (weight-layer names; None: every one)."""
    names = list(layers) if layers is not None else weight_layers(model)
    if not names:
        raise ValueError("layer_curvature: the model has no conv or linear layers")
    modules = dict(model.named_modules())
    invariant = set(normalized_layers(model))
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    lambdas, traces, errors, norms, hvps = [], [], [], [], 0
    with no_trace(model, device):
        for name in names:
            params = {f"{name}.{n}": p.detach() for n, p in modules[name].named_parameters(
                recurse=False) if p.requires_grad}
            op = HessianOperator(model, loss_fn, inputs, targets, params)
            start = torch.randn(op.size, generator=generator, dtype=torch.float64)
            values, _ = top_eigenpairs(op, 1, tol, start)
            trace, stderr = hutchinson(op, trace_samples, generator)
            lambdas.append(float(values[0]))
            traces.append(trace)
            errors.append(stderr)
            norms.append(float(modules[name].weight.detach().double().pow(2).sum()))
            hvps += op.products
    lambdas, norms = np.asarray(lambdas), np.asarray(norms)
    return LayerCurvatureRecord(
        layer=tuple(names), lambda_max=lambdas, trace=np.asarray(traces),
        trace_stderr=np.asarray(errors), weight_norm_sq=norms,
        scale_invariant=np.asarray([n in invariant for n in names]),
        scaled_lambda=lambdas * norms, hvps=hvps)
