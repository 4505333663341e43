"""Probes attached to a training loop from outside: forward, loss and optimizer hooks.

``StepInstrument`` is what every hook probe shares: the schedule (every ``every`` optimizer
steps), the capture of the step's batches, ``attach``/``detach`` and the records. Its
subclasses are siblings that measure different things on that capture: ``LandscapeProbe``
(``along_gradient``), ``ICSProbe``, ``ActivationProbe``, ``SharpnessProbe``, and ``StepLoss``
(every step: the value of the step's objective and its accuracy, from the losses the
training step computed; no pass of its own).

The hooks find what the step descends (see ``LandscapeProbe``): a forward hook records each
call of the model (positional and keyword arguments, each submodule's mode); the wrapped loss
pairs its targets (and keyword arguments) with the call that produced its outputs; a gradient
hook on the returned loss marks it as part of the step when ``backward()`` reaches it, with the
weight backward gives it; an optimizer step pre-hook measures on a probed step, after
``backward()`` and before the update -- for ``optimizer.step(closure)``, right after the
closure's first call (``steps.after_gradient``); a step post-hook moves the schedule on.
A probe measures only the batches of the step it measures: each probed step has its own
capture, and it is dropped once measured, so no batch of an earlier step is ever measured.
Each probe emits typed records (``on_record``, ``records``) and never opens a file.
"""

from __future__ import annotations

import collections
import functools
import inspect
import math
import numbers
import warnings
import weakref
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..models import is_stochastic
from .activations import DEFAULT_BIN_EDGES, activation_stats
from .context import (Batch, Batches, LossFn, ModelInputs, probe_passes, probing, rng_state,
                      same_rng_state)
from .curvature import sharpness
from .ics import internal_covariate_shift
from .landscape import LandscapeRecord, along_gradient
from .steps import after_gradient

# Optimizers whose update is not -lr * grad: a probe stepping eta = c * lr along the raw
# gradient is then not stepping where the optimizer does (LBFGS: a quasi-Newton direction).
NOT_ALONG_GRADIENT = tuple(getattr(torch.optim, name) for name in (
    "Adam", "AdamW", "Adamax", "NAdam", "RAdam", "RMSprop", "Adagrad", "Adadelta", "SparseAdam",
    "Adafactor", "LBFGS") if hasattr(torch.optim, name))

_RECENT_CALLS = 8  # model calls kept to pair a loss with the call whose output it was given


def measuring_now() -> bool:
    """Whether a probe is measuring at this moment, in this thread: its passes are not
    training's (a hook probe's, or any ``no_trace`` measurement, e.g. a float64 probe's copies).
    Another thread's measurement does not count (``context.probing``)."""
    return probing()


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


class _StepCapture:
    """What the hooks gather for one probed optimizer step: the model's recent calls (to pair a
    loss with the call whose output it got) and the backpropagated losses, each as (its
    ``Batch`` with the weight backward gave it, its value)."""

    def __init__(self):
        self.calls: collections.deque = collections.deque(maxlen=_RECENT_CALLS)
        self.batches: list[tuple[Batch, torch.Tensor]] = []
        self.settled = 0  # how many of them backward() has carried into .grad

    def add_call(self, module: nn.Module, args, kwargs, output) -> None:
        modes = tuple(m.training for m in module.modules())
        call = ModelInputs(tuple(args), dict(kwargs), None if all(modes) else modes)
        while self.calls and self.calls[0][0]() is None:  # outputs gone: no loss can come
            self.calls.popleft()
        ref = weakref.ref(output) if isinstance(output, torch.Tensor) else (lambda: None)
        self.calls.append((ref, call))

    def call_of(self, outputs) -> ModelInputs | None:
        for ref, call in reversed(self.calls):
            if ref() is outputs:
                return call
        return self.calls[-1][1] if self.calls else None


