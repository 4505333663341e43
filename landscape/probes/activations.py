"""Activation distributions (Santurkar et al., Fig. 1c and Fig. 2).

For each chosen weight layer, the distribution of its *pre-activation*: the output of the
normalization after the layer (BN, noisy BN including its noise, lp-BN, ...; the layer's own
output when there is none), i.e. what the ReLU receives -- see ``layers.preactivation_module``.
All values (every sample, unit and position) of one forward pass in train mode on the batch
give the mean, the standard deviation and a histogram on fixed bin edges; values below the
first edge count in the first bin and values above the last edge in the last bin, so each
histogram sums to 1.

The forward pass runs on clones of the buffers with the RNG restored: no trace is left.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..models.layers import preactivation_module
from .context import buffer_clones, no_trace, probe_forward, trainable_parameters

DEFAULT_BIN_EDGES = np.linspace(-10.0, 10.0, 81)  # 80 bins of width 0.25


@dataclass
class ActivationRecord:
    """Per-layer statistics at one step: (L,) arrays and (L, bins) histograms."""

    layers: list[str]
    mean: np.ndarray
    std: np.ndarray
    hist: np.ndarray  # fraction of the values in each bin; rows sum to 1
    bin_edges: np.ndarray  # (bins + 1,)
    step: int | None = None


def _summary(x: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """[mean, std, hist...] of every value of ``x`` as one float64 vector."""
    v = x.detach().reshape(-1).to(torch.float64)
    bins = len(edges) - 1
    idx = (torch.bucketize(v, edges, right=True) - 1).clamp_(0, bins - 1)
    hist = torch.bincount(idx, minlength=bins).to(torch.float64) / max(v.numel(), 1)
    std = v.std(unbiased=False) if v.numel() else v.new_full((), float("nan"))
    return torch.cat([v.mean().view(1), std.view(1), hist])


def activation_stats(model: nn.Module, inputs: torch.Tensor, layers: Sequence[str],
                     bin_edges: Sequence[float] = DEFAULT_BIN_EDGES) -> ActivationRecord:
    """Mean, std and histogram of each layer's pre-activation on ``inputs`` (train mode)."""
    params = trainable_parameters(model)
    device = next(iter(params.values())).device
    edges = torch.as_tensor(np.asarray(bin_edges, dtype=np.float64), device=device)
    found: dict[str, torch.Tensor] = {}
    modules = {layer: preactivation_module(model, layer) for layer in layers}
    # Summaries are taken inside the hook: an in-place ReLU overwrites the output right after.
    handles = [m.register_forward_hook(
        lambda mod, args, out, layer=layer: found.__setitem__(layer, _summary(out, edges)))
        for layer, m in modules.items()]
    try:
        with no_trace(model, device), torch.no_grad():
            probe_forward(model, params, buffer_clones(model), inputs)
    finally:
        for h in handles:
            h.remove()
    rows = torch.stack([found[layer] for layer in layers]).cpu().numpy()
    return ActivationRecord(list(layers), rows[:, 0], rows[:, 1], rows[:, 2:],
                            edges.cpu().numpy())
