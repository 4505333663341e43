"""The course experiments' small networks: an MLP and a two-block CNN, with and without BN.

| model    | layers at width 1 (``--width`` scales every hidden size / channel count)            | parameters |
|----------|----------------------------------------------------------------------------------------|-----------:|
| ``mlp``    | Flatten (3072) → [Linear 512 → ReLU → Dropout] × 2 → Linear 10                       | 1,841,162 |
| ``mlp_bn`` | the same with BatchNorm1d after each hidden Linear                                   | 1,843,210 |
| ``cnn``    | [Conv 3×3 (pad 1) → ReLU → Dropout2d → MaxPool 2] with 32, 64 channels → Flatten (4096) → Linear 10 | 60,362 |
| ``cnn_bn`` | the same with BatchNorm2d after each Conv                                           | 60,554 |

``depth=D`` (``--depth``): D hidden layers (the MLP: D Linear 512 layers; the CNN: D
convolutions, the first ceil(D/2) of 32 channels and the rest of 64, a max-pool after each
group), each followed by its norm, ReLU and dropout, then the classifier; D = 2 is the table's
network (the default, None, builds it as always).

Order within a block: weight layer → [BN] → ReLU → [dropout] (→ pool), as in the course.
``dropout=p``: the rate of every dropout layer (``nn.Dropout`` in the MLP, ``nn.Dropout2d``,
whole channels, in the CNN); p = 0 puts ``nn.Identity`` in its place, as the model without BN
has ``nn.Identity`` where BN would be, so module names (``layers.1``, ``features.0``) are the same
for every dropout rate and with or without BN. Initial weights: Glorot uniform, zero biases,
as VGG-A; with the same torch seed they are the same for every dropout rate (dropout layers
hold no parameters and draw nothing when built).
"""

from __future__ import annotations

import math

from torch import nn

from ..data.images import IMAGE_SHAPE
from .nonlinearities import nonlinearity
from .registry import ModelSpec, Norm, glorot_init_, norm_named, register_model
from .vgg import scaled

MLP_HIDDEN = (512, 512)
CNN_CHANNELS = (32, 64)  # two blocks, each halving the 32x32 image: 64 channels of 8x8 at the end


def _dropout(rate: float, layer: type[nn.Module]) -> nn.Module:
    return layer(rate) if rate > 0 else nn.Identity()


class MLP(nn.Module):
    """Flattened image → hidden layers (Linear → norm → ReLU → dropout) → classes."""

    def __init__(self, norm: Norm, width: float = 1.0, num_classes: int = 10,
                 dropout: float = 0.0, depth: int | None = None, activation: str = "relu",
                 image_shape: tuple[int, int, int] = IMAGE_SHAPE):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        features = math.prod(image_shape)
        hidden = MLP_HIDDEN if depth is None else (MLP_HIDDEN[0],) * depth
        for h in hidden:
            out = scaled(h, width)
            layers += [nn.Linear(features, out), norm.linear(out), nonlinearity(activation),
                       _dropout(dropout, nn.Dropout)]
            features = out
        layers.append(nn.Linear(features, num_classes))
        self.layers = nn.Sequential(*layers)
        glorot_init_(self)

    def forward(self, x):
        return self.layers(x)


def cnn_groups(depth: int | None) -> list[list[int]]:
    """Channels of the CNN's convolutions, one list per max-pooled group: [[32], [64]] by
    default; ``depth`` D: ceil(D/2) convolutions of 32 channels, then floor(D/2) of 64."""
    if depth is None:
        return [[c] for c in CNN_CHANNELS]
    first, second = (depth + 1) // 2, depth // 2
    return [g for g in ([CNN_CHANNELS[0]] * first, [CNN_CHANNELS[1]] * second) if g]


class CNN(nn.Module):
    """Groups of [Conv → norm → ReLU → Dropout2d] each ending in a MaxPool, then one Linear
    layer (two groups of one conv by default: ``cnn_groups``)."""

    def __init__(self, norm: Norm, width: float = 1.0, num_classes: int = 10,
                 dropout: float = 0.0, depth: int | None = None, activation: str = "relu",
                 image_shape: tuple[int, int, int] = IMAGE_SHAPE):
        super().__init__()
        layers: list[nn.Module] = []
        c_in, height, width_px = image_shape
        for group in cnn_groups(depth):
            for c in group:
                c_out = scaled(c, width)
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1), norm.conv(c_out),
                           nonlinearity(activation), _dropout(dropout, nn.Dropout2d)]
                c_in = c_out
            layers.append(nn.MaxPool2d(2))
            height, width_px = height // 2, width_px // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(),
                                        nn.Linear(c_in * height * width_px, num_classes))
        glorot_init_(self)

    def forward(self, x):
        return self.classifier(self.features(x))


COURSE_MODELS = {"mlp": (MLP, "none"), "mlp_bn": (MLP, "batch"),
                 "cnn": (CNN, "none"), "cnn_bn": (CNN, "batch")}


def _builder(network: type[nn.Module], norm: str):
    def build(width: float = 1.0, num_classes: int = 10, dropout: float = 0.0,
              activation: str = "relu", image_shape=IMAGE_SHAPE,
              depth: int | None = None) -> nn.Module:
        return network(norm_named(norm), width=width, num_classes=num_classes, dropout=dropout,
                       depth=depth, activation=activation, image_shape=image_shape)
    return build


for _name, (_network, _norm) in COURSE_MODELS.items():
    register_model(_name, ModelSpec(_builder(_network, _norm), _norm, dropout=True,
                                    random=False, activation=True, image_shape=True,
                                    depth=True))