class RecordingLoss(nn.Module):
    """What ``attach`` returns for a loss that is an ``nn.Module``: the same loss, which also
    records the batch for the probe, and can replace the loss as a module's attribute
    (``self.criterion = probe.attach(net, optimizer, self.criterion)``).

    It owns nothing: its parameters, buffers and submodules are the given loss's, in the same
    dictionaries under the same names, so the parent's ``parameters()`` (an optimizer),
    ``state_dict()`` and ``.to()`` see the same tensors, once, with the same keys as before.
    """

    def __init__(self, loss: nn.Module, recorded: Callable[..., Any]):
        super().__init__()
        self._parameters = loss._parameters
        self._buffers = loss._buffers
        self._non_persistent_buffers_set = loss._non_persistent_buffers_set
        self._modules = loss._modules
        object.__setattr__(self, "loss", loss)  # not a child: its state is shared above
        object.__setattr__(self, "_recorded", recorded)
        self.training = loss.training

    def forward(self, outputs, targets, **loss_kwargs):
        return self._recorded(outputs, targets, **loss_kwargs)

    def train(self, mode: bool = True) -> "RecordingLoss":
        self.loss.train(mode)
        return super().train(mode)

    def extra_repr(self) -> str:
        return f"records the batch of {type(self.loss).__name__}"


