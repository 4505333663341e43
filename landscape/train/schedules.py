"""Learning-rate schedules (``--lr-schedule``): torch's ``torch.optim.lr_scheduler`` classes
over a run's optimizer, their arguments from the sweep's settings and the run's length.

When a schedule steps (``Schedule``):

- ``step``, ``cosine``, ``exponential``, ``linear``: once per optimizer step, after it, so that
  LR(t), the learning rate step t trains with, is a function of the step (the finest
  resolution the step rows can record; an epoch-wise schedule is the per-step one with its
  lengths in steps). Their lengths and periods are counted in steps.
- ``plateau`` (``ReduceLROnPlateau``): once per epoch, on the epoch's mean training loss (the
  quantity optimization is about, and the one the loop has at every epoch's end): a plateau is
  a property of epochs, not of single minibatches.
- ``constant``: no scheduler at all, so that the optimizer and every number are what they were
  before schedules existed.

The learning rate a run starts with is its ``--lrs`` value under every schedule (torch's
schedulers leave it as it is at their step 0).
"""

from __future__ import annotations

import json

import torch
from torch.optim import lr_scheduler

SCHEDULES = ("constant", "step", "cosine", "exponential", "linear", "plateau")
PER_EPOCH = ("plateau",)  # stepped at an epoch's end on its training loss; the rest per step
CLASSES = {"step": lr_scheduler.StepLR, "cosine": lr_scheduler.CosineAnnealingLR,
           "exponential": lr_scheduler.ExponentialLR, "linear": lr_scheduler.LinearLR,
           "plateau": lr_scheduler.ReduceLROnPlateau}
# What an exponential schedule without --lr-exp-gamma keeps of the learning rate at the run's
# end: gamma = END ** (1 / steps), two decades over the run (as --lr-schedule step's default).
EXPONENTIAL_END = 0.01


def scheduler_args(config, total_steps: int) -> dict:
    """The keyword arguments of ``config.lr_schedule``'s torch class (besides the optimizer)
    for a run of ``total_steps`` steps, defaults filled in; ``{}`` for ``constant``."""
    name = config.lr_schedule
    if name == "step":
        return {"step_size": config.lr_step_size or max(1, total_steps // 3),
                "gamma": config.lr_step_gamma}
    if name == "cosine":
        return {"T_max": total_steps, "eta_min": config.lr_eta_min}
    if name == "exponential":
        gamma = config.lr_exp_gamma
        return {"gamma": EXPONENTIAL_END ** (1 / total_steps) if gamma is None else gamma}
    if name == "linear":
        return {"start_factor": 1.0, "end_factor": config.lr_end_factor,
                "total_iters": total_steps}
    if name == "plateau":
        return {"mode": "min", "factor": config.lr_plateau_factor,
                "patience": config.lr_patience}
    return {}


def schedule_attributes(config, total_steps: int) -> dict:
    """A run's attribute of its schedule's parameters, beside ``lr_schedule`` (an axis): for a
    schedule other than ``constant``, the torch class's arguments as JSON
    (``lr_schedule_args``), so that runs of one schedule with other parameters are told apart
    (report pools, files compared); nothing for ``constant``."""
    if config.lr_schedule == "constant":
        return {}
    return {"lr_schedule_args": json.dumps(scheduler_args(config, total_steps), sort_keys=True)}


class Schedule:
    """A run's learning-rate schedule over its optimizer: the torch scheduler (none for
    ``constant``), stepped after each optimizer step or at each epoch's end (``PER_EPOCH``)."""

    def __init__(self, optimizer: torch.optim.Optimizer, config, total_steps: int):
        name = config.lr_schedule
        self.scheduler = (None if name == "constant"
                          else CLASSES[name](optimizer, **scheduler_args(config, total_steps)))
        self.per_epoch = name in PER_EPOCH

    def after_step(self) -> None:
        if self.scheduler is not None and not self.per_epoch:
            self.scheduler.step()

    def after_epoch(self, train_loss: float) -> None:
        if self.scheduler is not None and self.per_epoch:
            self.scheduler.step(float(train_loss))

    def state_dict(self) -> dict | None:
        return None if self.scheduler is None else self.scheduler.state_dict()

    def load_state_dict(self, state: dict | None) -> None:
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state)
