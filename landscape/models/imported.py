"""Models given by import path: ``--models mypackage.nets:ResNet18`` (``module:callable``).

The callable is imported and called with the sweep's ``model_kwargs`` (``--model-kwargs``, an
experiment file's ``model_kwargs`` table) and, when it takes a ``num_classes`` argument (by
name, or through ``**kwargs``), the data's class count; nothing else (``--width``,
``--dropout`` and ``--activation`` are the registered models'). It must return an
``nn.Module``. Called once on the meta device (no memory, no random draws), the module says
how it normalizes (``norm_of``: BatchNorm or not) and whether its training-mode forward draws
random numbers (``randomness.is_stochastic``); ``import_model`` registers it in ``MODELS``
under its path with those answers, so that a sweep plans, trains and records it as any
registered model. Its registry entry is the path and the arguments (``ImportedModel``), not
the callable: a Ray worker imports the module itself, so the module must be importable there.

A run of such a model is named after the callable (``run_label``: ``ResNet18-lr0.1-seed0``),
as a path's ``:`` and dots do not belong in a run's name.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..errors import LandscapeError
from .norms import GhostBatchNorm, LpBatchNorm, NoiseInjection
from .randomness import is_stochastic
from .registry import MODELS, ModelSpec

SEPARATOR = ":"
_DOTTED = r"[^\W\d]\w*(?:\.[^\W\d]\w*)*"  # dotted Python identifiers
IMPORT_PATH = re.compile(rf"({_DOTTED}):({_DOTTED})")
# Given by the sweep from its data, never by the user's arguments.
DATA_ARGUMENT = "num_classes"


def is_import_path(name: str) -> bool:
    """Whether a ``--models`` entry names a callable by import path (registered names have
    no ``:``)."""
    return SEPARATOR in name


def run_label(model: str) -> str:
    """How a model shows in its runs' names: a registered model's name; an import path's
    callable (its last dotted part): ``mypackage.nets:ResNet18`` -> ``ResNet18``."""
    if not is_import_path(model):
        return model
    return model.rsplit(SEPARATOR, 1)[1].rsplit(".", 1)[-1]


def load_callable(path: str) -> Callable:
    """The object ``module:attribute`` names; ``LandscapeError`` (one line) when the path is
    malformed, the module is not there or fails to import, the attribute is missing, or it is
    not callable."""
    match = IMPORT_PATH.fullmatch(path)
    if match is None:
        raise LandscapeError(f"--models {path!r}: an import path is module:callable "
                             "(mypackage.nets:ResNet18)")
    module_name, attribute = match.groups()
    try:
        target = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if module_name != missing and not module_name.startswith(missing + "."):
            raise _import_failed(path, module_name, error) from None  # the module's own import
        raise LandscapeError(f"--models {path}: no module named {error.name!r} (is its folder "
                             "on PYTHONPATH?)") from None
    except Exception as error:  # noqa: BLE001 - the user's module: any error, said in one line
        raise _import_failed(path, module_name, error) from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise LandscapeError(f"--models {path}: {module_name} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise LandscapeError(f"--models {path}: not callable (a {type(target).__name__})")
    return target


def _import_failed(path: str, module_name: str, error: BaseException) -> LandscapeError:
    return LandscapeError(f"--models {path}: importing {module_name} raised "
                          f"{_one_line(error)}")


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def takes_num_classes(factory: Callable) -> bool:
    """Whether ``factory`` accepts ``num_classes=`` (by name, or through ``**kwargs``, as
    torchvision's model functions do)."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # no signature to read (some builtins): not given
        return False
    return any(p.name == DATA_ARGUMENT and p.kind is not p.POSITIONAL_ONLY
               or p.kind is p.VAR_KEYWORD for p in parameters)


def call_model(path: str, kwargs: dict[str, Any], num_classes: int) -> nn.Module:
    """The module ``path``'s callable returns for ``kwargs`` (and ``num_classes``, if it
    takes it); ``LandscapeError`` when it raises or returns anything but an ``nn.Module``."""
    factory = load_callable(path)
    arguments = dict(kwargs)
    if takes_num_classes(factory):
        arguments[DATA_ARGUMENT] = num_classes
    try:
        model = factory(**arguments)
    except Exception as error:  # noqa: BLE001 - the user's code: any error, in one line
        shown = ", ".join(f"{k}={v!r}" for k, v in arguments.items())
        raise LandscapeError(f"--models {path}: calling it with ({shown}) raised "
                             f"{_one_line(error)}") from None
    if not isinstance(model, nn.Module):
        raise LandscapeError(f"--models {path}: returned a {type(model).__name__}, not a "
                             "torch.nn.Module")
    return model


def check_model_kwargs(kwargs) -> None:
    """``model_kwargs``: None, or a table of keyword arguments that JSON holds (the file's
    ``config`` stores them), without the ``num_classes`` the data gives."""
    if kwargs is None:
        return
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise LandscapeError(f"--model-kwargs must be a table of keyword arguments (a JSON "
                             f"object), got {kwargs!r}")
    if DATA_ARGUMENT in kwargs:
        raise LandscapeError(f"--model-kwargs: {DATA_ARGUMENT} is given from the data's classes, "
                             "not by --model-kwargs")
    try:
        json.dumps(kwargs, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise LandscapeError(f"--model-kwargs: not storable as JSON ({error})") from None


@dataclass(frozen=True)
class ImportedModel:
    """A ``ModelSpec.build`` for an import path: the path and its arguments (JSON), so that
    it pickles by value and imports the module where it is called (a Ray worker)."""

    path: str
    kwargs_json: str = "{}"

    def __call__(self, width: float, num_classes: int, image_shape=None) -> nn.Module:
        # width and image_shape are the registered models': the arguments say the model.
        return call_model(self.path, json.loads(self.kwargs_json), num_classes)


# Which registered normalization a module's layers are, the first that applies: BN with the
# paper's noise, Ghost BN, BN (any torch BatchNorm), lp BN, group, layer, the noise alone.
def _lp_name(model: nn.Module) -> str:
    p = next(m.p for m in model.modules() if isinstance(m, LpBatchNorm))
    return "linf" if math.isinf(p) else f"l{p:g}"


def norm_of(model: nn.Module) -> str:
    """The ``NORMS`` name of ``model``'s normalization, from its modules (``none`` without)."""
    def has(*types) -> bool:
        return any(isinstance(m, types) for m in model.modules())

    batch = has(nn.modules.batchnorm._BatchNorm)
    if batch and has(NoiseInjection):
        return "noisy_batch"
    if has(GhostBatchNorm):
        return "ghost_batch"
    if batch:
        return "batch"
    if has(LpBatchNorm):
        return _lp_name(model)
    for types, name in ((nn.GroupNorm, "group"), (nn.LayerNorm, "layer"),
                        (NoiseInjection, "noise")):
        if has(types):
            return name
    return "none"


def inspect_model(build: ImportedModel) -> nn.Module:
    """The model built once to look at, on the meta device (no memory, no draws from torch's
    generators); a model that cannot be built there (it computes with its tensors while it
    is built) is built on the CPU."""
    try:
        with torch.device("meta"):
            return build(1.0, 10)
    except LandscapeError:
        return build(1.0, 10)  # the same error again, or a model the CPU builds


def import_model(path: str, kwargs: dict[str, Any] | None) -> ModelSpec:
    """Import and inspect ``path`` called with ``kwargs``, and register it in ``MODELS`` under
    ``path`` (replacing an earlier import of it: its arguments may have changed). Its
    normalization (``norm_of``) and whether it draws random numbers (``is_stochastic``) are
    what its modules say; its input images are the user's to match (``image_shape=True``:
    built for any)."""
    build = ImportedModel(path, json.dumps(kwargs or {}, sort_keys=True))
    model = inspect_model(build)
    spec = ModelSpec(build, norm=norm_of(model), image_shape=True, random=is_stochastic(model))
    adopt(path, spec)
    return spec


def run_attributes(model: str) -> dict[str, Any]:
    """What a run of an import-path model records beside its ``model`` (the path) and
    ``norm``: its arguments (JSON) and whether it draws random numbers; nothing for a
    registered model."""
    if not is_import_path(model):
        return {}
    spec = MODELS[model]
    return {"model_kwargs": spec.build.kwargs_json, "draws_random": bool(spec.random)}


def adopt(path: str, spec: ModelSpec) -> None:
    """Register an import path's spec (made by ``import_model`` here or in a sweep's driver)."""
    MODELS[path] = spec
