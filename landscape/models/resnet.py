"""Residual networks for 32x32 images (He, Zhang, Ren & Sun 2016), with any normalizer.

- ``resnet20``, ``resnet32``, ``resnet56``: the CIFAR ResNets of He et al., section 4.2: a 3x3
  stem of 16 channels, then 3 stages of n basic blocks (16, 32, 64 channels; stride 1, 2, 2),
  global average pooling and a linear classifier: 6n + 2 weight layers (n = 3, 5, 9). Their
  shortcuts are parameter-free (option A: subsample, then zero channels added), so the BN
  models have the paper's 0.27 M, 0.46 M and 0.85 M parameters.
- ``resnet18``: ResNet-18 in its CIFAR form: a 3x3 stem of 64 channels and no first max-pool,
  4 stages of 2 basic blocks (64, 128, 256, 512; stride 1, 2, 2, 2), 1x1 projection shortcuts
  (with the normalizer) where the shape changes (11.2 M parameters with BN).

Each is registered with every normalizer of ``norms.NORM_SUFFIXES``: ``resnet20`` (none),
``resnet20_bn``, ``resnet20_gn``, ``resnet20_gbn`` (Ghost BN), ...; ``--width`` scales every
channel count. Convolutions have no bias where a normalizer follows (it would cancel).

Without normalization (``none``, ``noise``) each residual branch ends in SkipInit's scalar
(De & Smith 2020, "Batch Normalization Biases Residual Blocks Towards the Identity Function
in Deep Networks", NeurIPS): x + alpha * F(x) with alpha a learned scalar initialized to 0, so
that the network starts as its shortcuts, as BN's small branch outputs make it at init; without
it a deep unnormalized ResNet's activations grow with depth. Convolutions get He (fan-out)
initialization, as torchvision's ResNets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data.images import IMAGE_SHAPE
from .nonlinearities import nonlinearity
from .norms import NORM_SUFFIXES, seed_noise
from .registry import ModelSpec, Norm, norm_named, register_model
from .vgg import scaled

CIFAR_DEPTHS = {"resnet20": 3, "resnet32": 5, "resnet56": 9}  # blocks per stage: 6n + 2 layers
CIFAR_STAGES = (16, 32, 64)
RESNET18_STAGES = (64, 128, 256, 512)
UNNORMALIZED = ("none", "noise")  # normalizers that do not rescale: SkipInit, biased convs


class PadShortcut(nn.Module):
    """Option A of He et al.: the input subsampled by ``stride``, channels zero-padded to
    ``out_channels`` (half before, half after); no parameters."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride, self.extra = stride, out_channels - in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        before = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, before, self.extra - before))


@dataclass(frozen=True)
class BlockShape:
    """What every block of a ResNet shares besides its channels and stride."""

    unnormalized: bool  # no normalizer that rescales: biased convs and SkipInit
    projection: bool  # 1x1 conv shortcuts where the shape changes (else option A)
    activation: str = "relu"  # the nonlinearity (``nonlinearities``)


class BasicBlock(nn.Module):
    """act(shortcut(x) + alpha * branch(x)), branch = conv, norm, act, conv, norm; alpha
    (SkipInit) only without normalization. The branch is an ``nn.Sequential``, so that each
    conv's pre-activation is the normalizer after it (``layers.preactivation_module``)."""

    def __init__(self, cin: int, cout: int, stride: int, norm: Norm, shape: BlockShape):
        super().__init__()
        unnormalized = shape.unnormalized
        self.branch = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=unnormalized),
                                    norm.conv(cout), nonlinearity(shape.activation),
                                    nn.Conv2d(cout, cout, 3, 1, 1, bias=unnormalized),
                                    norm.conv(cout))
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=unnormalized),
                                           norm.conv(cout))
                             if shape.projection else PadShortcut(cin, cout, stride))
        self.skip_init = nn.Parameter(torch.zeros(())) if unnormalized else None
        self.out = nonlinearity(shape.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch(x)
        if self.skip_init is not None:
            out = out * self.skip_init
        return self.out(out + self.shortcut(x))


class ResNet(nn.Module):
    """A stem, stages of ``BasicBlock``s, global average pooling, a linear classifier."""

    def __init__(self, stages: tuple[int, ...], blocks: int, norm_name: str, width: float = 1.0,
                 num_classes: int = 10, projection: bool = False, activation: str = "relu",
                 in_channels: int = 3):
        super().__init__()
        norm = norm_named(norm_name)
        shape = BlockShape(norm_name in UNNORMALIZED, projection, activation)
        channels = scaled(stages[0], width)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels, 3, 1, 1,
                                            bias=shape.unnormalized),
                                  norm.conv(channels), nonlinearity(activation))
        layers = []
        for i, stage in enumerate(stages):
            out = scaled(stage, width)
            for b in range(blocks):
                stride = 2 if i > 0 and b == 0 else 1
                layers.append(BasicBlock(channels, out, stride, norm, shape))
                channels = out
        self.layers = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(self.stem(x))
        return self.classifier(out.mean(dim=(2, 3)))


def cifar_resnet(depth_name: str, width: float = 1.0, num_classes: int = 10,
                 norm: str = "batch", activation: str = "relu", in_channels: int = 3) -> ResNet:
    """ResNet-20/32/56 of He et al. (``depth_name`` in ``CIFAR_DEPTHS``); noise layers seeded
    from the run's seed, as VGG-A's (``vgg.vgg_a``). Any image size: it ends in global
    average pooling."""
    model = ResNet(CIFAR_STAGES, CIFAR_DEPTHS[depth_name], norm, width, num_classes,
                   activation=activation, in_channels=in_channels)
    return seed_noise(model, torch.initial_seed())


def resnet18(width: float = 1.0, num_classes: int = 10, norm: str = "batch",
             activation: str = "relu", in_channels: int = 3) -> ResNet:
    """ResNet-18, CIFAR form (3x3 stem, no max-pool), projection shortcuts."""
    model = ResNet(RESNET18_STAGES, 2, norm, width, num_classes, projection=True,
                   activation=activation, in_channels=in_channels)
    return seed_noise(model, torch.initial_seed())


def _builder(family: str, norm: str):
    def build(width: float = 1.0, num_classes: int = 10, activation: str = "relu",
              image_shape: tuple[int, int, int] = IMAGE_SHAPE) -> ResNet:
        if family == "resnet18":
            return resnet18(width, num_classes, norm, activation, image_shape[0])
        return cifar_resnet(family, width, num_classes, norm, activation, image_shape[0])
    return build


RESNET_FAMILIES = (*CIFAR_DEPTHS, "resnet18")
for _family in RESNET_FAMILIES:
    for _suffix, _norm in NORM_SUFFIXES.items():
        register_model(f"{_family}{_suffix}", ModelSpec(_builder(_family, _norm), _norm,
                                                        random=False, activation=True,
                                                        image_shape=True))
