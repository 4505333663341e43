"""A sweep's settings (``SweepConfig``) and their validation.

``SweepConfig.validate()`` raises ``LandscapeError`` naming the first bad value before any
file is written: numbers, names, the device, instruments' step gaps and layer choices, and
which models go with which dataset (the deep linear network, ``dln`` and ``dln_bn``, trains on
``gaussian-linear`` only, by full-batch gradient descent, and the VGG models on images only).
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, fields, replace
from typing import Any, Sequence

import torch

from ..data import DATASETS
from ..data.datasets import ARRAY_FILE_SUFFIX, is_array_file
from ..data.gaussian import DATASET as DLN_DATASET, N_TRAIN
from ..errors import LandscapeError
from ..models import DLN_MODELS, MODELS, build_model, draws_random
from ..models.imported import check_model_kwargs, import_model, is_import_path, run_label
from ..models.nonlinearities import NONLINEARITIES
from ..probes import PROBE_DTYPES
from .device import resolve_device
from .hessian_instruments import check_depth, uses_hessian_hooks, validate_hessian_options
from .instruments import chosen_layers
from .losses import LOSSES
from .schedules import SCHEDULES
from .snapshots import check_weight_schedule

PRECISIONS = ("fp32", "tf32", "bf16")
GRID_MODES = ("auto", "streams", "batched", "sequential")
# torch.optim.SGD (heavy-ball, or Nesterov with ``nesterov``), Adam, AdamW, Adagrad, Adadelta,
# Adamax, RMSprop: torch's defaults but the learning rate and weight decay.
OPTIMIZERS = ("sgd", "adam", "adamw", "adagrad", "adadelta", "adamax", "rmsprop")
# The axes of a sweep beyond models and learning rates: each field takes one value or a list,
# and the sweep is the product of every list (``SweepConfig.cells``). In this order they
# nest (the last varies fastest) and name runs (``RUN_NAME_PARTS``).
AXES = ("seed", "batch_size", "momentum", "weight_decay", "dropout", "optimizer", "activation",
        "loss", "label_smoothing", "lr_schedule", "depth")
# A sweep of more runs than this asks for confirmation (``--yes``; ``run_sweep(allow_large=True)``).
MAX_RUNS_UNASKED = 1000


@dataclass
class SweepConfig:
    """Every setting of a sweep; stored as JSON in the file's ``config`` attribute."""

    # Registered names (``models.MODELS``) or import paths ``module:callable`` of functions
    # returning an ``nn.Module`` (``models.imported``), called with ``model_kwargs``.
    models: Sequence[str] = ("vgg_a", "vgg_a_bn")
    model_kwargs: dict[str, Any] | None = None
    lrs: Sequence[float] = (0.1,)
    epochs: int | None = 20
    steps: int | None = None  # when set, overrides epochs: train exactly this many steps
    # The axes (``AXES``): one value, or a list of values to sweep over.
    batch_size: int | Sequence[int] = 128
    momentum: float | Sequence[float] = 0.0  # heavy-ball momentum of SGD (0 for adam, adamw)
    weight_decay: float | Sequence[float] = 0.0  # L2 added to the gradient (AdamW: decoupled)
    dropout: float | Sequence[float] = 0.0  # rate of the model's dropout layers (0 = none)
    optimizer: str | Sequence[str] = "sgd"  # sgd, adam, adamw, ... (OPTIMIZERS)
    nesterov: bool = False  # Nesterov momentum for sgd (needs a momentum above 0)
    activation: str | Sequence[str] = "relu"  # the image models' nonlinearity (NONLINEARITIES)
    loss: str | Sequence[str] = "cross_entropy"  # the classification loss (losses.LOSSES)
    label_smoothing: float | Sequence[float] = 0.0  # epsilon of the targets (not with hinge)
    probe_every: int = 100
    etas: Sequence[float] = (0.5, 1.0, 2.0, 4.0)  # multiples of the run's learning rate
    dataset: str = "cifar10"
    data_root: str | None = None
    augment: bool = False
    width: float = 1.0
    seed: int | Sequence[int] = 0
    device: str = "auto"
    precision: str = "tf32"  # training arithmetic on a GPU: fp32, tf32 or bf16 (autocast)
    probe: bool = True  # False: no landscape probes at all (benchmarks' baseline)
    # The landscape probe's arithmetic: float32 or float64 (on float64 copies; the model trains
    # as it does). None: float64 for the deep linear network, whose float32 probe read
    # beta_eff 1.1-3.1x too high over steps 6k-8k at its saddle and up to 13.6x after
    # (experiments/README.md), float32 for the rest.
    probe_dtype: str | None = None
    # How the learning rates of one model train: streams (CUDA graphs on concurrent CUDA
    # streams), batched (one vmapped model), sequential; auto = streams on a GPU where the
    # model allows, else sequential.
    grid: str = "auto"
    compile: bool = False  # torch.compile the training forward pass (CPU only; probes stay eager)
    # Weights kept at chosen steps (train/snapshots.py; the first and last step always when
    # either is set). None: off, nothing written.
    save_weights_every: int | None = None
    save_weights_at: Sequence[int] | None = None
    # Instruments (train/instruments.py); None = off. Layers: names or 1-based indices.
    ics_every: int | None = None  # steps between internal-covariate-shift probes
    ics_layers: Sequence[str | int] | None = None  # default: one early, one late layer
    activations_every: int | None = None  # steps between activation-distribution probes
    activation_layers: Sequence[str | int] | None = None  # default: every weight layer
    sharpness_every: int | None = None  # steps between Hessian sharpness probes
    sharpness_k: int = 1  # how many of the largest Hessian eigenvalues
    trace_samples: int = 0  # Hutchinson vectors per sharpness probe; 0 = no trace
    # Weight norms, effective lr, angular update, every step. None: on with the sharpness
    # probe (the curvature instruments read together: lambda_max against 2/lr, and how much
    # of BN's smoothness is weight-norm growth), off otherwise.
    weight_stats: bool | None = None
    # The learning-rate schedule (an axis, ``AXES``; train/schedules.py) and its parameters,
    # which apply to the runs of their schedule. Lengths are in optimizer steps.
    lr_schedule: str | Sequence[str] = "constant"  # SCHEDULES
    lr_step_size: int | None = None  # step: steps between decays (None: a third of the run)
    lr_step_gamma: float = 0.1  # step: the factor of each decay
    lr_exp_gamma: float | None = None  # exponential: the factor per step (None: 1% at the end)
    lr_eta_min: float = 0.0  # cosine: the learning rate it anneals to at the run's end
    lr_end_factor: float = 0.0  # linear: from 1 x the learning rate to this x over the run
    lr_plateau_factor: float = 0.1  # plateau: the factor of each reduction
    lr_patience: int = 10  # plateau: epochs without improvement before a reduction
    # The Hessian's spectrum, per-layer curvature, ranks (train/hessian_instruments.py; None =
    # off) and the course models' depth (an axis; None: the model's own).
    spectrum_every: int | None = None  # steps between spectral-density (SLQ) probes
    spectrum_iterations: int = 100  # Lanczos steps per start vector (PyHessian's default)
    hessian_samples: int = 4096  # training images in each fixed Hessian set
    hessian_repeats: int = 1  # independent Hessian sets: each probe measures each
    hessian_bn: str = "batch"  # BN on each batch's statistics, on running ones, or both
    layer_curvature_every: int | None = None  # steps between per-layer Hessian-block probes
    layer_trace_samples: int = 10  # Hutchinson vectors per layer block
    rank_every: int | None = None  # steps between gradient-norm and rank probes per layer
    depth: int | Sequence[int] | None = None  # hidden layers of mlp*/cnn* (MODELS' depth)

    def uses_hooks(self) -> bool:
        """Whether an instrument hooks one eager module and ``torch.optim`` optimizer: such
        runs train sequentially (not as a batched grid or CUDA graphs)."""
        return bool(self.ics_every or self.activations_every or self.sharpness_every
                    or self.records_weights() or uses_hessian_hooks(self))

    def training_mode(self, model: str, on_gpu: bool, runs: int) -> str:
        """How ``runs`` learning rates of ``model`` in this cell (one value per axis) train
        together -- the one rule, from the settings alone (``plan.plan_sweep`` applies it):

        - ``streams``: each run's step and probe a CUDA graph, the runs on concurrent streams;
          on a GPU (``on_gpu``), under ``--grid auto`` or ``streams``, without ``--compile``
          (its GPU gradients were measured wrong), with float32 probes (what graphs record);
        - ``batched``: one vmapped model, only when asked (``--grid batched``) and for two runs
          or more: measured slower than separate runs on a CPU and on an H100 alike
          (benchmarks/RESULTS.md), vmap turns K convolutions into grouped ones;
        - ``sequential``: one eager run after another: everything else, and always for runs
          that no grid holds (``trains_alone``).
        """
        if self.grid == "sequential" or self.trains_alone(model):
            return "sequential"
        if self.grid in ("auto", "streams"):
            graphs = on_gpu and not self.compile and self.probe_dtype_of(model) == "float32"
            return "streams" if graphs else "sequential"
        return "batched" if runs >= 2 else "sequential"

    def trains_alone(self, model: str) -> bool:
        """Whether runs of ``model`` in this cell must train one by one, whatever ``grid``
        asks: instruments hook one eager module and ``torch.optim`` optimizer
        (``uses_hooks``); the DLN's regression is no image classification; any optimizer but
        heavy-ball SGD (the batched grid writes that update itself; a graph holds no host-side
        step count); a model that draws random numbers (``models.draws_random``: neither vmap
        nor a graph replays them); a learning-rate schedule (a ``torch.optim`` scheduler
        changes the optimizer's learning rate on the host, which the batched grid's update and
        a graph's recorded step do not read)."""
        return (self.uses_hooks() or self.dataset == DLN_DATASET or self.optimizer != "sgd"
                or self.nesterov or draws_random(model, self.dropout)
                or self.lr_schedule != "constant")

    def records_weights(self) -> bool:
        """Whether runs record weight statistics: ``weight_stats``, or by default with the
        sharpness probe."""
        if self.weight_stats is None:
            return self.sharpness_every is not None
        return self.weight_stats

    def validate(self, on_gpu: bool | None = None) -> None:
        """Raise ``LandscapeError`` naming the first bad value; touches nothing on disk.

        ``on_gpu``: whether the runs train on a GPU; None: where ``device`` resolves here
        (a Ray sweep's workers, not the driver, say where its runs train)."""
        def known_model(name):
            if is_import_path(name):  # imported, inspected and registered here
                import_model(name, self.model_kwargs)
            elif name not in MODELS:
                raise LandscapeError(f"unknown model {name!r} in --models; choose from "
                                     f"{', '.join(MODELS)}, or give module:callable")

        check_model_kwargs(self.model_kwargs)
        _listed("--models", self.models, "model", known_model, unique=True)
        _check_model_names(self)
        _listed("--lrs", self.lrs, "learning rate", lambda v: _positive("--lrs value", v), unique=True)
        _listed("--etas", self.etas, "multiple of the learning rate",
                lambda v: _positive("--etas value", v))
        if self.steps is not None:
            _positive("--steps", self.steps, int)
        elif self.epochs is not None:
            _positive("--epochs", self.epochs, int)
        else:
            raise LandscapeError("give --epochs or --steps")
        _positive("--probe-every", self.probe_every, int)
        _positive("--width", self.width)
        for axis in AXES:
            option, what, check = AXIS_CHECKS[axis]
            _listed(option, self.axis_values(axis), what, check, unique=True)
        if any(o != "sgd" for o in self.axis_values("optimizer")) \
                and any(m != 0 for m in self.axis_values("momentum")):
            raise LandscapeError("--momentum is the heavy-ball momentum of --optimizer sgd; adam "
                                 "and adamw keep their own betas (0.9, 0.999), the others their "
                                 "torch defaults: sweep a momentum other than 0 in a separate "
                                 "sweep with --optimizer sgd")
        _check_nesterov(self)
        _check_smoothing(self)
        _check_schedule(self)
        if self.grid not in GRID_MODES:
            raise LandscapeError(f"unknown --grid {self.grid!r}; choose from {', '.join(GRID_MODES)}")
        if self.precision not in PRECISIONS:
            raise LandscapeError(f"unknown --precision {self.precision!r}; choose from "
                                 f"{', '.join(PRECISIONS)}")
        if not isinstance(self.dataset, str) or \
                (self.dataset not in DATASETS and not is_array_file(self.dataset)):
            raise LandscapeError(f"unknown dataset {self.dataset!r}; choose from "
                                 f"{', '.join(DATASETS)} or give a path to a "
                                 f"{ARRAY_FILE_SUFFIX} array file")
        if self.probe_dtype is not None and self.probe_dtype not in PROBE_DTYPES:
            raise LandscapeError(f"unknown --probe-dtype {self.probe_dtype!r}; choose from "
                                 f"{', '.join(PROBE_DTYPES)}")
        if self.grid == "streams" and "float64" in map(self.probe_dtype_of, self.models):
            raise LandscapeError("--grid streams records float32 probes in CUDA graphs: with "
                                 "--probe-dtype float64 use --grid sequential or batched")
        if on_gpu is None:
            on_gpu = resolve_device(self.device).type == "cuda"
        elif self.device not in ("auto", "cpu", "cuda"):  # cuda:N names a GPU of this machine
            raise LandscapeError(f"--device {self.device!r} on Ray workers: choose auto, cpu or "
                                 "cuda (Ray gives each task its own GPUs)")
        if not on_gpu and self.grid == "streams":
            raise LandscapeError("--grid streams replays CUDA graphs: it needs a GPU "
                                 "(--device cuda); use --grid sequential or batched here")
        if on_gpu and self.compile:
            # Measured: on an H100 (torch 2.11) a compiled VGG-A+BN step's gradient was 4% off
            # the eager step's at the same weights, while on the CPU the two agree to 1e-5
            # (tests check it). Refused until a GPU run shows them equal.
            raise LandscapeError("--compile is CPU-only for now: on a GPU its gradients differed "
                                 "from eager ones by 4% (benchmarks/RESULTS.md); --grid streams "
                                 "is the fast path there")
        _validate_extras(self)  # instruments' settings, DLN model/dataset pairing
        check_weight_schedule(self.save_weights_every, self.save_weights_at)

    def axis_values(self, axis: str) -> tuple:
        """The values of one axis (``AXES``): a list as given, a single value as a 1-tuple;
        ``depth`` None (the models' own) as (None,)."""
        if axis == "depth" and self.depth is None:
            return (None,)
        return _values(getattr(self, axis))

    def varying_axes(self) -> tuple[str, ...]:
        """The axes with more than one value: the parts run names carry (``run_name``)."""
        return tuple(a for a in AXES if len(self.axis_values(a)) > 1)

    def cells(self) -> list["SweepConfig"]:
        """The sweep as one config per combination of the axes' values (the product, the last
        axis of ``AXES`` varying fastest), each holding single values: what one group of
        runs (every model, every learning rate) trains with."""
        combos = itertools.product(*(self.axis_values(a) for a in AXES))
        return [replace(self, **dict(zip(AXES, combo))) for combo in combos]

    def total_steps(self, steps_per_epoch: int) -> int:
        """The steps each run trains: ``steps``, else ``epochs`` epochs."""
        return self.steps or self.epochs * steps_per_epoch

    def run_count(self) -> int:
        return len(self.models) * len(self.lrs) * math.prod(len(self.axis_values(a)) for a in AXES)

    def model(self, name: str, data=None):
        """A fresh ``nn.Module`` of model ``name`` at this config's width, dropout rate and
        nonlinearity (a config of one cell: ``cells``), for ``data``'s classes and image shape
        (None: CIFAR-10's)."""
        return build_model(name, width=self.width, dropout=self.dropout,
                           activation=self.activation, depth=self.depth,
                           num_classes=data.num_classes if data is not None else 10,
                           image_shape=data.image_shape if data is not None else None)

    def probe_dtype_of(self, model: str) -> str:
        """The probe's arithmetic for this model: ``probe_dtype``, or its default."""
        if self.probe_dtype is not None:
            return self.probe_dtype
        return "float64" if model in DLN_MODELS else "float32"


