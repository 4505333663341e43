"""Shared by the GPU timing scripts here: milliseconds per call, after the warm-up."""

import time

import torch

from landscape.train.streams import WARMUP


def ms_per_call(fn, n: int) -> float:
    """Mean milliseconds of ``fn`` over ``n`` calls, the GPU drained before and after."""
    # Untimed calls first: a CapturedStep runs WARMUP eager steps, then records its graph.
    for _ in range(WARMUP + 2):
        fn()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / n * 1e3
