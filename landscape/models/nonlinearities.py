"""The nonlinearities a model can be built with (``--activation``): name -> module factory.

Every image model (VGG-A, the ResNets, the course MLP and CNN) takes ``activation=NAME`` and
puts that module where it has ReLU by default; the deep linear network has none. ReLU stays
``nn.ReLU(inplace=True)``, so the default models are the ones built before this option.
Parameters are PyTorch's defaults: LeakyReLU's slope 0.01, ELU's alpha 1, GELU exact (erf).
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from ..errors import LandscapeError

NONLINEARITIES: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "gelu": nn.GELU,
    "mish": nn.Mish,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "selu": nn.SELU,
    "silu": nn.SiLU,  # Swish with beta 1
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
}
NONLINEARITY_TYPES = (nn.ReLU, nn.GELU, nn.Mish, nn.ELU, nn.LeakyReLU, nn.SELU, nn.SiLU,
                      nn.Sigmoid, nn.Tanh)


def nonlinearity(name: str) -> nn.Module:
    """A fresh module of nonlinearity ``name`` (``NONLINEARITIES``)."""
    if name not in NONLINEARITIES:
        raise LandscapeError(f"unknown --activation {name!r}; choose from "
                             f"{', '.join(NONLINEARITIES)}")
    return NONLINEARITIES[name]()
