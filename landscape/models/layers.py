"""Naming the layers of a model: weight layers by name or 1-based index, and their outputs.

A model's *weight layers* are its ``nn.Conv2d`` and ``nn.Linear`` modules in registration
order (VGG-A: 8 convolutions then 3 linear layers, #1 ... #11; the DLN: #1 ... #25). Probes
address them by module name (``features.0``) or by 1-based index (``5`` or ``#5``), the way
the paper does ("layer #5 and #10").

The *pre-activation* of a weight layer is the output of the normalization that follows it
(BN, noisy BN, lp-BN, ...; the layer itself when there is none): the value the nonlinearity
receives. Found by walking the siblings after the layer in its parent ``nn.Sequential``.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from ..errors import LandscapeError
from .nonlinearities import NONLINEARITY_TYPES
from .norms import LpBatchNorm

WEIGHT_TYPES = (nn.Conv2d, nn.Linear)
# Siblings that end a layer's block: the next weight layer, a nonlinearity, pooling, reshaping.
_BLOCK_END = WEIGHT_TYPES + NONLINEARITY_TYPES + (nn.MaxPool2d, nn.AvgPool2d,
                                                 nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout)


def weight_layers(model: nn.Module) -> list[str]:
    """Names of the conv and linear modules, in registration (= forward, for Sequentials) order."""
    return [n for n, m in model.named_modules() if isinstance(m, WEIGHT_TYPES)]


def default_ics_layers(count: int) -> list[int]:
    """One early and one late layer (1-based): k//2 and k-1; VGG-A (k = 11) gives #5 and #10."""
    return sorted({max(2, count // 2), max(2, count - 1)}) if count >= 2 else [1]


def resolve_layers(model: nn.Module, spec: Sequence[str | int] | None,
                   default: Sequence[int] | None = None, option: str = "layers") -> list[str]:
    """Weight-layer names for ``spec`` (names, or 1-based indices as int, '5' or '#5').

    ``spec=None`` selects ``default`` (1-based indices), or every weight layer when that is None.
    An unknown name or an index out of range is a ``LandscapeError`` naming the choices.
    """
    names = weight_layers(model)
    if not names:
        raise LandscapeError(f"{option}: the model has no conv or linear layers")
    if spec is None:
        spec = list(default) if default is not None else list(range(1, len(names) + 1))
    chosen: list[str] = []
    for item in spec:
        text = str(item).strip()
        index = text[1:] if text.startswith("#") else text
        if isinstance(item, bool):
            raise LandscapeError(f"{option}: {item!r} is not a layer name or index")
        if index.isdigit():
            k = int(index)
            if not 1 <= k <= len(names):
                raise LandscapeError(f"{option}: layer index {k} is out of range 1..{len(names)}")
            name = names[k - 1]
        elif text in names:
            name = text
        else:
            raise LandscapeError(f"{option}: unknown layer {text!r}; give an index 1..{len(names)} "
                                 f"or one of {', '.join(names)}")
        if name not in chosen:
            chosen.append(name)
    if not chosen:
        raise LandscapeError(f"{option} is empty; give layer names or 1-based indices")
    return chosen


def _block_after(model: nn.Module, layer: str) -> list[nn.Module]:
    """The siblings after ``layer`` in its parent ``nn.Sequential``, up to the block's end."""
    modules = dict(model.named_modules())
    parent_name, _, child = layer.rpartition(".")
    parent = modules[parent_name] if parent_name else model
    target = modules[layer]
    block: list[nn.Module] = []
    if isinstance(parent, nn.Sequential):
        siblings = list(parent.children())
        pos = [i for i, m in enumerate(siblings) if m is target][0]
        for m in siblings[pos + 1:]:
            if isinstance(m, _BLOCK_END):
                break
            block.append(m)
    return block


def preactivation_module(model: nn.Module, layer: str) -> nn.Module:
    """The module whose output is ``layer``'s pre-activation (see the module docstring)."""
    block = _block_after(model, layer)
    return block[-1] if block else dict(model.named_modules())[layer]


# Normalizations that divide by a statistic homogeneous of degree 1 in their input.
NORMALIZATION_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, LpBatchNorm)


def normalized_layers(model: nn.Module) -> list[str]:
    """Weight layers whose output a normalization layer divides by its own scale (BN, GN, LN,
    lp-BN) before the nonlinearity: their weight is scale-invariant, L(c w) = L(w) for c > 0
    (up to the normalization's eps), hence <grad_w L, w> = 0 and its effective learning rate
    is eta / ||w||^2."""
    return [n for n in weight_layers(model)
            if any(isinstance(part, NORMALIZATION_TYPES)
                   for m in _block_after(model, n) for part in m.modules())]
