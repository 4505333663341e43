"""Training steps as CUDA graphs, K runs at once on K CUDA streams.

A full-width VGG-A step at batch 128 is about 150 small kernels; launched one by one from
Python, an H100 waits on the launches, not on the arithmetic (benchmarks/RESULTS.md). Here a
run's whole step -- forward, backward, the per-step gradient statistics, the SGD update -- is
recorded once as a CUDA graph and then replayed with one launch. The K runs of a
learning-rate grid (separate modules and ``torch.optim.SGD`` optimizers, same initial weights,
same batches) replay on K streams, so that the GPU overlaps them.

The replay is the eager step: the first ``WARMUP`` steps run eagerly (they create the SGD
momentum buffers and let cuDNN pick its kernels), the graph is recorded from the very same
function, and every step reads the batch from one static input buffer shared by the K runs.
``python benchmarks/bench.py --suite gpucheck`` compares graphed runs with eager ones on a GPU.

Only for what a graph can hold (``SweepConfig.training_mode`` says when): CUDA, image
classification, models that draw no random numbers (``models.draws_random``: not the noisy-BN
family, no dropout -- a recorded probe could not give its points the same draws), ``--optimizer
sgd`` only, no instruments (their hooks run Python at every forward), no ``torch.compile``
(``CapturedStep`` can record a compiled forward, which was timed in benchmarks/RESULTS.md,
Round 3; its gradients were measured wrong on an H100).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from ..probes import (gradient_step_stats, no_trace, probe_tensors, record_from,
                      trainable_parameters)
from . import tasks
from .plan import Group
from .protocol import TrainerContext
from .sequential import build_run

WARMUP = 3  # eager steps before the graph is recorded (the side-stream warm-up CUDA asks for)


class CapturedStep:
    """One run's training step on static inputs: eager for ``WARMUP`` calls, then a CUDA graph.

    Each call returns a (5,) float tensor: loss, correct count, ||g||, ||g - g_prev||,
    ||g - g_prev|| / ||theta - theta_prev|| (NaN for the last two at the first step).
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, task,
                 x: torch.Tensor, y: torch.Tensor, autocast, forward: Callable | None = None):
        self.model, self.optimizer, self.task, self.autocast = model, optimizer, task, autocast
        # e.g. torch.compile(model), compiled by the warm-up (`or` would ask it for its len())
        self.forward = model if forward is None else forward
        self.x, self.y = x, y  # static buffers, refilled before every step
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        n = sum(p.numel() for p in self.params)
        device = x.device
        self.prev_grad = torch.zeros(n, device=device)
        self.prev_theta = torch.zeros(n, device=device)
        self.has_prev = torch.zeros((), dtype=torch.bool, device=device)
        self.result = torch.zeros(5, device=device)
        self.stream = torch.cuda.Stream(device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.calls = 0

    def _body(self) -> None:
        """The step itself: what the eager warm-up runs and what the graph records."""
        with self.autocast():
            out = self.forward(self.x)
            loss = self.task.loss_fn(out.float(), self.y)
        loss.backward()
        with torch.no_grad():
            g = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
                           for p in self.params])
            theta = torch.cat([p.reshape(-1).float() for p in self.params])
            stats = gradient_step_stats(g, theta, self.prev_grad, self.prev_theta)
            stats[1:] = torch.where(self.has_prev, stats[1:], torch.full_like(stats[1:], float("nan")))
            self.prev_grad.copy_(g)
            self.prev_theta.copy_(theta)
            self.has_prev.fill_(True)
            correct = self.task.correct(out, self.y).float().view(1)
            self.result.copy_(torch.cat([loss.detach().view(1), correct, stats]))
        self.optimizer.step()

    def launch(self) -> None:
        """Queue this step on the run's own stream (after what the current stream queued)."""
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            if self.graph is None and self.calls < WARMUP:
                self.optimizer.zero_grad(set_to_none=True)
                self._body()
            else:
                if self.graph is None:
                    # Gradients are allocated inside the graph: each replay overwrites them.
                    self.optimizer.zero_grad(set_to_none=True)
                    self.graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(self.graph, stream=self.stream):
                        self._body()
                self.graph.replay()  # recording ran nothing: this is the step
        self.calls += 1

    def join(self) -> torch.Tensor:
        """Make the current stream wait for this step; a copy of its (5,) result."""
        torch.cuda.current_stream().wait_stream(self.stream)
        return self.result.clone()


class CapturedProbe:
    """``along_gradient`` on a run's static batch as a CUDA graph on the run's stream.

    The first call runs eagerly (the warm-up), later calls replay the graph; both measure in
    float32 with the model's live parameters (a graph reads them where they are, and SGD
    updates them in place) and BN on batch statistics, leaving the model as it was.
    ``launch`` returns the (device) tensors of the record; ``record_from`` turns them into a
    ``LandscapeRecord`` once they are needed on the host.
    """

    def __init__(self, model: torch.nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor,
                 etas: Sequence[float], stream: torch.cuda.Stream):
        self.model, self.loss_fn, self.x, self.y, self.stream = model, loss_fn, x, y, stream
        self.etas = torch.tensor(list(etas), dtype=torch.float32, device=x.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.outputs: tuple[torch.Tensor, ...] | None = None

    def _body(self) -> tuple[torch.Tensor, ...]:
        # Each eta point on its own stream: branches of the graph that run concurrently.
        return probe_tensors(self.model, self.loss_fn, self.x, self.y, self.etas, "streams")

    def launch(self) -> tuple[torch.Tensor, ...]:
        """Queue the probe on the run's stream (after the current stream); its tensors."""
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream), no_trace(self.model, self.x.device):
            if self.outputs is None:  # warm-up: an eager probe, whose numbers are kept
                self.outputs = self._body()
                return (self.etas, *self.outputs)
            if self.graph is None:
                self.graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self.graph, stream=self.stream):
                    self.outputs = self._body()
            self.graph.replay()
            return (self.etas, *(t.clone() for t in self.outputs))


