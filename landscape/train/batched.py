"""The learning-rate grid trained as one batched model.

K runs of one model that differ only by learning rate see the same minibatches from the same
initial weights, so they can be trained together: parameters and buffers are stacked along a
new leading axis (``torch.func.stack_module_state``) and one ``vmap``-ed ``functional_call``
does the forward and backward pass of all K networks at once. Each run keeps its own
BatchNorm statistics (batched buffers), its own SGD state, its own learning rate.

The update is torch.optim.SGD's (momentum, dampening 0, no Nesterov, L2 weight decay added to
the gradient) written on the stacked tensors; ``tests/test_grid.py`` checks that the grid
equals K separate ``torch.optim.SGD`` runs. The loss is the runs' (``--loss``,
``--label-smoothing``: ``losses.classification_loss``), per sample over the K x B logits, each
run's the mean of its B. Models that vmap cannot trace are reported by ``supports_batched`` so
that callers fall back to sequential runs.
"""

from __future__ import annotations

import copy
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state

from ..data import eval_batches
from ..probes import PROBE_DTYPES, GradientStats, along_gradient
from . import tasks
from .losses import LossFn
from .plan import Group
from .protocol import TrainerContext


def _upcast(logits: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 logits (autocast) to float32 for the loss; float32 and float64 unchanged."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def supports_batched(model: nn.Module, sample: torch.Tensor) -> bool:
    """Whether a model runs under vmap over stacked copies (a 2-copy trial on a copy)."""
    try:
        trial = BatchedGrid(lambda: copy.deepcopy(model), lrs=(1.0, 1.0))
        trial.forward(sample[:2])
        return True
    except (RuntimeError, NotImplementedError, ValueError):
        return False


class BatchedGrid:
    """K copies of a model, one learning rate each, trained by one vmapped pass per step."""

    def __init__(self, build: Callable[[], nn.Module], lrs: Sequence[float], momentum: float = 0.0,
                 weight_decay: float = 0.0, compile: bool = False,
                 loss_fn: LossFn = F.cross_entropy):
        models = [build() for _ in lrs]  # `build` must give the same initial weights each call
        self.k = len(models)
        self.template = copy.deepcopy(models[0]).to("meta")  # structure only, for functional_call
        params, buffers = stack_module_state(models)
        self.params = {n: p.detach().requires_grad_(True) for n, p in params.items()}
        self.buffers = {n: b.detach().clone() for n, b in buffers.items()}
        first = next(iter(self.params.values()))
        self.lrs = torch.tensor(list(lrs), dtype=first.dtype, device=first.device)
        self.momentum, self.weight_decay, self.loss_fn = momentum, weight_decay, loss_fn
        self._momentum_buffers: dict[str, torch.Tensor] = {}
        self.alive = torch.ones(self.k, dtype=torch.bool, device=first.device)  # False once diverged
        self._train_forward = torch.compile(self.forward) if compile else self.forward

    # ------------------------------------------------------------------ forward / step

    def forward(self, x: torch.Tensor, train: bool = True) -> torch.Tensor:
        """Logits of all K models on the same batch: (K, B, classes)."""
        self.template.train(train)
        x = x.contiguous()  # vmap supports only the default memory format

        def one(p, b):
            return functional_call(self.template, (p, b), (x,))

        return torch.func.vmap(one)(self.params, self.buffers)

    def step(self, x: torch.Tensor, y: torch.Tensor, autocast=None
             ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """One SGD step of every model on (x, y): per-model losses (K,), correct counts (K,),
        and the gradients (stacked, before the update) for statistics and probes."""
        ctx = autocast() if autocast is not None else torch.autocast(x.device.type, enabled=False)
        with ctx:
            out = _upcast(self._train_forward(x))
        losses = self.loss_fn(out.flatten(0, 1), y.repeat(self.k), reduction="none")
        losses = losses.view(self.k, -1).mean(1)
        # A diverged model's loss is left out, so its NaNs cannot reach the others' updates.
        total = torch.where(self.alive, losses, torch.zeros_like(losses)).sum()
        grads = torch.autograd.grad(total, list(self.params.values()))
        grads = dict(zip(self.params, grads))
        self._sgd_update(grads)
        with torch.no_grad():
            correct = (out.argmax(-1) == y.unsqueeze(0)).sum(1)
        return losses.detach(), correct, grads

    @torch.no_grad()
    def _sgd_update(self, grads: dict[str, torch.Tensor]) -> None:
        for name, p in self.params.items():
            d_p = grads[name]
            if self.weight_decay:
                d_p = d_p.add(p, alpha=self.weight_decay)
            if self.momentum:
                buf = self._momentum_buffers.get(name)
                if buf is None:
                    buf = self._momentum_buffers[name] = d_p.clone()
                else:
                    buf.mul_(self.momentum).add_(d_p)
                d_p = buf
            lr = (self.lrs * self.alive).view(-1, *([1] * (p.ndim - 1)))
            p.sub_(lr * d_p)

    # ------------------------------------------------------------------ per-model views

    def flat(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """(K, P) float32 view of stacked per-parameter tensors."""
        return torch.cat([t.detach().reshape(self.k, -1).float() for t in tensors.values()], 1)

    @torch.no_grad()
    def model_at(self, k: int, into: nn.Module | None = None) -> nn.Module:
        """A real ``nn.Module`` holding model k's current parameters and buffers (a copy)."""
        module = into if into is not None else copy.deepcopy(self.template).to_empty(
            device=self.lrs.device)
        for name, t in module.named_parameters():
            t.copy_(self.params[name][k])
        for name, t in module.named_buffers():
            t.copy_(self.buffers[name][k])
        return module

    @torch.no_grad()
    def evaluate(self, batches) -> tuple[np.ndarray, np.ndarray]:
        """Per-model loss and accuracy in eval mode (running statistics) over ``batches``."""
        total = torch.zeros(self.k, dtype=torch.float64, device=self.lrs.device)
        correct = torch.zeros(self.k, dtype=torch.int64, device=self.lrs.device)
        n = 0
        for x, y in batches:
            out = _upcast(self.forward(x, train=False))
            total += self.loss_fn(out.flatten(0, 1), y.repeat(self.k),
                                  reduction="none").view(self.k, -1).sum(1).double()
            correct += (out.argmax(-1) == y.unsqueeze(0)).sum(1)
            n += len(y)
        return (total / n).cpu().numpy(), (correct.double() / n).cpu().numpy()


class GridRuns:
    """All learning rates of a group as one ``BatchedGrid``; probes on per-run copies. A
    ``protocol.Trainer``."""

    def __init__(self, group: Group, data, context: TrainerContext):
        config, device = group.cell, context.device

        def build():
            torch.manual_seed(config.seed)  # same initial weights as SequentialRun
            return config.model(group.model, data).to(device)

        # always classification (see SweepConfig.trains_alone), on the run's loss
        self.task = tasks.task_for(data, config.loss, config.label_smoothing)
        self.grid = BatchedGrid(build, group.lrs, config.momentum, config.weight_decay,
                                compile=config.compile, loss_fn=self.task.loss_fn)
        self.lrs, self.config, self.k = group.lrs, config, len(group.runs)
        self.on_probe, self.autocast = context.on_probe, context.autocast
        self._scratch = build()  # a real module that each probe loads one run's state into
        self.stats = GradientStats()  # not attached: fed the stacked gradients of every run
        self.probe_dtype = PROBE_DTYPES[config.probe_dtype_of(group.model)]

    def step(self, x, y, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.config.probe and step % self.config.probe_every == 0:
            for k in range(self.k):  # at theta_t, on this step's batch, before the update
                if bool(self.grid.alive[k]):
                    model = self.grid.model_at(k, into=self._scratch)
                    record = along_gradient(model, self.task.loss_fn, x, y,
                                            [e * self.lrs[k] for e in self.config.etas],
                                            dtype=self.probe_dtype)
                    record.step, record.lr = step, self.lrs[k]
                    self.on_probe(k, record)
        theta = self.grid.flat(self.grid.params)
        losses, correct, grads = self.grid.step(x, y, self.autocast)
        self.stats.record(self.grid.flat(grads), theta)
        return losses, correct

    def learning_rates(self) -> np.ndarray:
        return np.asarray(self.lrs, dtype=np.float64)  # constant: schedules train alone

    def end_epoch(self, train_loss: np.ndarray) -> None:
        """No schedule to step: runs with one train alone (``SweepConfig.trains_alone``)."""

    def pop_grad_rows(self) -> np.ndarray:
        rows = self.stats.pop()
        return rows if len(rows) else np.zeros((0, self.k, 3))  # (n, K, 3)

    def evaluate(self, data) -> tuple[np.ndarray, np.ndarray]:
        return self.grid.evaluate(eval_batches(data))

    def module(self, k: int) -> nn.Module:
        """Run k's current parameters and buffers in a real module (a scratch copy)."""
        return self.grid.model_at(k, into=self._scratch)

    def freeze(self, k: int) -> None:
        self.grid.alive[k] = False

    def state_dict(self) -> dict:
        """The stacked parameters, buffers and momentum of the K runs, which are alive, and
        the per-step statistics' previous gradients (as ``SequentialRun.state_dict``)."""
        grid = self.grid
        return {"params": {n: p.detach() for n, p in grid.params.items()},
                "buffers": grid.buffers, "momentum": grid._momentum_buffers,
                "alive": grid.alive, "stats": self.stats.state_dict()}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        grid = self.grid
        for name, p in grid.params.items():
            p.copy_(state["params"][name])
        for name, b in grid.buffers.items():
            b.copy_(state["buffers"][name])
        grid._momentum_buffers = {n: t.clone().to(grid.lrs.device)
                                  for n, t in state["momentum"].items()}
        grid.alive.copy_(state["alive"])
        self.stats.load_state_dict(state["stats"])

    def close(self) -> None:
        pass
