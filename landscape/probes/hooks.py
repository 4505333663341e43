"""Probes attached to a training loop from outside: forward, loss and optimizer hooks.

``LandscapeProbe`` runs ``along_gradient`` every ``every`` optimizer steps; ``ICSProbe`` and
``ActivationProbe`` share its hooks and measure something else. The hooks find what the step
descends (see ``LandscapeProbe``): a forward hook records each call of the model (positional
and keyword arguments, each submodule's mode); the wrapped loss pairs its targets (and keyword
arguments) with the call that produced its outputs; a gradient hook on the returned loss marks
it as part of the step when ``backward()`` reaches it, with the weight backward gives it; an
optimizer step pre-hook measures every ``every`` steps, after ``backward()`` and before the
update. Each probe emits typed records (``on_record``, ``records``) and never opens a file.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import math
import numbers
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ..models import is_stochastic
from .activations import DEFAULT_BIN_EDGES, activation_stats
from .context import Batch, Batches, LossFn, ModelInputs, probing, rng_state, same_rng_state
from .curvature import sharpness
from .ics import internal_covariate_shift
from .landscape import LandscapeRecord, along_gradient

# Optimizers whose update is not -lr * grad: a probe stepping eta = c * lr along the raw
# gradient is then not stepping where the optimizer does.
ADAPTIVE_OPTIMIZERS = tuple(getattr(torch.optim, name) for name in (
    "Adam", "AdamW", "Adamax", "NAdam", "RAdam", "RMSprop", "Adagrad", "Adadelta", "SparseAdam",
    "Adafactor") if hasattr(torch.optim, name))

_RECENT_CALLS = 8  # model calls kept to pair a loss with the call whose output it was given

_measuring = [0]  # > 0 while any hook probe measures: its own passes are not training's


@contextlib.contextmanager
def _probe_passes() -> Iterator[None]:
    """While a probe measures, every probe's hooks ignore the model calls and losses."""
    _measuring[0] += 1
    try:
        yield
    finally:
        _measuring[0] -= 1


def measuring_now() -> bool:
    """Whether a probe is measuring at this moment: its passes are not training's (a hook
    probe's, or any ``no_trace`` measurement, e.g. a float64 probe's copies)."""
    return _measuring[0] > 0 or probing()


def _check_every(owner: str, every: Any) -> None:
    if isinstance(every, bool) or not isinstance(every, numbers.Integral) or every < 1:
        raise ValueError(f"{owner}: every must be a positive whole number of optimizer steps, "
                         f"got {every!r}")


def _check_etas(owner: str, etas: Any, relative: bool) -> None:
    values = None if isinstance(etas, (str, bytes, numbers.Number)) else etas
    try:
        values = list(values) if values is not None else None
    except TypeError:
        values = None
    if not values or not all(isinstance(e, numbers.Real) and not isinstance(e, bool)
                             and math.isfinite(e) and e > 0 for e in values):
        unit = " (multiples of the learning rate)" if relative else ""
        raise ValueError(f"{owner}: etas must be a non-empty sequence of positive finite "
                         f"numbers{unit}, e.g. (0.5, 1, 2, 4); got {etas!r}")


