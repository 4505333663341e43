"""Instruments: probes attached to a training loop from outside, writing to a run's HDF5 group.

An instrument has ``attach(model, optimizer, loss_fn) -> loss_fn`` and ``detach()``, like
``probes.LandscapeProbe``: a forward pre-hook keeps the latest training inputs, the returned
loss keeps the targets, and an optimizer step pre-hook measures every ``every`` steps, after
``backward()`` and before the update. ``train_run`` attaches those that ``build_instruments``
makes from the ``SweepConfig``; each declares its group in the run's ``RunLog``.

HDF5 groups (n probed steps, L layers, b histogram bins; float64 unless said)::

    /runs/<name>/ics/          step (n,) int64, layer (L,) str, layer_index (L,) int64 (1-based),
                               l2 (n, L) = ||G - G'||, cosine (n, L) = cos(G, G'), grad_norm (n, L) = ||G||
    /runs/<name>/activations/  step (n,) int64, layer (L,) str, layer_index (L,) int64,
                               bin_edges (b + 1,), mean (n, L), std (n, L), hist (n, L, b) (fractions)
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .activations import DEFAULT_BIN_EDGES, activation_stats
from .ics import internal_covariate_shift
from .layers import default_ics_layers, resolve_layers, weight_layers
from .probes import LossFn


class StepInstrument:
    """Calls ``self.measure_batch(inputs, targets)`` every ``every`` optimizer steps."""

    def __init__(self, every: int, on_record: Callable | None = None):
        if every < 1:
            raise ValueError(f"{type(self).__name__}: every must be >= 1, got {every}")
        self.every, self.on_record = every, on_record
        self.records: list = []
        self.step = 0
        self._handles: list = []
        self._batch: list = [None, None]  # latest training inputs, targets

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: LossFn) -> LossFn:
        self.detach()
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn

        def keep_inputs(module, args):
            if module.training:
                self._batch[0] = args[0]

        def before_step(opt, args, kwargs):
            if self.step % self.every == 0 and None not in self._batch:
                record = self.measure_batch(*self._batch)
                record.step = self.step
                if self.on_record is None:
                    self.records.append(record)
                else:
                    self.on_record(record)
            self.step += 1

        self._handles = [model.register_forward_pre_hook(keep_inputs),
                         optimizer.register_step_pre_hook(before_step)]

        def loss_keeping_targets(outputs, targets):
            self._batch[1] = targets
            return loss_fn(outputs, targets)

        return loss_keeping_targets

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def measure_batch(self, inputs, targets):  # pragma: no cover - abstract
        raise NotImplementedError


class ICSProbe(StepInstrument):
    """``ics.internal_covariate_shift`` of ``layers`` (weight-layer names) every ``every`` steps."""

    def __init__(self, layers: Sequence[str], every: int = 100, on_record=None):
        super().__init__(every, on_record)
        self.layers = list(layers)

    def measure_batch(self, inputs, targets):
        return internal_covariate_shift(self.model, self.loss_fn, inputs, targets,
                                        self.optimizer, self.layers)


class ActivationProbe(StepInstrument):
    """``activations.activation_stats`` of ``layers`` every ``every`` steps."""

    def __init__(self, layers: Sequence[str], every: int = 100, on_record=None,
                 bin_edges: Sequence[float] = DEFAULT_BIN_EDGES):
        super().__init__(every, on_record)
        self.layers, self.bin_edges = list(layers), np.asarray(bin_edges, dtype=np.float64)

    def measure_batch(self, inputs, targets):
        return activation_stats(self.model, inputs, self.layers, self.bin_edges)


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
        instruments.append(ICSProbe(layers["ics"], config.ics_every, on_record=lambda r: log.append(
            "ics", step=r.step, l2=r.l2, cosine=r.cosine, grad_norm=r.grad_norm)))
    if "activations" in layers:
        n, bins = len(layers["activations"]), len(DEFAULT_BIN_EDGES) - 1
        log.declare("activations", {"step": (np.int64, ()), "mean": (np.float64, (n,)),
                                    "std": (np.float64, (n,)), "hist": (np.float64, (n, bins))},
                    {**_layer_constants(model, layers["activations"]), "bin_edges": DEFAULT_BIN_EDGES})
        instruments.append(ActivationProbe(layers["activations"], config.activations_every,
                                           on_record=lambda r: log.append(
                                               "activations", step=r.step, mean=r.mean, std=r.std,
                                               hist=r.hist)))
    return instruments