class StreamRuns:
    """K runs of one model (one per learning rate) in lockstep, each step a CUDA graph on its
    own stream. A ``protocol.Trainer`` (like ``SequentialRun``, ``GridRuns``)."""

    def __init__(self, group: Group, data, context: TrainerContext):
        config, device = group.cell, context.device
        self.task = tasks.task_for(data, config.loss, config.label_smoothing)
        self.lrs, self.config, self.k = group.lrs, config, len(group.runs)
        self.on_probe = context.on_probe
        self.models, self.steps = [], []
        self.x = torch.empty((config.batch_size, *data.x_train.shape[1:]), device=device)
        self.y = torch.empty(config.batch_size, dtype=torch.int64, device=device)
        for lr in self.lrs:
            model, optimizer = build_run(group.model, lr, config, data, device)
            self.models.append(model.train())
            self.steps.append(CapturedStep(model, optimizer, self.task, self.x, self.y,
                                           context.autocast))
        # Each run's probe goes on its run's stream, before that run's step: at theta_t, on
        # this step's batch, and concurrently with the other runs' probes and steps.
        self.probes = [CapturedProbe(model, self.task.loss_fn, self.x, self.y,
                                     [e * lr for e in config.etas], step.stream)
                       for model, lr, step in zip(self.models, self.lrs, self.steps)]
        self.alive = [True] * self.k
        self._rows: list[torch.Tensor] = []
        self._pending_probes: list[tuple[int, int, tuple[torch.Tensor, ...]]] = []

    def step(self, x, y, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.x.copy_(x)
        self.y.copy_(y)
        probing = self.config.probe and step % self.config.probe_every == 0
        live = [k for k in range(self.k) if self.alive[k]]
        for k in live:
            if probing:
                self._pending_probes.append((k, step, self.probes[k].launch()))
            self.steps[k].launch()
        rows = torch.full((self.k, 5), float("nan"), device=self.x.device)
        for k in live:
            rows[k] = self.steps[k].join()
        self._rows.append(rows[:, 2:])
        return rows[:, 0], rows[:, 1].round().long()

    def _deliver_probes(self) -> None:
        """Hand the probes' records over (the host reads them here, not at every step)."""
        for k, step, tensors in self._pending_probes:
            record = record_from(*tensors, names=list(trainable_parameters(self.models[k])))
            record.step, record.lr = step, self.lrs[k]
            self.on_probe(k, record)
        self._pending_probes = []

    def learning_rates(self) -> np.ndarray:
        return np.asarray(self.lrs, dtype=np.float64)  # constant: schedules train alone

    def end_epoch(self, train_loss: np.ndarray) -> None:
        """No schedule to step: runs with one train alone (``SweepConfig.trains_alone``)."""

    def pop_grad_rows(self) -> np.ndarray:
        self._deliver_probes()  # the loop's host sync: records of the steps it is logging
        if not self._rows:
            return np.zeros((0, self.k, 3))
        rows = torch.stack(self._rows).to("cpu", torch.float64).numpy()  # (n, K, 3)
        self._rows = []
        return rows

    def evaluate(self, data) -> tuple[np.ndarray, np.ndarray]:
        results = [self.task.evaluate(model) if self.alive[k] else (np.nan, np.nan)
                   for k, model in enumerate(self.models)]
        return np.array([r[0] for r in results]), np.array([r[1] for r in results])

    def module(self, k: int) -> torch.nn.Module:
        return self.models[k]

    def freeze(self, k: int) -> None:
        self.alive[k] = False

    def state_dict(self) -> dict:
        """Each run's weights, buffers, SGD state and previous gradient (as
        ``SequentialRun.state_dict``). Not tested on a GPU yet (none here): a restored run
        records its graph anew after ``WARMUP`` eager steps, which the graph replays."""
        return {"runs": [{"model": step.model.state_dict(),
                          "optimizer": step.optimizer.state_dict(),
                          "prev_grad": step.prev_grad, "prev_theta": step.prev_theta,
                          "has_prev": step.has_prev} for step in self.steps],
                "alive": list(self.alive)}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        for step, kept in zip(self.steps, state["runs"], strict=True):
            step.model.load_state_dict(kept["model"])
            step.optimizer.load_state_dict(kept["optimizer"])
            for name in ("prev_grad", "prev_theta", "has_prev"):
                getattr(step, name).copy_(kept[name])
        self.alive = list(state["alive"])

    def close(self) -> None:
        self._deliver_probes()
