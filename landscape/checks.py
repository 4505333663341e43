"""Checks of the settings added with the paper's other experiments (``SweepConfig.validate``).

Instruments' step gaps and layer choices, and which models go with which dataset: the deep
linear network (``dln``, ``dln_bn``) trains on ``gaussian-linear`` only, by full-batch gradient
descent, and the VGG models on images only. Everything raises ``LandscapeError``, before any
file is written.
"""

from __future__ import annotations

import torch

from .dln import DATASET as DLN_DATASET, DLN_MODELS, N_TRAIN
from .errors import LandscapeError
from .instruments import chosen_layers
from .models import build_model


def _optional_positive_int(name: str, value) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LandscapeError(f"{name} must be a positive integer, got {value!r}")


def validate_extras(config) -> None:
    _optional_positive_int("--ics-every", config.ics_every)
    _optional_positive_int("--activations-every", config.activations_every)
    for option, spec, every, every_option in (
            ("--ics-layers", config.ics_layers, config.ics_every, "--ics-every"),
            ("--activation-layers", config.activation_layers, config.activations_every,
             "--activations-every")):
        if spec is not None and (isinstance(spec, (str, bytes)) or len(spec) == 0):
            raise LandscapeError(f"{option} must be a non-empty list of layer names or indices")
        if spec is not None and every is None:
            raise LandscapeError(f"{option} is given but the probe is off: add {every_option} N")
    dln_data = config.dataset == DLN_DATASET
    for model in config.models:
        if (model in DLN_MODELS) != dln_data:
            raise LandscapeError(
                f"model {model!r} does not train on --dataset {config.dataset}: the deep linear "
                f"network ({', '.join(DLN_MODELS)}) needs --dataset {DLN_DATASET}, and "
                f"{DLN_DATASET} works with those models only")
    if dln_data and config.batch_size < N_TRAIN:
        raise LandscapeError(f"{DLN_DATASET} trains by full-batch gradient descent on {N_TRAIN} "
                             f"samples: pass --batch-size {N_TRAIN} (got {config.batch_size})")
    if dln_data and config.augment:
        raise LandscapeError(f"--augment does not apply to --dataset {DLN_DATASET}")
    if config.ics_every is None and config.activations_every is None:
        return
    num_classes = 10
    for model in config.models:  # layer names and indices must exist in every model
        with torch.device("meta"):
            chosen_layers(config, build_model(model, width=config.width, num_classes=num_classes))
