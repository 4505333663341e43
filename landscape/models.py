"""Models: VGG-A for 32x32 inputs, with the normalization layer as a builder parameter.

``MODELS`` maps a model name to a builder ``(width, num_classes) -> nn.Module``;
``NORMS`` maps a normalization name to factories for the layer placed after each
convolution (``conv``) and each hidden linear layer (``linear``). Later models and
normalizers register here and the training loop never changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .errors import LandscapeError

# Convolution widths of VGG-A (Simonyan & Zisserman's configuration "A"); "M" = 2x2 max-pool.
VGG_A_CONFIG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
VGG_A_HIDDEN = (512, 512)  # classifier 512 -> 512 -> 512 -> classes


@dataclass(frozen=True)
class Norm:
    """Factories for the normalization after a convolution and after a hidden linear layer."""

    conv: Callable[[int], nn.Module]
    linear: Callable[[int], nn.Module]


NORMS: dict[str, Norm] = {
    "none": Norm(conv=lambda c: nn.Identity(), linear=lambda c: nn.Identity()),
    "batch": Norm(conv=nn.BatchNorm2d, linear=nn.BatchNorm1d),
}


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


def glorot_init_(model: nn.Module) -> nn.Module:
    """Glorot (Xavier) uniform weights and zero biases for every conv and linear layer."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


class VGG(nn.Module):
    """A VGG network: ``features`` (conv blocks) then ``classifier`` (MLP)."""

    def __init__(self, config, hidden, norm: Norm, width: float = 1.0, num_classes: int = 10,
                 in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            out = _scaled(item, width)
            layers += [nn.Conv2d(channels, out, 3, padding=1), norm.conv(out), nn.ReLU(inplace=True)]
            channels = out
        self.features = nn.Sequential(*layers)
        head: list[nn.Module] = [nn.Flatten()]
        for h in hidden:
            out = _scaled(h, width)
            head += [nn.Linear(channels, out), norm.linear(out), nn.ReLU(inplace=True)]
            channels = out
        head.append(nn.Linear(channels, num_classes))
        self.classifier = nn.Sequential(*head)
        glorot_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def vgg_a(width: float = 1.0, num_classes: int = 10, norm: str = "none") -> VGG:
    """VGG-A (8 conv + 3 linear layers) for 32x32 images, with ``norm`` after each hidden layer."""
    if norm not in NORMS:
        raise LandscapeError(f"unknown normalization {norm!r}; choose from {', '.join(NORMS)}")
    return VGG(VGG_A_CONFIG, VGG_A_HIDDEN, NORMS[norm], width=width, num_classes=num_classes)


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: how to build it and which normalization it uses."""

    build: Callable[..., nn.Module]
    norm: str


MODELS: dict[str, ModelSpec] = {
    "vgg_a": ModelSpec(lambda width=1.0, num_classes=10: vgg_a(width, num_classes, "none"), "none"),
    "vgg_a_bn": ModelSpec(lambda width=1.0, num_classes=10: vgg_a(width, num_classes, "batch"), "batch"),
}


def build_model(name: str, width: float = 1.0, num_classes: int = 10) -> nn.Module:
    """Build a registered model by name (see ``MODELS``)."""
    if name not in MODELS:
        raise LandscapeError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return MODELS[name].build(width=width, num_classes=num_classes)


# More normalizers (noisy BN, lp-BN, layer/group norm) and the deep linear network register
# themselves into NORMS and MODELS when imported.
from . import dln, norms  # noqa: E402,F401
