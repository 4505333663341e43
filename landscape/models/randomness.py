"""Which models draw random numbers in training mode.

A probe measures one deterministic function: inside it every forward pass draws the same random
numbers (``probes.context``). What is computed outside a probe was drawn elsewhere: a training
step's gradient was taken with that step's dropout masks and noise, not the probe's, so it
cannot stand in for the probe's g (``LandscapeProbe(reuse_grad=True)``); and a CUDA graph
replays its draws without the probe's reset (``train.streams.supports_graphs``).
"""

from __future__ import annotations

from torch import nn

from .norms import NoiseInjection

# Modules whose training-mode forward draws random numbers (dropout ones only when p > 0).
DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                 nn.FeatureAlphaDropout)
RANDOM_TYPES = (NoiseInjection, nn.RReLU)


def random_modules(model: nn.Module) -> list[nn.Module]:
    """The submodules whose training-mode forward draws random numbers (see ``is_stochastic``)."""
    return [m for m in model.modules()
            if isinstance(m, RANDOM_TYPES) or (isinstance(m, DROPOUT_TYPES) and m.p > 0)]


def is_stochastic(model: nn.Module) -> bool:
    """Whether a training-mode forward pass draws random numbers, as its modules tell: noise
    layers, RReLU, the dropout family with p > 0. Draws made by ``forward`` code itself
    (``F.dropout``, stochastic depth) show in no module: ``LandscapeProbe`` also watches
    torch's generators during the training step."""
    return bool(random_modules(model))
