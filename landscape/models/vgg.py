"""VGG-A for 32x32 inputs (and any other size), with the normalization layer as a builder
parameter.

Registered models (``landscape.models.MODELS``), each VGG-A with a normalizer of
``landscape.models.norms`` after every hidden conv and linear layer:

| model              | norm          |      | model        | norm    |
|--------------------|---------------|------|--------------|---------|
| ``vgg_a``          | ``none``      |      | ``vgg_a_l1`` | ``l1``  |
| ``vgg_a_bn``       | ``batch``     |      | ``vgg_a_l2`` | ``l2``  |
| ``vgg_a_noisy_bn`` | ``noisy_batch`` |    | ``vgg_a_linf`` | ``linf`` |
| ``vgg_a_noise``    | ``noise``     |      | ``vgg_a_ln`` | ``layer`` |
| ``vgg_a_gbn``      | ``ghost_batch`` |    | ``vgg_a_gn`` | ``group`` |

``dropout=p`` (> 0) puts ``nn.Dropout(p)`` after the ReLU of each hidden linear layer of the
classifier, as in Simonyan & Zisserman; with p = 0 there is no dropout module, so the module
names (``classifier.4``, ...) are those of the model without dropout.
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.images import IMAGE_SHAPE
from .nonlinearities import nonlinearity
from .norms import NORM_SUFFIXES, seed_noise
from .registry import ModelSpec, Norm, glorot_init_, norm_named, register_model

# Convolution widths of VGG-A (Simonyan & Zisserman's configuration "A"); "M" = 2x2 max-pool.
VGG_A_CONFIG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
VGG_A_HIDDEN = (512, 512)  # classifier 512 -> 512 -> 512 -> classes


def scaled(channels: int, width: float) -> int:
    """A layer size times ``width``, at least 1 (``--width``)."""
    return max(1, int(round(channels * width)))


class VGG(nn.Module):
    """A VGG network: ``features`` (conv blocks) then ``classifier`` (MLP)."""

    def __init__(self, config, hidden, norm: Norm, width: float = 1.0, num_classes: int = 10,
                 image_shape: tuple[int, int, int] = IMAGE_SHAPE, dropout: float = 0.0,
                 activation: str = "relu"):
        super().__init__()
        layers: list[nn.Module] = []
        channels, size = image_shape[0], image_shape[1:]
        for item in config:
            if item == "M":
                # An odd side (28 -> 14 -> 7) keeps its last row: 28x28 ends at 1x1 as 32x32
                # does. Even sides pool as before (the same windows either way).
                odd = any(side % 2 for side in size)
                layers.append(nn.MaxPool2d(2, ceil_mode=True) if odd else nn.MaxPool2d(2))
                size = tuple(-(-side // 2) for side in size)
                continue
            out = scaled(item, width)
            layers += [nn.Conv2d(channels, out, 3, padding=1), norm.conv(out),
                       nonlinearity(activation)]
            channels = out
        self.features = nn.Sequential(*layers)
        channels *= size[0] * size[1]  # 1x1 from 32x32 (or 28x28); larger images give more
        head: list[nn.Module] = [nn.Flatten()]
        for h in hidden:
            out = scaled(h, width)
            head += [nn.Linear(channels, out), norm.linear(out), nonlinearity(activation)]
            if dropout > 0:
                head.append(nn.Dropout(dropout))
            channels = out
        head.append(nn.Linear(channels, num_classes))
        self.classifier = nn.Sequential(*head)
        glorot_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def vgg_a(width: float = 1.0, num_classes: int = 10, norm: str = "none",
          dropout: float = 0.0, activation: str = "relu",
          image_shape: tuple[int, int, int] = IMAGE_SHAPE) -> VGG:
    """VGG-A (8 conv + 3 linear layers) for 32x32 images, with ``norm`` after each hidden layer.

    Noise layers (noisy BN) are seeded from ``torch.initial_seed()`` -- the run's ``--seed``,
    since a run seeds torch right before building its model -- without drawing from the global
    RNG, so the initial weights are those of the same model without noise.
    """
    model = VGG(VGG_A_CONFIG, VGG_A_HIDDEN, norm_named(norm), width=width, num_classes=num_classes,
                image_shape=image_shape, dropout=dropout, activation=activation)
    return seed_noise(model, torch.initial_seed())


VGG_A_VARIANTS = {f"vgg_a{suffix}": norm for suffix, norm in NORM_SUFFIXES.items()}


def _builder(norm: str):
    def build(width: float = 1.0, num_classes: int = 10, dropout: float = 0.0,
              activation: str = "relu", image_shape=IMAGE_SHAPE) -> nn.Module:
        return vgg_a(width, num_classes, norm, dropout, activation, image_shape)
    return build


for _name, _norm in VGG_A_VARIANTS.items():
    register_model(_name, ModelSpec(_builder(_norm), _norm, dropout=True, random=False,
                                    activation=True, image_shape=True))