@dataclass
class LandscapeProbe:
    """Runs ``along_gradient`` every ``every`` optimizer steps, attached from outside the loop.

    Three lines in any training loop::

        probe = LandscapeProbe(every=100)                    # etas are multiples of the lr
        loss_fn = probe.attach(model, optimizer, loss_fn)     # hooks + a loss that sees targets
        ...                                                   # train as usual; read probe.records

    What is measured, before the update of every ``every``-th ``optimizer.step()``, at theta_t:
    the objective whose gradient that step holds in ``.grad``, F = sum_i w_i L_i, over every
    loss ``loss_fn(outputs, targets, **kw)`` (the wrapped one) that ``backward()`` went through
    since the previous step; w_i is the gradient backward sent into that loss (1 for
    ``loss.backward()``, 1/n for ``(loss / n).backward()``). So:

    - any model call: ``model(x)``, ``model(x, mask)``, ``model(input_ids=..., mask=...)``;
      the probe replays the call with its positional and keyword arguments;
    - losses with keyword arguments (``label_smoothing=0.1``): the probe measures with them;
    - models trained in ``.eval()`` (or with some submodules in eval): the probe evaluates each
      submodule in the mode it had at the training call (in a usual ``.train()`` loop that is
      train mode, BatchNorm on the batch's statistics, as in the paper);
    - validation between ``backward()`` and ``step()``: a loss that is not backpropagated (under
      ``torch.no_grad``, or just never ``backward()``-ed) is not part of the step, whatever the
      model's mode;
    - gradient accumulation: all micro-batches, each with its weight (equal-size micro-batches
      with ``(loss / n).backward()`` and a mean loss: the loss of their concatenation, BatchNorm
      statistics per micro-batch as in training).

    A loss is paired with the model call whose output tensor it receives, else with the latest
    call before it. Refused: ``measure()`` before any backpropagated wrapped loss (RuntimeError).
    Gradients changed after ``backward()`` (clipping that bites, unscaling) are not the loss's:
    the probe warns once (it measures along the loss's own gradient, not along the step), and
    with ``reuse_grad`` computes g itself. With ``torch.amp.GradScaler`` the weights include the
    scale (F is measured scaled): not supported. With an adaptive optimizer (Adam, RMSprop,
    ...) and ``relative=True`` it warns: eta is c * lr, but the probe steps along the raw
    gradient, not the optimizer's update.
    """

    every: int = 100
    etas: Sequence[float] = (0.5, 1.0, 2.0, 4.0)
    relative: bool = True  # etas are multiples of the optimizer's (first group's) learning rate
    on_record: Callable[[LandscapeRecord], None] | None = None
    keep: bool = True  # also append each record to ``records``
    # Take g and L(theta) from the training step (``.grad`` and the loss) instead of computing
    # them again: one gradient evaluation fewer per probe. Only when that step's loss and
    # ``.grad`` are exactly L and its gradient in float32 on the batch: no autocast or TF32,
    # no extra gradient terms between backward() and step() (clipping is detected: warned, and
    # g computed afresh).
    # A model that draws random numbers (``models.is_stochastic``, or any draw from torch's
    # generators between the last step and this one: ``F.dropout`` in ``forward``, random data
    # transforms) gets g computed by the probe anyway: the training step's dropout masks and
    # noise are not the probe's.
    reuse_grad: bool = False
    dtype: torch.dtype | None = None  # measure in this precision (None: the parameters')
    records: list[LandscapeRecord] = field(default_factory=list)
    step: int = 0  # optimizer steps seen so far

    def __post_init__(self):
        owner = type(self).__name__
        _check_every(owner, self.every)
        _check_etas(owner, self.etas, self.relative)
        self._handles: list = []
        self._grad_handles: list = []  # only while a probed step's backward() may run
        self._calls: collections.deque = collections.deque(maxlen=_RECENT_CALLS)
        self._step_batches: list[tuple[Batch, torch.Tensor]] = []  # backpropagated this step
        self._last_batches: list[tuple[Batch, torch.Tensor]] = []  # ... in the last probed step
        self._grad_norms: dict[torch.Tensor, torch.Tensor] = {}
        self._warned: set[str] = set()
        self._rng_since_step = None  # generators' state after the last step, when due

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: LossFn) -> LossFn:
        """Register the hooks; returns ``loss_fn`` wrapped so that it records the targets."""
        self.detach()
        self._model, self._optimizer, self._loss_fn = model, optimizer, loss_fn
        self._check_optimizer(optimizer)
        self._handles = [model.register_forward_hook(self._record_call, with_kwargs=True),
                         optimizer.register_step_pre_hook(self._before_step)]
        self._watch_gradients_if_due()

        def loss_recording_batch(outputs, targets, **loss_kwargs):
            loss = loss_fn(outputs, targets, **loss_kwargs)
            if self._due() and isinstance(loss, torch.Tensor) and loss.requires_grad:
                call = self._call_of(outputs)
                if call is not None:
                    batch = Batch(call, targets, 1.0, loss_kwargs)
                    loss.register_hook(functools.partial(self._record_backward, batch,
                                                         loss.detach()))
            return loss

        return loss_recording_batch

    def detach(self) -> None:
        for h in self._handles + self._grad_handles:
            h.remove()
        self._handles, self._grad_handles = [], []

    def state_dict(self) -> dict:
        """What the coming steps depend on, taken between two optimizer steps: the step count
        (the schedule). The recorded batches are not kept: a probed step records its own."""
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state`` (after torch's generators were restored: a probed step
        compares them with the state they had after the previous step, ``reuse_grad``)."""
        self.step = int(state["step"])
        if getattr(self, "_model", None) is not None:
            self._calls.clear()
            self._step_batches, self._last_batches, self._grad_norms = [], [], {}
            self._watch_gradients_if_due()

    # -- hooks -------------------------------------------------------------------------------

    def _watches_gradients(self) -> bool:
        """Norms of ``.grad`` after backward(), to see whether step() gets other gradients."""
        return True

    def _check_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        if self.relative and isinstance(optimizer, ADAPTIVE_OPTIMIZERS):
            name = type(optimizer).__name__
            warnings.warn(f"LandscapeProbe: etas are multiples of {name}'s lr, but the probe steps "
                          f"along the raw gradient (theta - eta g), not along {name}'s update; "
                          "pass relative=False to give absolute etas", stacklevel=3)

    def _due(self) -> bool:
        """The coming optimizer step is probed, and this is not a probe's own pass: only then
        do the hooks record anything (other steps cost a modulo per hook)."""
        return self.step % self.every == 0 and not measuring_now()

    def _watch_gradients_if_due(self) -> None:
        for h in self._grad_handles:
            h.remove()
        self._grad_handles = []
        due = self.step % self.every == 0
        self._rng_since_step = (rng_state(next(self._model.parameters()).device)
                                if due and self.reuse_grad else None)
        if self._watches_gradients() and due:
            self._grad_handles = [p.register_post_accumulate_grad_hook(self._record_grad_norm)
                                  for p in self._model.parameters() if p.requires_grad]

    def _record_call(self, module, args, kwargs, output) -> None:
        if not self._due():
            return
        modes = tuple(m.training for m in module.modules())
        call = ModelInputs(tuple(args), dict(kwargs), None if all(modes) else modes)
        while self._calls and self._calls[0][0]() is None:  # outputs gone: no loss can come
            self._calls.popleft()
        ref = weakref.ref(output) if isinstance(output, torch.Tensor) else (lambda: None)
        self._calls.append((ref, call))

    def _call_of(self, outputs) -> ModelInputs | None:
        for ref, call in reversed(self._calls):
            if ref() is outputs:
                return call
        return self._calls[-1][1] if self._calls else None

    def _record_backward(self, batch: Batch, loss: torch.Tensor, weight: torch.Tensor) -> None:
        if not measuring_now():
            self._step_batches.append((Batch(batch.inputs, batch.targets, weight.detach(),
                                             batch.loss_kwargs), loss))

    def _record_grad_norm(self, p: torch.Tensor) -> None:
        if not measuring_now():
            self._grad_norms[p] = torch.linalg.vector_norm(p.grad)

    def _before_step(self, optimizer, args, kwargs) -> None:
        if self.step % self.every == 0:
            self.measure()
        self.step += 1
        if self._step_batches:
            self._last_batches, self._step_batches = self._step_batches, []
        self._grad_norms = {}
        self._calls.clear()  # a loss pairs with a call of its own step
        self._watch_gradients_if_due()

    # -- measuring ---------------------------------------------------------------------------

    def _objective(self) -> tuple[LossFn, Any, Any]:
        """(loss_fn, inputs, targets) of the step's objective, for ``along_gradient`` & co."""
        batches = self._step_batches or self._last_batches
        if not batches:
            raise RuntimeError(f"{type(self).__name__}: no training batch seen yet: it measures "
                               "on the losses from the loss_fn returned by attach() that went "
                               "through backward() before optimizer.step()")
        parts = [Batch(b.inputs, b.targets, float(b.weight) if b.weight.numel() == 1 else b.weight,
                       b.loss_kwargs) for b, _ in batches]
        if len(parts) == 1 and isinstance(parts[0].weight, float) and parts[0].weight == 1.0:
            only = parts[0]
            loss_fn = (functools.partial(self._loss_fn, **only.loss_kwargs) if only.loss_kwargs
                       else self._loss_fn)
            return loss_fn, only.inputs, only.targets
        return self._loss_fn, Batches(tuple(parts)), None

    def _grads_changed(self) -> bool | None:
        """Whether ``.grad`` changed between backward() and step() (clipping, unscaling), by
        the per-parameter norms taken after backward(); None when none were taken."""
        with_grad = [p for p in self._model.parameters() if p.requires_grad and p.grad is not None]
        if not with_grad or not all(p in self._grad_norms for p in with_grad):
            return None  # no norms taken at backward (measure() called off schedule)
        return not torch.equal(torch.stack([torch.linalg.vector_norm(p.grad) for p in with_grad]),
                               torch.stack([self._grad_norms[p] for p in with_grad]))

    def _training_gradient(self) -> tuple[torch.Tensor, list[torch.Tensor]] | None:
        """(F(theta), g) from the training step, or None when ``.grad`` may not be F's gradient."""
        changed = self._grads_changed()
        if changed:
            self._warn_once("reuse_grad", "LandscapeProbe(reuse_grad=True): the gradients changed "
                            "between backward() and optimizer.step() (clipping, unscaling?), so "
                            "they are not the loss's; the probe computes g itself")
        if changed is not False:
            return None
        drew = self._rng_since_step is None or not same_rng_state(
            self._rng_since_step, rng_state(next(self._model.parameters()).device))
        if drew or is_stochastic(self._model):
            return None  # the training step's random draws are not the probe's
        batches = self._step_batches or self._last_batches
        params = [p for p in self._model.parameters() if p.requires_grad]
        loss = sum((b.weight * value).sum() for b, value in batches)
        return loss, [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=4)

    def _emit(self, record):
        record.step = self.step
        if self.keep:
            self.records.append(record)
        if self.on_record is not None:
            self.on_record(record)
        return record

    def measure(self) -> LandscapeRecord:
        """Measure now, at the current parameters, on this step's backpropagated batches (the
        hooks record them on the steps the schedule probes; else on the last probed step's)."""
        loss_fn, inputs, targets = self._objective()
        lr = float(self._optimizer.param_groups[0]["lr"])
        etas = [e * lr for e in self.etas] if self.relative else list(self.etas)
        if self.reuse_grad:
            at_theta = self._training_gradient()
        else:
            at_theta = None
            if self._grads_changed():
                self._warn_once("changed", "LandscapeProbe: the gradients changed between "
                                "backward() and optimizer.step() (clipping, unscaling?): the probe "
                                "measures along the loss's own gradient, not along the step")
        with _probe_passes():
            record = along_gradient(self._model, loss_fn, inputs, targets, etas,
                                    at_theta=at_theta, dtype=self.dtype)
        record.lr = lr
        return self._emit(record)