@dataclass
class StepInstrument:
    """What every hook probe shares: the schedule, the step's batches, ``attach``/``detach``.

    Every ``every`` optimizer steps (steps 0, every, 2 every, ...) the hooks capture the
    step's objective (see ``LandscapeProbe``) and ``measure_batch(loss_fn, inputs, targets)``
    -- each subclass's measurement, arguments as for ``along_gradient`` -- runs on it at
    theta_t, before the update: in a plain step after ``backward()``, in
    ``optimizer.step(closure)`` right after the closure's first call (its own batch; an
    optimizer that calls the closure again, as LBFGS does, is measured at that first call
    only). Each record gets the step's index and goes to ``on_record`` and (``keep``)
    ``records``. A step's capture is dropped once it is measured, and so are the batches
    whose ``.grad`` a ``zero_grad()`` (``set_to_none=True``, the default) wiped before the
    step (an iteration whose ``step()`` was skipped): no batch of an earlier step is ever
    measured (a step with no backpropagated wrapped loss raises RuntimeError).
    """

    every: int = 100
    _: KW_ONLY
    on_record: Callable[[Any], None] | None = None
    keep: bool = True  # also append each record to ``records``
    records: list = field(default_factory=list)
    step: int = 0  # optimizer steps seen so far

    def __post_init__(self):
        _check_every(type(self).__name__, self.every)
        self._handles: list = []
        self._grad_handles: list = []  # only while a probed step's backward() may run
        self._capture: _StepCapture | None = None  # the coming step's, when it is probed
        self._model = self._optimizer = self._loss_fn = None
        self._warned: set[str] = set()

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: LossFn) -> LossFn:
        """Register the hooks; returns ``loss_fn`` wrapped so that it records the targets (an
        ``nn.Module`` when ``loss_fn`` is one: ``RecordingLoss``)."""
        self.detach()
        self._model, self._optimizer, self._loss_fn = model, optimizer, loss_fn
        self._handles = [model.register_forward_hook(self._record_call, with_kwargs=True),
                         optimizer.register_step_pre_hook(self._before_step),
                         optimizer.register_step_post_hook(self._after_step)]
        self._begin_step()
        recorded = functools.partial(self._recorded_loss, loss_fn)
        if isinstance(loss_fn, nn.Module):
            return RecordingLoss(loss_fn, recorded)

        def loss_recording_batch(outputs, targets, **loss_kwargs):
            return recorded(outputs, targets, **loss_kwargs)

        return loss_recording_batch

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._end_capture()

    def state_dict(self) -> dict:
        """What the coming steps depend on, taken between two optimizer steps: the step count
        (the schedule). The captured batches are not kept: a probed step captures its own."""
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state`` (after torch's generators were restored: a probed step
        compares them with the state they had after the previous step, ``reuse_grad``)."""
        self.step = int(state["step"])
        if self._model is not None:
            self._end_capture()
            self._begin_step()

    # -- the schedule ------------------------------------------------------------------------

    def _begin_step(self) -> None:
        """The coming step is known (attached, restored, or the last step done): capture its
        batches when the schedule probes it (other steps cost one check per hook)."""
        self._capture = _StepCapture() if self.step % self.every == 0 else None
        if self._capture is not None:
            self._grad_handles = [p.register_post_accumulate_grad_hook(self._grad_accumulated)
                                  for p in self._model.parameters() if p.requires_grad]

    def _end_capture(self) -> None:
        """The step is measured (or its measurement failed): nothing more is captured for it."""
        self._capture = None
        for h in self._grad_handles:
            h.remove()
        self._grad_handles = []

    def _before_step(self, optimizer, args, kwargs):
        if self._capture is None:
            return None
        return after_gradient(args, kwargs, self.measure, self._end_capture)

    def _after_step(self, optimizer, args, kwargs) -> None:
        if self._capture is not None:  # step(closure) never called its closure
            self._warn_once("closure", f"{type(self).__name__}: optimizer.step(closure) did not "
                            f"call the closure: step {self.step} was not measured")
        self._end_capture()
        self.step += 1
        self._begin_step()

    # -- the hooks ---------------------------------------------------------------------------

    def _record_call(self, module, args, kwargs, output) -> None:
        if self._capture is not None and not measuring_now():
            self._capture.add_call(module, args, kwargs, output)

    def _recorded_loss(self, loss_fn: LossFn, outputs, targets, **loss_kwargs):
        loss = loss_fn(outputs, targets, **loss_kwargs)
        capture = self._capture
        if (capture is not None and not measuring_now() and isinstance(loss, torch.Tensor)
                and loss.requires_grad):
            call = capture.call_of(outputs)
            if call is not None:
                batch = Batch(call, targets, 1.0, loss_kwargs)
                loss.register_hook(functools.partial(self._record_backward, capture, batch,
                                                     loss.detach()))
        return loss

    def _record_backward(self, capture: _StepCapture, batch: Batch, loss: torch.Tensor,
                         weight: torch.Tensor) -> None:
        # Only into the capture the loss was made in, while it is the coming step's: a loss
        # backpropagated after its step never counts toward a later one.
        if capture is not self._capture or measuring_now():
            return
        if capture.settled and all(p.grad is None for p in self._model.parameters()
                                   if p.requires_grad):
            # zero_grad() since those batches went backward: .grad no longer holds them (their
            # step() was skipped -- GradScaler on inf, a `continue` -- or zeroed in between).
            del capture.batches[:capture.settled]
            capture.settled = 0
        capture.batches.append((Batch(batch.inputs, batch.targets, weight.detach(),
                                      batch.loss_kwargs), loss))

    def _grad_accumulated(self, p: torch.Tensor) -> None:
        """backward() reached ``p.grad``: the batches captured so far are in ``.grad``."""
        if self._capture is not None and not measuring_now():
            self._capture.settled = len(self._capture.batches)

    # -- measuring ---------------------------------------------------------------------------

    def _captured_batches(self) -> list[tuple[Batch, torch.Tensor]]:
        owner = type(self).__name__
        if self._model is None:
            raise RuntimeError(f"{owner}: not attached: call attach(model, optimizer, loss_fn) "
                               "and train a step first")
        if self._capture is None:
            why = (f"the coming step {self.step} is not probed (every={self.every})"
                   if self.step % self.every else f"step {self.step} was measured already")
            raise RuntimeError(f"{owner}: nothing to measure: {why}; a probe measures only the "
                               "batches of a probed step, between backward() and its "
                               "optimizer.step(), never an earlier step's")
        if not self._capture.batches:
            raise RuntimeError(f"{owner}: no training batch seen yet: it measures on the "
                               "losses from the loss_fn returned by attach() that went "
                               "through backward() before optimizer.step()")
        return self._capture.batches

    def _objective(self) -> tuple[LossFn, Any, Any]:
        """(loss_fn, inputs, targets) of the step's objective, for ``along_gradient`` & co."""
        parts = [Batch(b.inputs, b.targets, float(b.weight) if b.weight.numel() == 1 else b.weight,
                       b.loss_kwargs) for b, _ in self._captured_batches()]
        if len(parts) == 1 and isinstance(parts[0].weight, float) and parts[0].weight == 1.0:
            only = parts[0]
            loss_fn = (functools.partial(self._loss_fn, **only.loss_kwargs) if only.loss_kwargs
                       else self._loss_fn)
            return loss_fn, only.inputs, only.targets
        return self._loss_fn, Batches(tuple(parts)), None

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

    def measure(self):
        """Measure now, at the current parameters, on the coming step's captured batches.

        The hooks call it on every probed step. Called by hand it follows the same rule:
        between ``backward()`` and ``optimizer.step()`` of a step the schedule probes it
        measures that step's batches so far (the scheduled measurement still follows at
        ``step()``); anywhere else -- a step the schedule skips, or a step already measured --
        it raises RuntimeError: a probe never measures the batches of an earlier step."""
        loss_fn, inputs, targets = self._objective()
        with probe_passes():  # the probe's own forward passes are not training batches
            record = self.measure_batch(loss_fn, inputs, targets)
        return self._emit(record)

    def measure_batch(self, loss_fn, inputs, targets):  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass
