"""The Hessian's spectrum, per-layer curvature and ranks, attached to a training loop.

Siblings of ``hooks.SharpnessProbe`` (``StepInstrument``: every ``every`` optimizer steps,
before the update, at theta_t):

- ``SpectrumProbe``: ``spectrum.spectrum`` on fixed Hessian sets (not the step's minibatch):
  each of ``sets`` (independent sets of images and labels, ``--hessian-repeats``) in batches of
  ``batch_size``, in each of ``bn_modes``; a record per set and mode.
- ``LayerCurvatureProbe``: ``layer_curvature.layer_curvature`` on the step's batches.
- ``RankProbe``: ``ranks.layer_ranks`` on the step's batch (one batch: the samples are rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from .context import Batches, probe_passes
from .hooks import StepInstrument
from .layer_curvature import layer_curvature
from .ranks import layer_ranks
from .spectrum import SpectrumSettings, hessian_batches, spectrum


@dataclass
class SpectrumProbe(StepInstrument):
    """``spectrum`` of the mean batch loss of each fixed Hessian set, in each BN mode."""

    sets: Sequence[tuple[torch.Tensor, torch.Tensor]] = ()  # (images, labels) per repeat
    batch_size: int = 128
    bn_modes: Sequence[str] = ("batch",)
    settings: SpectrumSettings = field(default_factory=SpectrumSettings)

    def measure(self):
        """A record per (set, BN mode), each emitted; the seed of the start vectors is
        (step, set, mode)'s, so every probe draws its own."""
        records = []
        with probe_passes():
            for repeat, (images, labels) in enumerate(self.sets):
                for m, mode in enumerate(self.bn_modes):
                    batches = hessian_batches(self._model, images, labels, self.batch_size, mode)
                    seed = (self.step * len(self.sets) + repeat) * len(self.bn_modes) + m
                    record = spectrum(self._model, self._loss_fn, batches, None, self.settings,
                                      seed=seed)
                    record.repeat = repeat
                    records.append(self._emit(record))
        return records


@dataclass
class LayerCurvatureProbe(StepInstrument):
    """``layer_curvature`` of ``layers`` (None: every weight layer) on the step's batches."""

    layers: Sequence[str] | None = None
    trace_samples: int = 10

    def measure_batch(self, loss_fn, inputs, targets):
        return layer_curvature(self._model, loss_fn, inputs, targets, self.layers,
                               self.trace_samples, seed=self.step)


@dataclass
class RankProbe(StepInstrument):
    """``layer_ranks`` (gradient norms, representation ranks) on the step's batch."""

    layers: Sequence[str] | None = None

    def measure_batch(self, loss_fn, inputs, targets):
        if isinstance(inputs, Batches):  # accumulated micro-batches: the first one's rows
            first = inputs.parts[0]
            inputs, targets = first.inputs, first.targets
        return layer_ranks(self._model, loss_fn, inputs, targets, self.layers)
