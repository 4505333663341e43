"""A Ray sweep's scale (issues 18 and 24): 2 workers against 1, and what one driver keeps up with.

Run through ``python benchmarks/bench.py --suite ray``. Three measurements:

1. The same light sweep locally (one thread), on a local Ray instance with 1 CPU (one worker at
   a time) and with 2 CPUs (two workers), each task one CPU and one torch thread.
2. The driver's cost per received message: a Ray generator task yields messages as fast as it
   can (progress messages, what a unit sends most: at most twice a second); the driver's
   receive loop (``ray.wait``, ``next``, ``ray.get``) per message.
3. The driver's one write: linking runs the workers started into the index
   (``SweepStore.add_runs``), at 1,000 runs. Rows never reach the driver (each worker writes
   its runs' files), so no per-row cost is left on it.

From 2 and 3: the runs one driver sustains at once and the run-steps per second it passes
(not bounded by rows), against 64 GPUs x 550 run-steps/s.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from landscape.data import ImageData, load_cifar10_mini
from landscape.store import RunWriter, SweepStore, runs_dir
from landscape.train import RayOptions, SweepConfig, run_sweep, run_sweep_ray
from landscape.train.distributed import import_ray

H100_RUN_STEPS = 550  # per GPU, the paper's VGG-A grid (benchmarks/RESULTS.md)
GPUS = 64


def sweep_seconds(data: ImageData, ray_cpus: int | None) -> float:
    """The light sweep: locally (None), or on a fresh local Ray instance with ``ray_cpus``."""
    config = SweepConfig(models=("vgg_a", "vgg_a_bn"), lrs=(0.05, 0.1), steps=120,
                         probe_every=40, batch_size=32, dataset="cifar10-mini", width=0.25,
                         device="cpu")
    with tempfile.TemporaryDirectory() as folder:
        if ray_cpus is None:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            started = time.perf_counter()
            run_sweep(config, Path(folder) / "s.h5", data=data)
            torch.set_num_threads(threads)
            return time.perf_counter() - started
        ray = import_ray()
        ray.init(num_cpus=ray_cpus, include_dashboard=False, logging_level="WARNING")
        try:
            started = time.perf_counter()
            run_sweep_ray(config, Path(folder) / "s.h5", RayOptions(), data=data)
            return time.perf_counter() - started
        finally:
            ray.shutdown()


def receive_seconds(messages: int) -> float:
    """The driver's receive loop per message, for progress messages from two generator tasks
    that ran ahead (the driver is what is measured)."""
    ray = import_ray()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")

    def produce(n):
        for step in range(n):
            yield [("progress", SimpleNamespace(step=step, loss=1.0))]

    try:
        task = ray.remote(produce).options(num_cpus=1, max_retries=0)
        gens = {task.remote(messages // 2): None for _ in range(2)}
        time.sleep(3.0)
        started, received = time.perf_counter(), 0
        while gens:
            ready, _ = ray.wait(list(gens), num_returns=1, timeout=5.0)
            for gen in ready:
                try:
                    ray.get(next(gen))
                    received += 1
                except StopIteration:
                    del gens[gen]
        return (time.perf_counter() - started) / received
    finally:
        ray.shutdown()


def link_seconds(runs: int, per_write: int) -> float:
    """Seconds of one index write linking ``per_write`` runs, the index growing to ``runs``
    (workers made the run files: ``RunWriter``, as a worker does)."""
    with tempfile.TemporaryDirectory() as folder:
        store = SweepStore(Path(folder) / "s.h5", config={}, command="ray_bench")
        writer = RunWriter(runs_dir(store.path))
        names = [f"run{r:04d}" for r in range(runs)]
        for name in names:
            log = writer.run(name, np.array([0.05, 0.1, 0.2, 0.4]), model="vgg_a_bn", lr=0.1)
            log.set_attrs(status="completed")
            writer.flush(log)
        seconds = []
        for start in range(0, runs, per_write):
            started = time.perf_counter()
            store.add_runs(*names[start:start + per_write])
            seconds.append(time.perf_counter() - started)
        return float(np.median(seconds[-max(1, len(seconds) // 10):]))  # the largest index


def ray_tables(quick: bool = False) -> list[list[str]]:
    load = os.getloadavg()[0]
    full = load_cifar10_mini()
    data = ImageData(full.name, full.x_train[:1024], full.y_train[:1024], full.x_test[:256],
                     full.y_test[:256], full.mean, full.std)
    local, one, two = (sweep_seconds(data, cpus) for cpus in (None, 1, 2))
    scale = [f"light sweep (2 models x 2 LRs x 120 steps, width 0.25, batch 32; load average "
             f"{load:.1f} on {os.cpu_count()} cores at the start)", "",
             "| where | seconds | against 1 Ray worker |", "|---|---|---|",
             f"| local, 1 thread | {local:.1f} | {local / one:.2f} |",
             f"| Ray, 1 worker (1 CPU) | {one:.1f} | 1.00 |",
             f"| Ray, 2 workers (2 CPUs) | {two:.1f} | {two / one:.2f} |"]
    per_progress = receive_seconds(200 if quick else 2000)
    link = link_seconds(1000, 10)
    runs = 1000  # concurrent runs, a unit each (the worst case: no grouping)
    progress_share = 2 * runs * per_progress  # each unit reports at most twice a second
    driver = ["driver at 1,000 concurrent runs (rows do not reach it: each worker writes its "
              "runs' files)", "",
              f"receive (ray.wait + next + ray.get) per progress message: "
              f"{per_progress * 1e3:.3f} ms; {2 * runs:,} messages/s (2 a unit): "
              f"{progress_share:.0%} of one core",
              f"link runs into the index at {runs:,} runs, 10 a write (the most a second): "
              f"{link * 1e3:.1f} ms a write",
              f"runs one driver sustains at once, progress alone filling a core: "
              f"{1 / (2 * per_progress):,.0f}; run-steps/s through the driver: not bounded by "
              f"rows ({GPUS} H100s x {H100_RUN_STEPS} = {GPUS * H100_RUN_STEPS:,} run-steps/s "
              f"write their own files)"]
    return [scale, driver]
