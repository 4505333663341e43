"""Instruments beyond Santurkar et al.: the Hessian's spectrum, per-layer curvature and ranks.

``build_hessian_instruments(config, model, log, data)`` makes the probes that
``--spectrum-every`` / ``--layer-curvature-every`` / ``--rank-every`` enable
(``probes.SpectrumProbe``, ``LayerCurvatureProbe``, ``RankProbe``), declares their groups in the
run's log and appends each record there. HDF5 groups (n rows, L weight layers, k = 10 top
eigenvalues, V start vectors, m Lanczos iterations, G grid points; float64 unless said)::

    /runs/<name>/spectrum/         a row per probed step x Hessian set x BN mode:
                                   step, repeat, bn (n,) int64 (bn: index into bn_mode),
                                   top (n, k), grad_fraction (n, k), lambda_min, trace,
                                   trace_stderr, outliers (int64), bulk_edge, grad_in_outliers,
                                   grad_norm, loss, hvps (int64) (n,), ritz_values,
                                   ritz_weights (n, V, m), grid, density (n, G);
                                   constants bn_mode (2,) str, samples, iterations, vectors
    /runs/<name>/layer_curvature/  step (n,), layer (L,), layer_index (L,), scale_invariant (L,),
                                   lambda_max, trace, weight_norm_sq, scaled_lambda (n, L)
    /runs/<name>/ranks/            step (n,), layer (L,), layer_index (L,), grad_norm,
                                   rank (int64), effective_rank, size (int64) (n, L)

Hessian sets: ``hessian_repeats`` disjoint sets of ``hessian_samples`` training images each,
drawn once per run from a generator of the run's seed (never torch's global one, so training's
random numbers are as without the probe), normalized, never augmented; each is split into
batches of the run's batch size.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..data import ImageData
from ..data.gaussian import DATASET as DLN_DATASET
from ..errors import LandscapeError
from ..models import MODELS, normalized_layers, weight_layers
from ..probes import (HESSIAN_BN_MODES, LayerCurvatureProbe, RankProbe, SpectrumProbe,
                      SpectrumSettings, StepInstrument)

HESSIAN_BN_CHOICES = HESSIAN_BN_MODES + ("both",)
SPECTRUM_TOP = 10  # top Ritz values stored, and eigenspaces the gradient share is given for
SPECTRUM_GRID = 512  # points of each stored density
SET_SEED = 0x5EC7  # the Hessian sets' generator: the run's seed plus this


def uses_hessian_hooks(config) -> bool:
    return bool(config.spectrum_every or config.layer_curvature_every or config.rank_every)


def bn_modes(config) -> tuple[str, ...]:
    return HESSIAN_BN_MODES if config.hessian_bn == "both" else (config.hessian_bn,)


def check_depth(value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < 1):
        raise LandscapeError(f"--depth must be a positive integer (hidden layers), got {value!r}")


def _whole(option: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise LandscapeError(f"{option} must be an integer >= {low}, got {value!r}")


def validate_hessian_options(config) -> None:
    """``LandscapeError`` naming the first bad value of these instruments' settings."""
    for option, every in (("--spectrum-every", config.spectrum_every),
                          ("--layer-curvature-every", config.layer_curvature_every),
                          ("--rank-every", config.rank_every)):
        if every is not None:
            _whole(option, every, 1)
    _whole("--spectrum-iterations", config.spectrum_iterations, 2)
    _whole("--hessian-samples", config.hessian_samples, 1)
    _whole("--hessian-repeats", config.hessian_repeats, 1)
    _whole("--layer-trace-samples", config.layer_trace_samples, 1)
    if config.hessian_bn not in HESSIAN_BN_CHOICES:
        raise LandscapeError(f"unknown --hessian-bn {config.hessian_bn!r}; choose from "
                             f"{', '.join(HESSIAN_BN_CHOICES)}")
    if config.spectrum_every is None and (
            config.spectrum_iterations != 100 or config.hessian_samples != 4096
            or config.hessian_repeats != 1 or config.hessian_bn != "batch"):
        raise LandscapeError("--spectrum-iterations, --hessian-samples, --hessian-repeats and "
                             "--hessian-bn are given but the spectrum probe is off: add "
                             "--spectrum-every N")
    if config.layer_curvature_every is None and config.layer_trace_samples != 10:
        raise LandscapeError("--layer-trace-samples is given but the per-layer curvature probe "
                             "is off: add --layer-curvature-every N")
    if config.spectrum_every is not None and config.dataset == DLN_DATASET:
        raise LandscapeError("--spectrum-every draws its Hessian sets from an image data set's "
                             f"training images; --dataset {DLN_DATASET} has none")
    deep = [m for m, spec in MODELS.items() if spec.depth]
    for model in config.models if config.depth is not None else ():
        if model not in deep:
            raise LandscapeError(f"model {model!r} has no --depth: it applies to "
                                 f"{', '.join(deep)}")


