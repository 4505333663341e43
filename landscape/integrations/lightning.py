"""PyTorch Lightning: ``LandscapeCallback`` records a ``LightningModule``'s training into a
sweep file through ``train.Recorder``::

    trainer = lightning.Trainer(callbacks=[LandscapeCallback("runs/mine.h5", "resnet-lr0.05",
                                                             every=100, seed=0)])

What the probe measures: by default the loss ``training_step`` returns (automatic
optimization): the callback wraps ``training_step`` so that the probe can evaluate it again at
theta - eta g (its ``self.log`` calls are silenced during those passes); Lightning's
``optimizer.step(closure)`` and gradient accumulation are handled as the probe handles them
(README, the probe's table). Under manual optimization ``training_step`` takes the step itself
and cannot be evaluated again: name the module's loss attribute (``loss="criterion"``), which
the callback wraps as ``Recorder.attach`` wraps a loss (also possible under automatic
optimization; it adds the step's accuracy). Each epoch's row takes the metrics Lightning
holds at the training epoch's end (``metrics``: file field -> logged name). The callback's
state is in Lightning's checkpoints (``state_dict``): ``Trainer.fit(ckpt_path=...)``
continues the file's run, its rows cut back to the checkpoint's.

Lightning is an optional dependency (the ``lightning`` extra), imported by
``import_lightning`` when this module is imported, and by nothing else.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Mapping
from typing import Any

from torch import nn

from ..errors import LandscapeError
from ..probes import probing
from ..train import Recorder

INSTALL = 'pip install "batchnorm-landscape[lightning]" (or: pip install lightning)'
# Epoch fields filled from Lightning's logged metrics, by default: the validation's.
DEFAULT_METRICS = {"test_loss": "val_loss", "test_acc": "val_acc"}


def import_lightning():
    """``lightning.pytorch``, or one line saying how to install it."""
    try:
        import lightning.pytorch as pl
    except ImportError:
        raise LandscapeError(f"landscape.integrations.lightning needs the lightning package: "
                             f"{INSTALL}") from None
    return pl


pl = import_lightning()


class TrainingStep(nn.Module):
    """A ``LightningModule``'s ``training_step`` as a model the probe can call again: its
    parameters are the module's, its output what ``training_step`` returns."""

    def __init__(self, module: nn.Module, training_step):
        super().__init__()
        self.module, self.training_step = module, training_step

    def forward(self, *args, **kwargs):
        with _silent_logs(self.module) if probing() else contextlib.nullcontext():
            return self.training_step(*args, **kwargs)


@contextlib.contextmanager
def _silent_logs(module):
    """``module.log``/``log_dict`` do nothing: a probe's passes are not training's."""
    module.log = module.log_dict = lambda *args, **kwargs: None
    try:
        yield
    finally:
        del module.log, module.log_dict


def _returned_loss(outputs, targets):
    """The loss ``training_step`` returned (a tensor, or a dict's ``"loss"``)."""
    return outputs["loss"] if isinstance(outputs, Mapping) else outputs


class LandscapeCallback(pl.Callback):
    """Records the ``LightningModule``'s training into the sweep file ``out`` as run ``run``.
    ``loss``: the name of the module's loss attribute to measure (needed under manual
    optimization), or None for the loss ``training_step`` returns; ``metrics``: the epoch row's
    fields from the metrics Lightning logged (default ``DEFAULT_METRICS``: ``test_loss`` from
    ``val_loss``, ``test_acc`` from ``val_acc``, where logged); ``settings``: ``Recorder``'s
    keyword arguments (``every``, ``etas``, ``instruments``, ``tensorboard``,
    ``flush_every``) and the run's attributes (``seed=0``, ...)."""

    def __init__(self, out, run: str, *, loss: str | None = None,
                 metrics: Mapping[str, str] | None = None, **settings):
        super().__init__()
        self.out, self.run, self.loss = out, run, loss
        self.metrics = dict(DEFAULT_METRICS if metrics is None else metrics)
        self.settings = settings
        Recorder(out, run, **settings)  # its settings checked now, before training
        self.recorder: Recorder | None = None
        self._restored: dict | None = None  # a checkpoint's state, until training starts
        self._last: dict | None = None  # the state the run ended with (a checkpoint after it)
        self._undo = None

    def on_train_start(self, trainer, pl_module) -> None:
        optimizer = trainer.optimizers[0]
        self.recorder = Recorder(self.out, self.run, resume=self._restored is not None,
                                 **self.settings)
        if self.loss is not None:
            original = getattr(pl_module, self.loss)
            setattr(pl_module, self.loss, self.recorder.attach(pl_module, optimizer, original))
            self._undo = functools.partial(setattr, pl_module, self.loss, original)
        elif not pl_module.automatic_optimization:
            raise LandscapeError("LandscapeCallback: under manual optimization training_step "
                                 "takes the step itself: name the module's loss attribute, "
                                 "e.g. LandscapeCallback(..., loss='criterion')")
        else:
            self._wrap_training_step(pl_module, optimizer)
        if self._restored is not None:
            self.recorder.load_state_dict(self._restored)
            self._restored = None

    def _wrap_training_step(self, pl_module, optimizer) -> None:
        step_model = TrainingStep(pl_module, pl_module.training_step)
        loss_fn = self.recorder.attach(step_model, optimizer, _returned_loss)

        def training_step(*args, **kwargs):
            outputs = step_model(*args, **kwargs)
            loss = loss_fn(outputs, None)
            return {**outputs, "loss": loss} if isinstance(outputs, Mapping) else loss

        pl_module.training_step = training_step
        self._undo = functools.partial(delattr, pl_module, "training_step")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        logged = trainer.callback_metrics
        self.recorder.epoch(**{field: float(logged[name]) for field, name in self.metrics.items()
                               if name in logged})

    def on_train_end(self, trainer, pl_module) -> None:
        self._end()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        interrupted = isinstance(exception, KeyboardInterrupt)
        self._end("interrupted" if interrupted else "failed",
                  None if interrupted else f"{type(exception).__name__}: {exception}")

    def _end(self, status: str | None = None, error: str | None = None) -> None:
        if self._undo is not None:
            self._undo()
            self._undo = None
        if self.recorder is not None and not self.recorder.closed:
            self._last = self.recorder.state_dict() if status is None else None
            self.recorder.close(status, error)

    def state_dict(self) -> dict[str, Any]:
        """The recorder's state (its rows flushed first): what a checkpoint continues from."""
        if self.recorder is not None and not self.recorder.closed:
            return {"recorder": self.recorder.state_dict()}
        return {"recorder": self._last} if self._last is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = state_dict.get("recorder")
