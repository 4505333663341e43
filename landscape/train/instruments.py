"""Instruments of a sweep: the probes ``SweepConfig`` asks for, bound to a run's log.

``build_instruments(config, model, log)`` makes the ICS and activation probes (hooks of
``landscape.probes``) that ``--ics-every`` / ``--activations-every`` enable, declares their
groups in the run's log and appends each record there. HDF5 groups (n probed steps, L
layers, b histogram bins; float64 unless said)::

    /runs/<name>/ics/          step (n,) int64, layer (L,) str, layer_index (L,) int64 (1-based),
                               l2 (n, L) = ||G - G'||, cosine (n, L) = cos(G, G'), grad_norm (n, L) = ||G||
    /runs/<name>/activations/  step (n,) int64, layer (L,) str, layer_index (L,) int64,
                               bin_edges (b + 1,), bin (b,) centers, mean (n, L), std (n, L),
                               hist (n, L, b) (fractions)
    /runs/<name>/curvature/    step (n,) int64, lambda_max (n, k) (descending), residual (n, k),
                               trace (n,) (NaN: --trace-samples 0), gHg (n,), iterations (n,) int64
    /runs/<name>/weights/      every step: step (n,) int64, layer (L,) str, layer_index (L,) int64,
                               scale_invariant (L,) bool, norm, effective_lr, effective_grad_norm,
                               angular_update (n, L)

``WeightRecorder`` is not a step instrument: it records every step, on the device, and its
rows reach the log when the training loop syncs with the host (``drain``).

Units, descriptions and dimension names of every field: ``landscape.store.schema.FIELDS``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from torch import nn

from ..models import default_ics_layers, resolve_layers, weight_layers
from ..probes import (DEFAULT_BIN_EDGES, WEIGHT_STAT_FIELDS, ActivationProbe, ICSProbe,
                      SharpnessProbe, StepInstrument, WeightStats)


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
                    {**_layer_constants(model, layers["activations"]),
                     "bin_edges": DEFAULT_BIN_EDGES,
                     "bin": (DEFAULT_BIN_EDGES[:-1] + DEFAULT_BIN_EDGES[1:]) / 2})
        instruments.append(ActivationProbe(every=config.activations_every,
                                           layers=layers["activations"], keep=False,
                                           on_record=lambda r: log.append(
                                               "activations", step=r.step, mean=r.mean, std=r.std,
                                               hist=r.hist)))
    if config.sharpness_every is not None:
        k = config.sharpness_k
        log.declare("curvature", {"step": (np.int64, ()), "lambda_max": (np.float64, (k,)),
                                  "residual": (np.float64, (k,)), "trace": (np.float64, ()),
                                  "gHg": (np.float64, ()), "iterations": (np.int64, ())},
                    {"eigenvalue": np.arange(1, k + 1, dtype=np.int64)})
        instruments.append(SharpnessProbe(every=config.sharpness_every, k=k,
                                          trace_samples=config.trace_samples, keep=False,
                                          on_record=lambda r: log.append(
                                              "curvature", step=r.step, lambda_max=r.lambda_max,
                                              residual=r.residual, trace=r.trace, gHg=r.gHg,
                                              iterations=r.iterations)))
    return instruments


class WeightRecorder:
    """``probes.WeightStats`` of a run, its rows appended to the run's ``weights`` group."""

    def __init__(self, model: nn.Module, optimizer, log):
        self.stats = WeightStats(model).attach(optimizer)
        self.log, self.step = log, 0
        n = len(self.stats.layers)
        log.declare("weights", {"step": (np.int64, ()),
                                **{f: (np.float64, (n,)) for f in WEIGHT_STAT_FIELDS}},
                    {**_layer_constants(model, self.stats.layers),
                     "scale_invariant": self.stats.scale_invariant})

    def drain(self) -> None:
        """Move the recorded steps (device tensors) into the log: call at a host sync."""
        rows = self.stats.pop()
        for i in range(len(rows["norm"])):
            self.log.append("weights", step=self.step, **{f: rows[f][i] for f in WEIGHT_STAT_FIELDS})
            self.step += 1

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])

    def detach(self) -> None:
        self.stats.detach()