DROPOUT_MODELS = [name for name, spec in MODELS.items() if spec.dropout]
SEED_LIMIT = 2 ** 32  # as numpy's: seeds are torch generators' seeds and offsets of them


def _check_model_names(config) -> None:
    """Each model names its runs (``run_label``: an import path by its callable) differently
    from every other; ``model_kwargs`` only where a model is given by import path."""
    labels: dict[str, str] = {}
    for model in config.models:
        other = labels.setdefault(run_label(model), model)
        if other != model:
            raise LandscapeError(f"--models {other} and {model} would both name their runs "
                                 f"{run_label(model)}-...: give one of them in another sweep")
    if config.model_kwargs is not None and not any(map(is_import_path, config.models)):
        raise LandscapeError("--model-kwargs are the arguments of models given as "
                             "module:callable; --models lists none")


def _lacks(model: str, what: str) -> str:
    """Why an option of the registered models does not reach ``model``."""
    if is_import_path(model):
        return "is given by import path (its own arguments: --model-kwargs)"
    return f"has no {what}"


def _seed(value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < SEED_LIMIT:
        raise LandscapeError(f"--seed must be an integer in [0, 2**32), got {value!r}")


def _optimizer(value) -> None:
    if value not in OPTIMIZERS:
        raise LandscapeError(f"unknown --optimizer {value!r}; choose from {', '.join(OPTIMIZERS)}")


def _activation(value) -> None:
    if value not in NONLINEARITIES:
        raise LandscapeError(f"unknown --activation {value!r}; choose from "
                             f"{', '.join(NONLINEARITIES)}")


def _loss(value) -> None:
    if value not in LOSSES:
        raise LandscapeError(f"unknown --loss {value!r}; choose from {', '.join(LOSSES)}")


def _check_smoothing(config) -> None:
    """The hinge has no target distribution to smooth: refused rather than given a meaning
    of ours (every value of the product, as a sweep trains it)."""
    smoothed = [e for e in config.axis_values("label_smoothing") if e != 0]
    if smoothed and "hinge" in config.axis_values("loss"):
        raise LandscapeError(f"--label-smoothing {smoothed[0]:g} does not apply to --loss hinge "
                             "(no target distribution to smooth): sweep hinge in a separate "
                             "sweep with --label-smoothing 0")


def _check_nesterov(config) -> None:
    """Nesterov momentum is SGD's, with a momentum above 0 (as torch.optim.SGD asks)."""
    if not isinstance(config.nesterov, bool):
        raise LandscapeError(f"nesterov must be true or false, got {config.nesterov!r}")
    if config.nesterov and (any(o != "sgd" for o in config.axis_values("optimizer"))
                            or any(m <= 0 for m in config.axis_values("momentum"))):
        raise LandscapeError("--nesterov is Nesterov momentum for --optimizer sgd: it needs "
                             "--optimizer sgd and a --momentum above 0 (every value)")


def _lr_schedule(value) -> None:
    if value not in SCHEDULES:
        raise LandscapeError(f"unknown --lr-schedule {value!r}; choose from {', '.join(SCHEDULES)}")


def _check_schedule(config) -> None:
    """The schedules' parameters, whichever schedules the sweep lists (each is a setting of
    the sweep, stored with it)."""
    if config.lr_step_size is not None:
        _positive("--lr-step-size", config.lr_step_size, int)
    _positive("--lr-step-gamma", config.lr_step_gamma)
    if config.lr_exp_gamma is not None:
        _positive("--lr-exp-gamma", config.lr_exp_gamma)
    _in_range("--lr-eta-min", config.lr_eta_min, 0.0, math.inf)
    if "cosine" in config.axis_values("lr_schedule") and config.lr_eta_min >= min(config.lrs):
        raise LandscapeError(f"--lr-eta-min {config.lr_eta_min:g} is where cosine annealing ends: "
                             f"it must be below every --lrs value (the least is "
                             f"{min(config.lrs):g})")
    _fraction("--lr-end-factor", config.lr_end_factor, "0 <= f <= 1", lambda f: 0 <= f <= 1)
    _fraction("--lr-plateau-factor", config.lr_plateau_factor, "0 < f < 1", lambda f: 0 < f < 1)
    if isinstance(config.lr_patience, bool) or not isinstance(config.lr_patience, int) \
            or config.lr_patience < 0:
        raise LandscapeError(f"--lr-patience must be an integer >= 0, got {config.lr_patience!r}")


def _fraction(name: str, value, bound: str, holds) -> None:
    """A number within bounds torch's scheduler asks for (``bound``: their text)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not holds(value):
        raise LandscapeError(f"{name} must be a number with {bound}, got {value!r}")


def _positive(name: str, value, kind=float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= 0 or (kind is int and value != int(value)):
        raise LandscapeError(f"{name} must be a positive {'integer' if kind is int else 'number'}, "
                             f"got {value!r}")


def _in_range(name: str, value, low: float, high: float, why: str = "") -> None:
    """low <= value < high (a finite number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) \
            or not low <= value < high or math.isinf(value):
        bound = f"a finite number >= {low:g}" if math.isinf(high) else f"in [{low:g}, {high:g})"
        raise LandscapeError(f"{name} must be {bound}, got {value!r}" + (f" ({why})" if why else ""))


def _listed(option: str, values, what: str, check, unique: bool = False) -> None:
    """A non-empty list whose every item passes ``check`` (and, if ``unique``, none twice)."""
    if not values:
        raise LandscapeError(f"{option} is empty; give at least one {what}")
    for value in values:
        check(value)
    if unique and len(set(values)) != len(values):
        raise LandscapeError(f"{option} lists a {what} twice: {', '.join(map(str, values))}")


# Per axis: its option, what one value is, and the check of one value (errors name the value).
AXIS_CHECKS = {
    "seed": ("--seed", "seed", _seed),
    "batch_size": ("--batch-size", "batch size", lambda v: _positive("--batch-size", v, int)),
    "momentum": ("--momentum", "momentum", lambda v: _in_range(
        "--momentum", v, 0.0, 1.0, "heavy-ball momentum must be below 1")),
    "weight_decay": ("--weight-decay", "weight decay",
                     lambda v: _in_range("--weight-decay", v, 0.0, math.inf)),
    "dropout": ("--dropout", "dropout rate", lambda v: _in_range(
        "--dropout", v, 0.0, 1.0, "the fraction of units dropped in training")),
    "optimizer": ("--optimizer", "optimizer", _optimizer),
    "activation": ("--activation", "activation", _activation),
    "loss": ("--loss", "loss", _loss),
    "label_smoothing": ("--label-smoothing", "label smoothing", lambda v: _in_range(
        "--label-smoothing", v, 0.0, 1.0, "the weight of the uniform targets")),
    "lr_schedule": ("--lr-schedule", "learning-rate schedule", _lr_schedule),
    "depth": ("--depth", "depth", check_depth),
}


def _optional_positive_int(name: str, value) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LandscapeError(f"{name} must be a positive integer, got {value!r}")


def _validate_extras(config) -> None:
    _optional_positive_int("--ics-every", config.ics_every)
    _optional_positive_int("--activations-every", config.activations_every)
    _optional_positive_int("--sharpness-every", config.sharpness_every)
    validate_hessian_options(config)
    _positive("--sharpness-k", config.sharpness_k, int)
    if isinstance(config.trace_samples, bool) or not isinstance(config.trace_samples, int) \
            or config.trace_samples < 0:
        raise LandscapeError(f"--trace-samples must be an integer >= 0, got "
                             f"{config.trace_samples!r}")
    if config.sharpness_every is None and (config.sharpness_k != 1 or config.trace_samples):
        raise LandscapeError("--sharpness-k and --trace-samples are given but the sharpness probe "
                             "is off: add --sharpness-every N")
    if config.weight_stats is not None and not isinstance(config.weight_stats, bool):
        raise LandscapeError(f"weight_stats must be true or false, got {config.weight_stats!r}")
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
    for batch_size in config.axis_values("batch_size"):
        if dln_data and batch_size < N_TRAIN:
            raise LandscapeError(f"{DLN_DATASET} trains by full-batch gradient descent on "
                                 f"{N_TRAIN} samples: pass --batch-size {N_TRAIN} (got "
                                 f"{batch_size})")
    rates = [p for p in config.axis_values("dropout") if p > 0]
    for model in config.models:
        if rates and not MODELS[model].dropout:
            raise LandscapeError(f"model {model!r} {_lacks(model, 'dropout layers')}: --dropout "
                                 f"{rates[0]:g} applies to {', '.join(DROPOUT_MODELS)}")
    other = [a for a in config.axis_values("activation") if a != "relu"]
    for model in config.models:
        if other and not MODELS[model].activation:
            raise LandscapeError(f"model {model!r} {_lacks(model, 'nonlinearity')}: --activation "
                                 f"{other[0]} applies to the image models (VGG-A, ResNets, MLP, "
                                 "CNN)")
    if dln_data and config.augment:
        raise LandscapeError(f"--augment does not apply to --dataset {DLN_DATASET}")
    if dln_data and (config.axis_values("loss") != ("cross_entropy",)
                     or any(e != 0 for e in config.axis_values("label_smoothing"))):
        raise LandscapeError(f"--loss and --label-smoothing are image classification's: "
                             f"--dataset {DLN_DATASET} trains on the paper's squared error")
    if config.ics_every is None and config.activations_every is None:
        return
    for cell in {c.dropout: c for c in config.cells()}.values():  # dropout layers shift names
        for model in config.models:  # layer names and indices must exist in every model
            with torch.device("meta"):
                chosen_layers(config, cell.model(model))


# A resumed sweep (``--resume``) keeps the settings of the runs in its file. New items of these
# lists add runs to it; the rest must be as the file says (``resumed_config``). Only the axes
# that always name a run grow: a second value of another axis (batch size, ...) would add a
# part to the names of the runs already in the file.
GROWABLE = ("models", "lrs", "seed")
# Where a sweep runs and finds its data, not what it computes: a resume may change them.
PLACE = ("device", "data_root")


def _plain(value: Any) -> Any:
    """A setting as the file's JSON holds it (tuples as lists, 1 == 1.0)."""
    return json.loads(json.dumps(value, default=str))


def resumed_config(stored: dict, given: dict, path, source: dict | None = None,
                   validate: bool = True) -> SweepConfig:
    """The settings of a resumed sweep: those ``stored`` in its file, with the new models and
    learning rates of ``given`` added (and its device, data root). Any other setting of
    ``given`` that differs from the file's raises ``LandscapeError`` naming it: the runs in the
    file were trained with the file's. ``source``: the data file's ``dataset_sha256``, which
    must be the one the sweep began with. ``validate``: check the settings where this process
    trains (False: a Ray driver, whose workers say where the runs train, checks them itself)."""
    known = {f.name for f in fields(SweepConfig)}
    values = {k: v for k, v in stored.items() if k in known}
    if not values:
        raise LandscapeError(f"{path} holds no sweep settings (config attribute): it cannot be "
                             "resumed")
    for name, value in given.items():
        if name not in known:
            continue
        if name in GROWABLE:
            before, added = list(_values(values.get(name))), _values(value)
            grown = before + [v for v in added if _plain(v) not in _plain(before)]
            values[name] = grown[0] if name == "seed" and len(grown) == 1 else grown
        elif name in PLACE or name not in values:
            values[name] = value
        elif _plain(value) != _plain(values[name]):
            raise LandscapeError(
                f"--{name.replace('_', '-')} {_show(value)} differs from the "
                f"{_show(values[name])} that the runs in {path} were trained with; a resumed "
                "sweep keeps its settings (write a new --out to change it)")
    stored_sha = stored.get("dataset_sha256")
    if source and stored_sha and source.get("dataset_sha256") != stored_sha:
        raise LandscapeError(f"--dataset {values.get('dataset')}: the file changed since the sweep "
                             f"in {path} began (sha256 {stored_sha[:12]}... then, "
                             f"{source['dataset_sha256'][:12]}... now)")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    config = SweepConfig(**values)
    if validate:
        config.validate()
    return config


def _values(value: Any) -> tuple:
    """A setting that may be one value or a list (an axis), as a tuple; None as none."""
    if value is None:
        return ()
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return str(value)