def hessian_sets(data: ImageData, samples: int, repeats: int,
                 seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``repeats`` disjoint sets of ``samples`` training images (normalized) and labels."""
    available = len(data.y_train)
    if samples * repeats > available:
        raise LandscapeError(f"--hessian-samples {samples} x --hessian-repeats {repeats} "
                             f"exceeds the {available} training images of {data.name}")
    generator = torch.Generator().manual_seed(seed + SET_SEED)
    order = torch.randperm(available, generator=generator).to(data.y_train.device)
    sets = []
    for r in range(repeats):
        chosen = order[r * samples:(r + 1) * samples]
        sets.append((data.normalize(data.x_train[chosen]), data.y_train[chosen]))
    return sets


def _layer_constants(model: nn.Module, layers: list[str]) -> dict:
    index = {n: i + 1 for i, n in enumerate(weight_layers(model))}
    return {"layer": list(layers), "layer_index": np.asarray([index[n] for n in layers], np.int64)}


def _spectrum_probe(config, log, data) -> SpectrumProbe:
    modes, iterations = bn_modes(config), config.spectrum_iterations
    settings = SpectrumSettings(iterations=iterations, top_k=SPECTRUM_TOP,
                                grid_points=SPECTRUM_GRID)
    k, vectors = SPECTRUM_TOP, settings.vectors
    scalar = {f: (np.float64, ()) for f in ("lambda_min", "trace", "trace_stderr", "bulk_edge",
                                           "grad_in_outliers", "grad_norm", "loss")}
    log.declare("spectrum", {
        "step": (np.int64, ()), "repeat": (np.int64, ()), "bn": (np.int64, ()),
        "outliers": (np.int64, ()), "hvps": (np.int64, ()), **scalar,
        "top": (np.float64, (k,)), "grad_fraction": (np.float64, (k,)),
        "ritz_values": (np.float64, (vectors, iterations)),
        "ritz_weights": (np.float64, (vectors, iterations)),
        "grid": (np.float64, (SPECTRUM_GRID,)), "density": (np.float64, (SPECTRUM_GRID,))},
        {"bn_mode": list(HESSIAN_BN_MODES), "samples": np.int64(config.hessian_samples),
         "iterations": np.int64(iterations), "vectors": np.int64(vectors),
         "eigenvalue": np.arange(1, k + 1), "vector": np.arange(vectors),
         "node": np.arange(1, iterations + 1), "grid_point": np.arange(SPECTRUM_GRID)})

    def write(r):
        log.append("spectrum", step=r.step, repeat=r.repeat, bn=HESSIAN_BN_MODES.index(r.bn),
                   outliers=r.outliers, hvps=r.hvps, top=r.top, grad_fraction=r.grad_fraction,
                   ritz_values=r.ritz_values, ritz_weights=r.ritz_weights, grid=r.grid,
                   density=r.density, **{f: getattr(r, f) for f in scalar})

    sets = hessian_sets(data, config.hessian_samples, config.hessian_repeats, config.seed)
    return SpectrumProbe(every=config.spectrum_every, sets=sets, batch_size=config.batch_size,
                         bn_modes=modes, settings=settings, keep=False, on_record=write)


def _layer_curvature_probe(config, model, log) -> LayerCurvatureProbe:
    layers = weight_layers(model)
    n, invariant = len(layers), set(normalized_layers(model))
    fields = ("lambda_max", "trace", "weight_norm_sq", "scaled_lambda")
    log.declare("layer_curvature", {"step": (np.int64, ()),
                                    **{f: (np.float64, (n,)) for f in fields}},
                {**_layer_constants(model, layers),
                 "scale_invariant": np.asarray([x in invariant for x in layers])})
    return LayerCurvatureProbe(
        every=config.layer_curvature_every, layers=layers,
        trace_samples=config.layer_trace_samples, keep=False,
        on_record=lambda r: log.append("layer_curvature", step=r.step,
                                       **{f: getattr(r, f) for f in fields}))


def _rank_probe(config, model, log) -> RankProbe:
    layers = weight_layers(model)
    n = len(layers)
    log.declare("ranks", {"step": (np.int64, ()), "grad_norm": (np.float64, (n,)),
                          "rank": (np.int64, (n,)), "effective_rank": (np.float64, (n,)),
                          "size": (np.int64, (n,))}, _layer_constants(model, layers))
    return RankProbe(every=config.rank_every, layers=layers, keep=False,
                     on_record=lambda r: log.append("ranks", step=r.step, grad_norm=r.grad_norm,
                                                    rank=r.rank, effective_rank=r.effective_rank,
                                                    size=r.size))


def build_hessian_instruments(config, model: nn.Module, log, data) -> list[StepInstrument]:
    """The instruments of this module that ``config`` asks for, each writing into ``log``."""
    instruments: list[StepInstrument] = []
    if config.spectrum_every is not None:
        instruments.append(_spectrum_probe(config, log, data))
    if config.layer_curvature_every is not None:
        instruments.append(_layer_curvature_probe(config, model, log))
    if config.rank_every is not None:
        instruments.append(_rank_probe(config, model, log))
    return instruments

