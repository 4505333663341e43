"""Models: the registry, VGG-A and the residual networks with every normalizer, the deep
linear network, the course experiments' MLP and CNN, models given by import path
(``module:callable``), layer naming.

Importing this package imports every module that registers a model or a normalizer, so
``MODELS`` and ``NORMS`` are complete whatever was imported first.
"""

from . import norms, vgg, resnet, dln, course  # noqa: F401,I001  (each registers its own; this order lists VGG first)
from .course import CNN, COURSE_MODELS, MLP
from .dln import DLN_MODELS, DeepLinear
from .imported import import_model, is_import_path, norm_of, run_label
from .layers import (NORMALIZATION_TYPES, default_ics_layers, normalized_layers,
                     preactivation_module, resolve_layers, weight_layers)
from .norms import GhostBatchNorm, LpBatchNorm, NoiseInjection, seed_noise
from .resnet import RESNET_FAMILIES, ResNet, cifar_resnet, resnet18
from .randomness import draws_random, is_stochastic, random_modules
from .registry import MODELS, NORMS, ModelSpec, Norm, build_model, glorot_init_
from .vgg import VGG, vgg_a

__all__ = ["MODELS", "NORMS", "ModelSpec", "Norm", "build_model", "draws_random", "import_model", "is_import_path", "norm_of", "run_label", "glorot_init_", "VGG", "vgg_a",
           "DeepLinear", "DLN_MODELS", "MLP", "CNN", "COURSE_MODELS", "random_modules", "NoiseInjection", "LpBatchNorm", "GhostBatchNorm", "ResNet", "cifar_resnet", "resnet18", "RESNET_FAMILIES", "is_stochastic",
           "seed_noise", "weight_layers", "resolve_layers", "default_ics_layers",
           "preactivation_module", "normalized_layers", "NORMALIZATION_TYPES"]
