"""Probes attached to a training loop from outside: forward, loss and optimizer hooks.

``LandscapeProbe`` runs ``along_gradient`` every ``every`` optimizer steps; ``ICSProbe`` and
``ActivationProbe`` share its hooks (a forward pre-hook keeps the latest training inputs, the
returned loss keeps the targets, and an optimizer step pre-hook measures every ``every`` steps,
after ``backward()`` and before the update) and measure something else. Each emits typed
records (``on_record``, ``records``) and never opens a file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from .activations import DEFAULT_BIN_EDGES, activation_stats
from .context import LossFn
from .curvature import sharpness
from .ics import internal_covariate_shift
from .landscape import LandscapeRecord, along_gradient


@dataclass
class LandscapeProbe:
    """Runs ``along_gradient`` every ``every`` optimizer steps, attached from outside the loop.

    Three lines in any training loop::

        probe = LandscapeProbe(every=100)                    # etas are multiples of the lr
        loss_fn = probe.attach(model, optimizer, loss_fn)     # hooks + a loss that sees targets
        ...                                                   # train as usual; read probe.records

    A forward pre-hook keeps the latest training inputs, the wrapped loss keeps the targets,
    and an optimizer step pre-hook measures at theta_t on that step's batch, before the update.
    """

    every: int = 100
    etas: Sequence[float] = (0.5, 1.0, 2.0, 4.0)
    relative: bool = True  # etas are multiples of the optimizer's (first group's) learning rate
    on_record: Callable[[LandscapeRecord], None] | None = None
    keep: bool = True  # also append each record to ``records``
    # Take g and L(theta) from the training step (``.grad`` and the loss) instead of computing
    # them again: one gradient evaluation fewer per probe. Only when that step's loss and
    # ``.grad`` are exactly L and its gradient in float32 on the batch: no autocast or TF32,
    # no clipping, accumulation or extra gradient terms between backward() and step().
    reuse_grad: bool = False
    records: list[LandscapeRecord] = field(default_factory=list)
    step: int = 0  # optimizer steps seen so far

    def __post_init__(self):
        if self.every < 1:
            raise ValueError(f"LandscapeProbe: every must be >= 1, got {self.every}")
        self._handles: list = []
        self._inputs = self._targets = self._loss = None
        self._measuring = False

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: LossFn) -> LossFn:
        """Register the hooks; returns ``loss_fn`` wrapped so that it records the targets."""
        self.detach()
        self._model, self._optimizer, self._loss_fn = model, optimizer, loss_fn

        def keep_inputs(module, args):
            if module.training and not self._measuring:
                self._inputs = args[0]

        def measure_before_step(opt, args, kwargs):
            if self.step % self.every == 0:
                self.measure()
            self.step += 1

        self._handles = [model.register_forward_pre_hook(keep_inputs),
                         optimizer.register_step_pre_hook(measure_before_step)]

        def loss_keeping_targets(outputs, targets):
            loss = loss_fn(outputs, targets)
            if not self._measuring:
                self._targets, self._loss = targets, loss.detach()
            return loss

        return loss_keeping_targets

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def measure(self) -> LandscapeRecord:
        """Measure now, at the current parameters, on the last training batch seen."""
        if self._inputs is None or self._targets is None:
            raise RuntimeError("LandscapeProbe: no training batch seen yet (call the wrapped "
                               "loss_fn returned by attach())")
        lr = float(self._optimizer.param_groups[0]["lr"])
        etas = [e * lr for e in self.etas] if self.relative else list(self.etas)
        at_theta = None
        if self.reuse_grad:
            params = [p for p in self._model.parameters() if p.requires_grad]
            at_theta = (self._loss, [p.grad if p.grad is not None else torch.zeros_like(p)
                                     for p in params])
        self._measuring = True
        try:
            record = along_gradient(self._model, self._loss_fn, self._inputs, self._targets, etas,
                                    at_theta=at_theta)
        finally:
            self._measuring = False
        record.step, record.lr = self.step, lr
        if self.keep:
            self.records.append(record)
        if self.on_record is not None:
            self.on_record(record)
        return record


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


@dataclass
class SharpnessProbe(StepInstrument):
    """``curvature.sharpness`` (the k largest Hessian eigenvalues, Hutchinson's trace with
    ``trace_samples`` vectors, gHg) every ``every`` steps. Each probe starts Lanczos from the
    previous probe's top eigenvector: it moves little between probes, so fewer products."""

    k: int = 1
    trace_samples: int = 0
    tol: float = 1e-3

    def measure_batch(self, inputs, targets):
        warm = getattr(self, "_top_vector", None)
        record = sharpness(self._model, self._loss_fn, inputs, targets, k=self.k,
                           trace_samples=self.trace_samples, tol=self.tol, seed=self.step,
                           v0=warm, keep_vectors=True)
        self._top_vector, record.eigenvectors = record.eigenvectors[:, 0], None
        return record
