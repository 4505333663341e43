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
from .context import Batches, buffer_clones, call_model, no_trace, replay_random_draws, trainable_parameters

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


def _moments(x: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """[count, mean, sum of squared deviations, bin counts...] of every value of ``x``, float64."""
    v = x.detach().reshape(-1).to(torch.float64)
    bins = len(edges) - 1
    idx = (torch.bucketize(v, edges, right=True) - 1).clamp_(0, bins - 1)
    counts = torch.bincount(idx, minlength=bins).to(torch.float64)
    mean = v.mean() if v.numel() else v.new_full((), float("nan"))
    m2 = ((v - mean) ** 2).sum()
    return torch.cat([v.new_full((1,), float(v.numel())), mean.view(1), m2.view(1), counts])


def _summary(parts: list[torch.Tensor]) -> torch.Tensor:
    """[mean, std, hist...] of the union of the values behind ``_moments`` rows (one per forward:
    several when a step accumulated micro-batches), merged exactly (Chan et al.'s update)."""
    n, mean, m2, counts = parts[0][0], parts[0][1], parts[0][2], parts[0][3:]
    for p in parts[1:]:
        delta, n_total = p[1] - mean, n + p[0]
        mean = mean + delta * p[0] / n_total
        m2 = m2 + p[2] + delta ** 2 * n * p[0] / n_total
        n, counts = n_total, counts + p[3:]
    std = (m2 / n).sqrt() if n > 0 else m2.new_full((), float("nan"))
    return torch.cat([mean.view(1), std.view(1), counts / n.clamp(min=1)])


def activation_stats(model: nn.Module, inputs, layers: Sequence[str],
                     bin_edges: Sequence[float] = DEFAULT_BIN_EDGES) -> ActivationRecord:
    """Mean, std and histogram of each layer's pre-activation on ``inputs`` (train mode, unless
    ``ModelInputs.training`` says otherwise; ``Batches``: over all their values together).
    ``inputs`` as in ``landscape.along_gradient``."""
    params = trainable_parameters(model)
    device = next(iter(params.values())).device
    edges = torch.as_tensor(np.asarray(bin_edges, dtype=np.float64), device=device)
    found: dict[str, list[torch.Tensor]] = {layer: [] for layer in layers}
    modules = {layer: preactivation_module(model, layer) for layer in layers}
    # Moments are taken inside the hook: an in-place ReLU overwrites the output right after.
    handles = [m.register_forward_hook(
        lambda mod, args, out, layer=layer: found[layer].append(_moments(out, edges)))
        for layer, m in modules.items()]
    calls = [b.inputs for b in inputs.parts] if isinstance(inputs, Batches) else [inputs]
    try:
        with no_trace(model, device), torch.no_grad():
            buffers = buffer_clones(model)
            replay_random_draws()  # the probe's draws; several calls draw in sequence from there
            for call in calls:
                call_model(model, call, params, buffers)
    finally:
        for h in handles:
            h.remove()
    rows = torch.stack([_summary(found[layer]) for layer in layers]).cpu().numpy()
    return ActivationRecord(list(layers), rows[:, 0], rows[:, 1], rows[:, 2:],
                            edges.cpu().numpy())
