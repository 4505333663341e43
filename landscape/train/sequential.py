"""One run trained eagerly: a model, its ``torch.optim`` optimizer, and the probes attached as hooks."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from ..probes import PROBE_DTYPES, GradientStats, LandscapeProbe
from . import tasks
from .config import SweepConfig
from .hessian_instruments import build_hessian_instruments
from .instruments import WeightRecorder, build_instruments
from .plan import Group, RunSpec
from .protocol import TrainerContext
from .schedules import Schedule


ADAPTIVE = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "adagrad": torch.optim.Adagrad,
            "adadelta": torch.optim.Adadelta, "adamax": torch.optim.Adamax,
            "rmsprop": torch.optim.RMSprop}


def make_optimizer(parameters, lr: float, config: SweepConfig) -> torch.optim.Optimizer:
    """``config.optimizer`` over ``parameters``: ``sgd`` (heavy-ball ``momentum``, Nesterov's
    with ``nesterov``; L2 ``weight_decay`` added to the gradient), or one of ``ADAPTIVE`` with
    torch's defaults but the learning rate and ``weight_decay`` (added to the gradient;
    decoupled for ``adamw``): Adam's betas (0.9, 0.999), eps 1e-8; RMSprop's alpha 0.99."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=config.momentum,
                               weight_decay=config.weight_decay, nesterov=config.nesterov)
    return ADAPTIVE[config.optimizer](parameters, lr=lr, weight_decay=config.weight_decay)


def build_run(model_name: str, lr: float, config: SweepConfig, data,
              device: torch.device) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A run's model and optimizer. The model is built right after ``torch.manual_seed(seed)``:
    every run of one seed and model starts from the same weights, whatever its learning rate,
    batch size, optimizer or dropout rate (dropout layers draw nothing when built)."""
    torch.manual_seed(config.seed)
    model = config.model(model_name, data).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)  # NHWC on tensor cores
    return model, make_optimizer(model.parameters(), lr, config)


def _landscape_probe(run: RunSpec, config: SweepConfig, reuse_grad: bool,
                     context: TrainerContext) -> LandscapeProbe:
    """The run's landscape probe, at step sizes LR(t) x --etas. With adam/adamw too, the probe
    steps along the raw gradient, theta - eta g, as for SGD (the paper's probe). A constant
    schedule gives absolute step sizes (the run's LR times --etas), as before schedules; under
    a schedule the probe reads the optimizer's learning rate at each probed step
    (``relative``)."""
    relative = config.lr_schedule != "constant"
    return LandscapeProbe(every=config.probe_every, relative=relative,
                          etas=tuple(config.etas) if relative
                          else tuple(e * run.lr for e in config.etas),
                          on_record=lambda r: context.on_probe(0, r), keep=False,
                          reuse_grad=reuse_grad,
                          dtype=PROBE_DTYPES[config.probe_dtype_of(run.model)])


def _attach_quietly(probe: LandscapeProbe, model, optimizer, loss_fn):
    """``probe.attach``, without the warning that its etas are multiples of an adaptive
    optimizer's learning rate: here that is the documented choice (README, --optimizer)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LandscapeProbe: etas are multiples of")
        return probe.attach(model, optimizer, loss_fn)


class SequentialRun:
    """One run: the model, its optimizer (``make_optimizer``), and the probes attached as hooks.
    A ``protocol.Trainer`` of a group of one run."""

    def __init__(self, group: Group, data, context: TrainerContext):
        (run,), config, device = group.runs, group.cell, context.device
        self.model, self.optimizer = build_run(run.model, run.lr, config, data, device)
        # classification (ImageData) on the run's loss, or the DLN's regression
        self.task = tasks.task_for(data, config.loss, config.label_smoothing)
        self.autocast = context.autocast
        # The probe reuses the training step's loss and gradient when that step ran in exact
        # float32 (one pass fewer); for a model that draws random numbers (dropout, noise) the
        # probe computes g itself, with its own draws (LandscapeProbe.reuse_grad).
        exact_step = (device.type == "cpu" or config.precision == "fp32") and not config.compile
        steps_per_epoch = self.task.stream(config.batch_size, config.seed,
                                           config.augment).steps_per_epoch
        self.schedule = Schedule(self.optimizer, config, config.total_steps(steps_per_epoch))
        self.probe = _landscape_probe(run, config, exact_step, context)
        self.loss_fn = (_attach_quietly(self.probe, self.model, self.optimizer, self.task.loss_fn)
                        if config.probe else self.task.loss_fn)
        self.stats = GradientStats().attach(self.optimizer)
        # Compiled for training steps only; probes call the eager module through functional_call.
        self.forward = torch.compile(self.model) if config.compile else self.model
        log = context.logs[0] if context.logs else None
        self.instruments = build_instruments(config, self.model, log)  # ICS, activations, ...
        self.instruments += build_hessian_instruments(config, self.model, log, data)
        self.weights = (WeightRecorder(self.model, self.optimizer, log) if config.records_weights()
                        else None)
        for instrument in self.instruments:
            self.loss_fn = instrument.attach(self.model, self.optimizer, self.loss_fn)
        self.k = 1

    def step(self, x, y, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.train()
        with self.autocast():
            out = self.forward(x)
            loss = self.loss_fn(out.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.schedule.after_step()
        with torch.no_grad():
            return loss.detach().view(1), self.task.correct(out, y).view(1)

    def learning_rates(self) -> np.ndarray:
        return np.array([self.optimizer.param_groups[0]["lr"]], dtype=np.float64)

    def end_epoch(self, train_loss: np.ndarray) -> None:
        self.schedule.after_epoch(train_loss[0])

    def pop_grad_rows(self) -> np.ndarray:
        if self.weights is not None:  # the loop's host sync: the weight rows go to the log too
            self.weights.drain()
        return self.stats.pop()[:, None, :]  # (n, 1, 3)

    def evaluate(self, data) -> tuple[np.ndarray, np.ndarray]:
        loss, acc = self.task.evaluate(self.model)
        return np.array([loss]), np.array([acc])

    def module(self, k: int) -> torch.nn.Module:
        """Run k's model as it is now (for measurements that leave no trace)."""
        return self.model

    def freeze(self, k: int) -> None:
        """Run k diverged: nothing more to do for a single run (the loop stops)."""

    def state_dict(self) -> dict:
        """Everything the next step depends on, taken between steps after the loop's host
        sync: weights and buffers (BatchNorm's statistics, the noise layers' draw counters),
        the optimizer's state, the learning-rate scheduler's, the per-step statistics'
        previous gradient, each probe's and instrument's schedule and warm starts. torch's
        generators are the checkpoint's."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "lr_schedule": self.schedule.state_dict(),
                "stats": self.stats.state_dict(), "probe": self.probe.state_dict(),
                "instruments": [i.state_dict() for i in self.instruments],
                "weights": self.weights.state_dict() if self.weights is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state.get("lr_schedule"))
        self.stats.load_state_dict(state["stats"])
        self.probe.load_state_dict(state["probe"])
        for instrument, kept in zip(self.instruments, state["instruments"], strict=True):
            instrument.load_state_dict(kept)
        if self.weights is not None:
            self.weights.load_state_dict(state["weights"])

    def close(self) -> None:
        for hooks in [self.probe, self.stats, *self.instruments, self.weights]:
            if hooks is not None:
                hooks.detach()
