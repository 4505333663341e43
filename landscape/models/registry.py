"""The model and normalizer registries: names a sweep, a config file or the CLI can give.

``MODELS`` maps a model name to a ``ModelSpec`` (a builder ``(width, num_classes) ->
nn.Module`` and the name of its normalization); ``NORMS`` maps a normalization name to a
``Norm``: factories for the layer placed after each convolution (``conv``) and each hidden
linear layer (``linear``). Each model and normalizer is registered by the module that defines
it (``register_model`` / ``register_norm``); ``landscape.models`` imports every such module,
so the registries are complete whenever ``landscape.models`` is importable, whatever was
imported first, and a builder looks a normalizer up only when it is called.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..data.images import IMAGE_SHAPE
from ..errors import LandscapeError


@dataclass(frozen=True)
class Norm:
    """Factories for the normalization after a convolution and after a hidden linear layer."""

    conv: Callable[[int], nn.Module]
    linear: Callable[[int], nn.Module]
    # Whether its layers draw random numbers in training mode (the paper's noisy BN).
    random: bool = False


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: how to build it and which normalization it uses."""

    build: Callable[..., nn.Module]
    norm: str
    # Whether the builder takes a dropout rate (``dropout=p``): the course models and VGG-A.
    dropout: bool = False
    # Whether the builder takes a nonlinearity (``activation=NAME``, ``nonlinearities``):
    # every image model; not the deep linear network.
    activation: bool = False
    # Whether the builder takes the input's shape (``image_shape=(C, H, W)``): every image
    # model here; one that does not is built for CIFAR's 3x32x32 and refuses other data.
    image_shape: bool = False
    # Whether its own layers (besides its normalization's and dropout) draw random numbers in
    # training mode: a sweep trains such runs one by one (``randomness.draws_random``). None:
    # not declared (a model registered by a script); then a model is built on the meta
    # device to look. Every model registered here declares it.
    random: bool | None = None
    # Whether the builder takes a depth (``depth=D``, hidden weight layers): the course models.
    depth: bool = False


MODELS: dict[str, ModelSpec] = {}
NORMS: dict[str, Norm] = {}


def register_model(name: str, spec: ModelSpec) -> ModelSpec:
    """Add ``name`` to ``MODELS``; a name registered twice is a programming error."""
    if name in MODELS:
        raise ValueError(f"model {name!r} is registered twice")
    MODELS[name] = spec
    return spec


def register_norm(name: str, norm: Norm) -> Norm:
    """Add ``name`` to ``NORMS``; a name registered twice is a programming error."""
    if name in NORMS:
        raise ValueError(f"normalization {name!r} is registered twice")
    NORMS[name] = norm
    return norm


def norm_named(name: str) -> Norm:
    if name not in NORMS:
        raise LandscapeError(f"unknown normalization {name!r}; choose from {', '.join(NORMS)}")
    return NORMS[name]


def build_model(name: str, width: float = 1.0, num_classes: int = 10,
                dropout: float = 0.0, activation: str = "relu",
                image_shape: tuple[int, int, int] | None = None,
                depth: int | None = None) -> nn.Module:
    """Build a registered model by name (see ``MODELS``); ``dropout``: the rate of its dropout
    layers, for the models that have them (``ModelSpec.dropout``; 0 = none); ``activation``:
    its nonlinearity, for the models that take one (``ModelSpec.activation``); ``image_shape``:
    (C, H, W) of its input images (None: CIFAR's), for the models that take it; ``depth``: its
    hidden weight layers, for the models that take one (``ModelSpec.depth``; None: its own)."""
    if name not in MODELS:
        raise LandscapeError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    spec = MODELS[name]
    kwargs: dict = {"width": width, "num_classes": num_classes}
    if spec.dropout:
        kwargs["dropout"] = dropout
    elif dropout:
        raise LandscapeError(f"model {name!r} has no dropout layers: --dropout must be 0, "
                             f"got {dropout!r}")
    check_image_shape(name, image_shape)
    if spec.image_shape:
        kwargs["image_shape"] = tuple(image_shape or IMAGE_SHAPE)
    if spec.activation:
        kwargs["activation"] = activation
    elif activation != "relu":
        raise LandscapeError(f"model {name!r} has no nonlinearity: --activation must be relu "
                             f"(the default), got {activation!r}")
    if depth is not None:
        if not spec.depth:
            raise LandscapeError(f"model {name!r} has no --depth: it applies to "
                                 f"{', '.join(n for n, m in MODELS.items() if m.depth)}")
        kwargs["depth"] = depth
    return spec.build(**kwargs)


def check_image_shape(name: str, image_shape: tuple[int, int, int] | None) -> None:
    """``LandscapeError`` when model ``name`` cannot take images of ``image_shape`` (None:
    CIFAR's): a model whose builder takes no ``image_shape`` is built for CIFAR's only."""
    if name in MODELS and not MODELS[name].image_shape and image_shape is not None \
            and tuple(image_shape) != IMAGE_SHAPE:
        raise LandscapeError(f"model {name!r} takes {'x'.join(map(str, IMAGE_SHAPE))} images, "
                             f"the data's are {'x'.join(map(str, image_shape))}")


def glorot_init_(model: nn.Module) -> nn.Module:
    """Glorot (Xavier) uniform weights and zero biases for every conv and linear layer."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model
