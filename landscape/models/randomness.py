"""Which models draw random numbers in training mode.

A probe measures one deterministic function: inside it every forward pass draws the same random
numbers (``probes.context``). What is computed outside a probe was drawn elsewhere: a training
step's gradient was taken with that step's dropout masks and noise, not the probe's, so it
cannot stand in for the probe's g (``LandscapeProbe(reuse_grad=True)``); and a CUDA graph
replays its draws without the probe's reset, and vmap (the batched grid) refuses them: a sweep
trains such runs one by one (``train.config.SweepConfig.trains_alone`` asks ``draws_random``).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from .norms import NoiseInjection
from .registry import MODELS, NORMS, ModelSpec, build_model

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


def draws_random(name: str, dropout: float = 0.0) -> bool:
    """Whether registered model ``name`` with dropout rate ``dropout`` draws random numbers in
    training mode, as its registration says (no model is built): its own layers
    (``ModelSpec.random``), its normalization (``Norm.random``: noisy BN), or dropout layers
    with a rate above 0. A model registered without saying (``random=None``) is built once on
    the meta device to look (``is_stochastic``)."""
    spec = MODELS[name]
    if spec.random is None:
        return _built_draws(name, spec, dropout)
    return spec.random or NORMS[spec.norm].random or (spec.dropout and dropout > 0)


@functools.lru_cache(maxsize=None)
def _built_draws(name: str, spec: ModelSpec, dropout: float) -> bool:
    """``is_stochastic`` of model ``name`` built as a sweep builds it (``spec``: the
    registration it is built from, part of the cache's key)."""
    with torch.device("meta"):
        return is_stochastic(build_model(name, dropout=dropout))
