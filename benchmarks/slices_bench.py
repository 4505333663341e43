"""``bench.py --suite slices``: a 2D slice of VGG-A+BN against its floor and loss-landscapes.

Side by side in one run, interleaved row by row of the grid so that another process's load
hits all three alike: the floor (n forward passes over the evaluation set a row, timed alone,
train mode, no grad, on a copy of the model), ``probes.slices.evaluate_points`` on that row of
the plane, and marcellodebernardi's ``loss-landscapes`` (``planar_interpolation``, installed for
the benchmark only: ``pip install loss-landscapes``) walking the same plane; the floor's and our
row run inside its metric at the start of each of its rows and are subtracted from its time.
Our sequential points run channels-last on the CPU (``probes.slices``), so the floor is timed
twice: the model as it is, and model and images channels-last (the floor of that layout).

loss-landscapes' grid is not a product grid: its walk adds a step along d2 *before* each
evaluation in even rows and subtracts one before each evaluation in odd rows (``main.py:
planar_interpolation``), so with start s and steps u1, u2 its value [i, j] is the loss at
s + i u1 + (j + 1) u2 for even i and s + i u1 + j u2 for odd i. Its values are compared with ours
at those very points (the last column of its even rows lies outside our grid).
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
import torch.nn.functional as F

from landscape.data import load_dataset
from landscape.models import build_model
from landscape.probes import trainable_parameters
from landscape.probes.slices import (evaluate_points, grid_coords, normalize_direction,
                                     random_direction)


def _batches(samples: int, batch_size: int = 128):
    data = load_dataset("cifar10-mini")
    x, y = data.normalize(data.x_train[:samples]), data.y_train[:samples]
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, samples, batch_size)]


def _floor(model, batches, passes: int) -> float:
    """Seconds of ``passes`` forward passes and losses over ``batches`` (train mode, no grad)."""
    model.train()
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(passes):
            for x, y in batches:
                F.cross_entropy(model(x), y)
    return time.perf_counter() - start


class _Rows:
    """The floor and our slice, one row of the grid at a time, each timed."""

    def __init__(self, model, batches, theta, d1, d2, axis):
        self.model, self.batches, self.theta, self.dirs, self.axis = model, batches, theta, \
            [d1, d2], axis
        self.floor_model = copy.deepcopy(model)  # its running statistics may move
        self.last_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
        self.last_batches = [(x.contiguous(memory_format=torch.channels_last), y)
                             for x, y in batches]
        self.ours = np.empty((len(axis), len(axis)))
        self.seconds = {"floor": 0.0, "channels-last floor": 0.0, "ours": 0.0}

    def __call__(self, i: int) -> None:
        self.seconds["floor"] += _floor(self.floor_model, self.batches, len(self.axis))
        self.seconds["channels-last floor"] += _floor(self.last_model, self.last_batches,
                                                      len(self.axis))
        start = time.perf_counter()
        self.ours[i] = evaluate_points(self.model, F.cross_entropy, self.batches, self.theta,
                                       self.dirs, grid_coords([self.axis[i:i + 1], self.axis]),
                                       points="sequential").loss
        self.seconds["ours"] += time.perf_counter() - start


def _theirs(model, batches, theta, d1, d2, rows: _Rows):
    """loss-landscapes' planar_interpolation on our plane, starting at its corner with our
    step, ``rows`` run at the start of each of its rows: (seconds, values), or None, None when
    it is not installed."""
    try:
        import loss_landscapes
        from loss_landscapes.metrics import Metric
    except ImportError:
        return None, None
    n, step = len(rows.axis), float(rows.axis[1] - rows.axis[0])

    class EvaluationSetLoss(Metric):
        calls, outside = 0, 0.0  # outside: seconds spent in ``rows``

        def __call__(self, wrapper):
            if self.calls % n == 0:
                start = time.perf_counter()
                rows(self.calls // n)
                self.outside += time.perf_counter() - start
            self.calls += 1
            with torch.no_grad():
                return sum(float(F.cross_entropy(wrapper.forward(x), y)) * len(y)
                           for x, y in batches) / sum(len(y) for _, y in batches)

    corner = {k: theta[k] - d1[k] - d2[k] for k in theta}
    ends = [copy.deepcopy(model) for _ in range(3)]
    with torch.no_grad():
        for end, scale in zip(ends, ((0, 0), (n * step, 0), (0, n * step))):
            for k, p in end.named_parameters():
                p.copy_(corner[k] + scale[0] * d1[k] + scale[1] * d2[k])
    for end in ends:
        end.train()
    metric = EvaluationSetLoss()
    start = time.perf_counter()
    values = loss_landscapes.planar_interpolation(*ends, metric, steps=n, deepcopy_model=True)
    return time.perf_counter() - start - metric.outside, np.asarray(values)


def _largest_gap(theirs: np.ndarray, ours: np.ndarray) -> float:
    """The largest relative difference at the points both evaluated (see the module docstring)."""
    gaps = [np.abs(theirs[i, :-1] - ours[i, 1:]) / np.abs(ours[i, 1:]) if i % 2 == 0 else
            np.abs(theirs[i] - ours[i]) / np.abs(ours[i]) for i in range(len(ours))]
    return float(max(g.max() for g in gaps))


def slices_table(n: int = 21, samples: int = 4096, width: float = 0.25) -> list[str]:
    torch.manual_seed(0)
    model = build_model("vgg_a_bn", width=width)
    batches = _batches(samples)
    theta = trainable_parameters(model)
    d1, d2 = (normalize_direction(random_direction(theta, s), theta) for s in (0, 1))
    rows = _Rows(model, batches, theta, d1, d2, np.linspace(-1, 1, n))
    seconds, theirs = _theirs(model, batches, theta, d1, d2, rows)
    if theirs is None:
        for i in range(n):
            rows(i)
    floor, last, ours = (rows.seconds[k] for k in ("floor", "channels-last floor", "ours"))
    table = [f"VGG-A+BN width {width:g}, {n}x{n} slice on {samples:,} images "
             f"(torch threads {torch.get_num_threads()}, interleaved row by row)", "",
             "| what | seconds | / floor |", "|---|---|---|",
             f"| floor: {n * n} forward passes timed alone | {floor:.1f} | 1.00 |",
             f"| the same, model and images channels-last | {last:.1f} | {last / floor:.2f} |",
             f"| landscape slice (sequential points) | {ours:.1f} | {ours / floor:.2f} |"]
    if theirs is None:
        return table + ["| loss-landscapes planar_interpolation | not installed | - |"]
    return table + [f"| loss-landscapes planar_interpolation | {seconds:.1f} | "
                    f"{seconds / floor:.2f} |", "",
                    "largest relative difference of the values (at the points both evaluate): "
                    f"{_largest_gap(theirs, rows.ours):.2g}"]