@dataclass
class StepInstrument(LandscapeProbe):
    """``LandscapeProbe``'s hooks (the step's batches, every-``every``-steps schedule,
    ``attach``/``detach``) with another measurement: ``measure_batch(loss_fn, inputs, targets)``
    (arguments as for ``along_gradient``)."""

    def _check_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """No step sizes here: any optimizer is fine."""

    def _watches_gradients(self) -> bool:
        return False  # ICS takes the update from whatever .grad holds at step()

    def measure(self):
        loss_fn, inputs, targets = self._objective()
        with _probe_passes():  # the probe's own forward passes are not training batches
            record = self.measure_batch(loss_fn, inputs, targets)
        return self._emit(record)

    def measure_batch(self, loss_fn, inputs, targets):  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass
class ICSProbe(StepInstrument):
    """``ics.internal_covariate_shift`` of ``layers`` (weight-layer names) every ``every`` steps."""

    layers: Sequence[str] = ()

    def measure_batch(self, loss_fn, inputs, targets):
        return internal_covariate_shift(self._model, loss_fn, inputs, targets,
                                        self._optimizer, list(self.layers))


@dataclass
class ActivationProbe(StepInstrument):
    """``activations.activation_stats`` of ``layers`` every ``every`` steps."""

    layers: Sequence[str] = ()
    bin_edges: Sequence[float] = tuple(DEFAULT_BIN_EDGES)

    def measure_batch(self, loss_fn, inputs, targets):
        return activation_stats(self._model, inputs, list(self.layers), self.bin_edges)


@dataclass
class SharpnessProbe(StepInstrument):
    """``curvature.sharpness`` (the k largest Hessian eigenvalues, Hutchinson's trace with
    ``trace_samples`` vectors, gHg) every ``every`` steps. Each probe starts Lanczos from the
    previous probe's top eigenvector: it moves little between probes, so fewer products."""

    k: int = 1
    trace_samples: int = 0
    tol: float = 1e-3

    def state_dict(self) -> dict:
        """The step count and the top eigenvector each probe's Lanczos starts from."""
        top = getattr(self, "_top_vector", None)
        return {**super().state_dict(),
                "top_vector": None if top is None else torch.from_numpy(np.array(top))}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        top = state["top_vector"]
        self._top_vector = None if top is None else top.cpu().numpy()

    def measure_batch(self, loss_fn, inputs, targets):
        warm = getattr(self, "_top_vector", None)
        record = sharpness(self._model, loss_fn, inputs, targets, k=self.k,
                           trace_samples=self.trace_samples, tol=self.tol, seed=self.step,
                           v0=warm, keep_vectors=True)
        self._top_vector, record.eigenvectors = record.eigenvectors[:, 0], None
        return record
