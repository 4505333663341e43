"""``bench.py --suite slices``: a 2D slice of VGG-A+BN against its floor and loss-landscapes.

Side by side in one run (contention hits all alike): the floor (n*n forward passes over the
evaluation set, timed alone, train mode, no grad), ``probes.slices.evaluate_points`` on the
same plane, and marcellodebernardi's ``loss-landscapes`` (``planar_interpolation``, installed
for the benchmark only: ``pip install loss-landscapes``) on that plane, whose values must equal
ours to float rounding (it walks the grid by in-place additions).
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
    model.train()
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(passes):
            for x, y in batches:
                F.cross_entropy(model(x), y)
    return time.perf_counter() - start


def _theirs(model, batches, theta, d1, d2, n: int):
    """loss-landscapes' planar_interpolation on our plane: None when it is not installed."""
    try:
        import loss_landscapes
        from loss_landscapes.metrics import Metric
    except ImportError:
        return None, None

    class EvaluationSetLoss(Metric):
        def __call__(self, wrapper):
            with torch.no_grad():
                return sum(float(F.cross_entropy(wrapper.forward(x), y)) * len(y)
                           for x, y in batches) / sum(len(y) for _, y in batches)

    step = 2 / (n - 1)
    corner = {k: theta[k] - d1[k] - (1 + step) * d2[k] for k in theta}
    ends = [copy.deepcopy(model) for _ in range(3)]
    with torch.no_grad():
        for end, scale in zip(ends, ((0, 0), (n * step, 0), (0, n * step))):
            for k, p in end.named_parameters():
                p.copy_(corner[k] + scale[0] * d1[k] + scale[1] * d2[k])
    for end in ends:
        end.train()
    start = time.perf_counter()
    values = loss_landscapes.planar_interpolation(*ends, EvaluationSetLoss(), steps=n,
                                                  deepcopy_model=True)
    return time.perf_counter() - start, np.asarray(values)


def slices_table(n: int = 21, samples: int = 4096, width: float = 0.25) -> list[str]:
    torch.manual_seed(0)
    model = build_model("vgg_a_bn", width=width)
    batches = _batches(samples)
    theta = trainable_parameters(model)
    d1, d2 = (normalize_direction(random_direction(theta, s), theta) for s in (0, 1))
    axis = np.linspace(-1, 1, n)
    floor = _floor(model, batches, n * n)
    start = time.perf_counter()
    ours = evaluate_points(model, F.cross_entropy, batches, theta, [d1, d2],
                           grid_coords([axis, axis]), points="sequential").loss.reshape(n, n)
    slice_seconds = time.perf_counter() - start
    seconds, theirs = _theirs(model, batches, theta, d1, d2, n)
    rows = [f"VGG-A+BN width {width:g}, {n}x{n} slice on {samples:,} images "
            f"(torch threads {torch.get_num_threads()})", "",
            "| what | seconds | / floor |", "|---|---|---|",
            f"| floor: {n * n} forward passes timed alone | {floor:.1f} | 1.00 |",
            f"| landscape slice (sequential points) | {slice_seconds:.1f} | "
            f"{slice_seconds / floor:.2f} |"]
    if theirs is None:
        rows.append("| loss-landscapes planar_interpolation | not installed | - |")
    else:
        gap = float(np.max(np.abs(theirs - ours) / np.abs(ours)))
        rows.append(f"| loss-landscapes planar_interpolation | {seconds:.1f} | "
                    f"{seconds / floor:.2f} |")
        rows += ["", f"largest relative difference of the values: {gap:.2g}"]
    return rows