class LandscapeProbe(StepInstrument):
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
      statistics per micro-batch as in training);
    - ``optimizer.step(closure)`` (Lightning's automatic optimization): measured right after
      the closure's first call, at theta_t, on the closure's batch (and on any loss
      backpropagated before ``step`` in the same step, as Lightning's gradient accumulation
      does); LBFGS, which calls the closure again at other points: that first call only.

    A loss is paired with the model call whose output tensor it receives, else with the latest
    call before it. Refused: a probed step with no backpropagated wrapped loss (RuntimeError).
    Gradients changed after ``backward()`` (clipping that bites, unscaling) are not the loss's:
    the probe warns once (it measures along the loss's own gradient, not along the step), and
    with ``reuse_grad`` computes g itself. With ``torch.amp.GradScaler`` the weights include the
    scale (F is measured scaled): not supported. With an optimizer whose update is not along the
    gradient (Adam, RMSprop, ..., LBFGS) and ``relative=True`` it warns: eta is c * lr, but the
    probe steps along the raw gradient, not the optimizer's update.
    """

    etas: Sequence[float] = (0.5, 1.0, 2.0, 4.0)
    relative: bool = True  # etas are multiples of the optimizer's (first group's) learning rate
    _: KW_ONLY
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

    def __post_init__(self):
        super().__post_init__()
        _check_etas(type(self).__name__, self.etas, self.relative)
        self._grad_norms: dict[torch.Tensor, torch.Tensor] = {}
        self._rng_since_step = None  # generators' state after the last step, when probed

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: LossFn) -> LossFn:
        if self.relative and isinstance(optimizer, NOT_ALONG_GRADIENT):
            name = type(optimizer).__name__
            warnings.warn(f"LandscapeProbe: etas are multiples of {name}'s lr, but the probe steps "
                          f"along the raw gradient (theta - eta g), not along {name}'s update; "
                          "pass relative=False to give absolute etas", stacklevel=2)
        return super().attach(model, optimizer, loss_fn)

    # -- the generators' state and the norms of .grad after backward(): whether the step's
    # loss and .grad can stand in for the probe's (reuse_grad), whether step() gets others ---

    def _begin_step(self) -> None:
        super()._begin_step()
        if self._capture is not None and self.reuse_grad:
            self._rng_since_step = rng_state(next(self._model.parameters()).device)

    def _end_capture(self) -> None:
        super()._end_capture()
        self._grad_norms, self._rng_since_step = {}, None

    def _grad_accumulated(self, p: torch.Tensor) -> None:
        super()._grad_accumulated(p)
        if not measuring_now():
            self._grad_norms[p] = torch.linalg.vector_norm(p.grad)

    def _grads_changed(self) -> bool | None:
        """Whether ``.grad`` changed between backward() and step() (clipping, unscaling), by
        the per-parameter norms taken after backward(); None when none were taken."""
        with_grad = [p for p in self._model.parameters() if p.requires_grad and p.grad is not None]
        if not with_grad or not all(p in self._grad_norms for p in with_grad):
            return None  # no norms taken at backward
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
        params = [p for p in self._model.parameters() if p.requires_grad]
        loss = sum((b.weight * value).sum() for b, value in self._captured_batches())
        return loss, [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]

    def measure_batch(self, loss_fn, inputs, targets) -> LandscapeRecord:
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
        record = along_gradient(self._model, loss_fn, inputs, targets, etas, at_theta=at_theta,
                                dtype=self.dtype)
        record.lr = lr
        return record


def _needs_closure(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step()`` cannot run without a closure (LBFGS)."""
    closure = inspect.signature(type(optimizer).step).parameters.get("closure")
    return closure is not None and closure.default is inspect.Parameter.empty


@dataclass
class ICSProbe(StepInstrument):
    """``ics.internal_covariate_shift`` of ``layers`` (weight-layer names) every ``every`` steps.

    G' needs the step's update, which ``optimizer_update`` takes by a dry ``step()`` without a
    closure: an optimizer whose ``step`` needs one (LBFGS: several evaluations per step) is
    refused at ``attach`` (TypeError)."""

    layers: Sequence[str] = ()

    def attach(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: LossFn) -> LossFn:
        if _needs_closure(optimizer):
            raise TypeError(f"ICSProbe: {type(optimizer).__name__}.step() needs a closure (it "
                            "evaluates the loss several times per step), so ICS cannot take the "
                            "step's update by a dry step; use an optimizer whose step() needs none")
        return super().attach(model, optimizer, loss_fn)

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


@dataclass
class StepLossRecord:
    """One optimizer step's objective, as the training step computed it (``StepLoss``)."""

    loss: torch.Tensor  # F = sum_i w_i L_i over the step's backpropagated losses (0-d, on the device)
    correct: torch.Tensor | None  # samples whose argmax output is their label; None: not labels
    samples: int  # samples in the step's batches (0: no wrapped loss was backpropagated)
    lr: float  # the optimizer's (first group's) learning rate at the step: LR(t)
    step: int | None = None


def _correct_labels(outputs, targets) -> torch.Tensor | None:
    """How many rows of ``outputs`` (N, C) have their argmax at ``targets`` (N,) class
    indices; None for anything else (regression, soft targets, a returned loss)."""
    if not (isinstance(outputs, torch.Tensor) and isinstance(targets, torch.Tensor)
            and outputs.ndim == 2 and targets.ndim == 1 and len(outputs) == len(targets)
            and not targets.is_floating_point() and not targets.is_complex()):
        return None
    with torch.no_grad():
        return (outputs.argmax(1) == targets).sum()


@dataclass
class StepLoss(StepInstrument):
    """Every optimizer step: the value of the objective the step descends (F = sum_i w_i L_i
    over the losses of the wrapped ``loss_fn`` that ``backward()`` went through since the
    previous step, as ``LandscapeProbe`` defines it: the minibatch loss of a plain step, the
    mean over micro-batches of ``(loss / n).backward()``), the samples classified right when
    the loss is given (N, C) outputs and (N,) labels, and the learning rate at the step. It
    reads the training step's own losses: no forward or backward pass of its own. Values stay
    on the device (a ``StepLossRecord`` each) until read."""

    every: int = 1

    def __post_init__(self):
        super().__post_init__()
        if self.every != 1:
            raise ValueError(f"StepLoss: every must be 1 (it records every step), got {self.every!r}")
        self._correct: dict[int, tuple[torch.Tensor | None, int]] = {}

    def _begin_step(self) -> None:
        super()._begin_step()
        self._correct = {}

    def _recorded_loss(self, loss_fn: LossFn, outputs, targets, **loss_kwargs):
        loss = super()._recorded_loss(loss_fn, outputs, targets, **loss_kwargs)
        if self._capture is not None and not measuring_now() and isinstance(targets, torch.Tensor):
            # Keyed by the targets tensor, which the captured batch holds: the step's samples
            # count once however many losses are computed on them.
            self._correct[id(targets)] = (_correct_labels(outputs, targets), len(targets))
        return loss

    def measure(self) -> StepLossRecord:
        batches = self._capture.batches if self._capture is not None else []
        lr = float(self._optimizer.param_groups[0]["lr"])
        if not batches:
            return self._emit(StepLossRecord(torch.tensor(float("nan")), None, 0, lr))
        with torch.no_grad():
            loss = sum((b.weight * value).sum() for b, value in batches)
        counted = [self._correct.get(t, (None, 0))
                   for t in dict.fromkeys(id(b.targets) for b, _ in batches)]
        samples = sum(n for _, n in counted)
        correct = (None if any(c is None for c, _ in counted)
                   else sum(c for c, _ in counted))
        return self._emit(StepLossRecord(loss.detach(), correct, samples, lr))
