"""Instruments: probes attached to a training loop from outside, writing to a run's HDF5 group.

An instrument has ``attach(model, optimizer, loss_fn) -> loss_fn`` and ``detach()``: it is a
``probes.LandscapeProbe`` (same hooks: a forward pre-hook keeps the latest training inputs,
the returned loss keeps the targets, and an optimizer step pre-hook measures every ``every``
steps, after ``backward()`` and before the update) that measures something else. ``train_run`` attaches those that ``build_instruments``
makes from the ``SweepConfig``; each declares its group in the run's ``RunLog``.

HDF5 groups (n probed steps, L layers, b histogram bins; float64 unless said)::

    /runs/<name>/ics/          step (n,) int64, layer (L,) str, layer_index (L,) int64 (1-based),
                               l2 (n, L) = ||G - G'||, cosine (n, L) = cos(G, G'), grad_norm (n, L) = ||G||
    /runs/<name>/activations/  step (n,) int64, layer (L,) str, layer_index (L,) int64,
                               bin_edges (b + 1,), mean (n, L), std (n, L), hist (n, L, b) (fractions)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from torch import nn

from .activations import DEFAULT_BIN_EDGES, activation_stats
from .ics import internal_covariate_shift
from .layers import default_ics_layers, resolve_layers, weight_layers
from .probes import LandscapeProbe


@dataclass
class StepInstrument(LandscapeProbe):
    """``LandscapeProbe``'s hooks (latest inputs and targets, every-``every``-steps schedule,
    ``attach``/``detach``) with another measurement: ``measure_batch(inputs, targets)``."""

    def measure(self):
        if self._inputs is None or self._targets is None:
            raise RuntimeError(f"{type(self).__name__}: no training batch seen yet")
        self._measuring = True  # the probe's own forward passes are not training batches
        try:
            record = self.measure_batch(self._inputs, self._targets)
        finally:
            self._measuring = False
        record.step = self.step
        if self.keep:
            self.records.append(record)
        if self.on_record is not None:
            self.on_record(record)
        return record

    def measure_batch(self, inputs, targets):  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass
class ICSProbe(StepInstrument):
    """``ics.internal_covariate_shift`` of ``layers`` (weight-layer names) every ``every`` steps."""

    layers: Sequence[str] = ()

    def measure_batch(self, inputs, targets):
        return internal_covariate_shift(self._model, self._loss_fn, inputs, targets,
                                        self._optimizer, list(self.layers))


@dataclass
class ActivationProbe(StepInstrument):
    """``activations.activation_stats`` of ``layers`` every ``every`` steps."""

    layers: Sequence[str] = ()
    bin_edges: Sequence[float] = tuple(DEFAULT_BIN_EDGES)

    def measure_batch(self, inputs, targets):
        return activation_stats(self._model, inputs, list(self.layers), self.bin_edges)


def _layer_constants(model: nn.Module, layers: Sequence[str]) -> dict:
    index = {n: i + 1 for i, n in enumerate(weight_layers(model))}
    return {"layer": list(layers), "layer_index": np.asarray([index[n] for n in layers], np.int64)}


def chosen_layers(config, model: nn.Module) -> dict[str, list[str]]:
    """Layer names of each enabled instrument (``LandscapeError`` on a bad name or index)."""
    chosen = {}
    if config.ics_every is not None:
        default = default_ics_layers(len(weight_layers(model)))
        chosen["ics"] = resolve_layers(model, config.ics_layers, default, "--ics-layers")
    if config.activations_every is not None:
        chosen["activations"] = resolve_layers(model, config.activation_layers, None,
                                               "--activation-layers")
    return chosen


def build_instruments(config, model: nn.Module, log) -> list[StepInstrument]:
    """The instruments ``config`` asks for, each writing its records into ``log``."""
    instruments: list[StepInstrument] = []
    layers = chosen_layers(config, model)
    if "ics" in layers:
        n = len(layers["ics"])
        log.declare("ics", {"step": (np.int64, ()), "l2": (np.float64, (n,)),
                            "cosine": (np.float64, (n,)), "grad_norm": (np.float64, (n,))},
                    _layer_constants(model, layers["ics"]))
        instruments.append(ICSProbe(every=config.ics_every, layers=layers["ics"], keep=False,
                                    on_record=lambda r: log.append(
                                        "ics", step=r.step, l2=r.l2, cosine=r.cosine,
                                        grad_norm=r.grad_norm)))
    if "activations" in layers:
        n, bins = len(layers["activations"]), len(DEFAULT_BIN_EDGES) - 1
        log.declare("activations", {"step": (np.int64, ()), "mean": (np.float64, (n,)),
                                    "std": (np.float64, (n,)), "hist": (np.float64, (n, bins))},
                    {**_layer_constants(model, layers["activations"]), "bin_edges": DEFAULT_BIN_EDGES})
        instruments.append(ActivationProbe(every=config.activations_every,
                                           layers=layers["activations"], keep=False,
                                           on_record=lambda r: log.append(
                                               "activations", step=r.step, mean=r.mean, std=r.std,
                                               hist=r.hist)))
    return instruments
