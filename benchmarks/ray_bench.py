"""A Ray sweep's scale (issue 18): 2 workers against 1, and what one driver can keep up with.

Run through ``python benchmarks/bench.py --suite ray``. Three measurements:

1. The same light sweep locally (one thread), on a local Ray instance with 1 CPU (one worker at
   a time) and with 2 CPUs (two workers), each task one CPU and one torch thread.
2. The driver's cost per received message: a Ray generator task yields real row blocks (one
   run's epoch of the paper's VGG-A+BN grid: 390 steps, 4 probes split by layer, 1 epoch row)
   as fast as it can; the driver's receive loop (``ray.wait``, ``next``, ``ray.get``) per block.
3. The driver's cost to replay a block (``RunLog.absorb``) and to flush: ``SweepStore.flush``
   of 1, 10 or 64 runs' blocks at once (the driver flushes every run it touched in one go).

From 2 and 3: the run-steps per second one driver sustains, against 64 GPUs x 550 run-steps/s.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from landscape.data import ImageData, load_cifar10_mini
from landscape.models import build_model
from landscape.store import RunLog, SweepStore
from landscape.train import RayOptions, SweepConfig, run_sweep, run_sweep_ray
from landscape.train.distributed import import_ray

STEPS_PER_EPOCH = 390  # CIFAR-10, batch 128
PROBES_PER_EPOCH = 4  # --probe-every 100
ETAS = 4
H100_RUN_STEPS = 550  # per GPU, the paper's VGG-A grid (benchmarks/RESULTS.md)
GPUS = 64


def paper_block(name: str, layers: int, epoch: int) -> dict:
    """One run's epoch of rows as a worker hands them over (``RunLog.take_pending``)."""
    log = RunLog(name, np.array([0.05, 0.1, 0.2, 0.4]))
    log.set_attrs(status="running", model="vgg_a_bn", lr=0.1, seed=0)
    steps = np.arange(epoch * STEPS_PER_EPOCH, (epoch + 1) * STEPS_PER_EPOCH)
    rng = np.random.default_rng(epoch)
    log.add_steps(step=steps, epoch=np.full(len(steps), epoch), loss=rng.random(len(steps)),
                  grad_norm=rng.random(len(steps)), grad_diff=rng.random(len(steps)),
                  beta_consecutive=rng.random(len(steps)))
    for p in range(PROBES_PER_EPOCH):
        log.add_probe(SimpleNamespace(
            step=int(steps[p * 100]), eta=log.eta, loss=rng.random(ETAS),
            grad_diff=rng.random(ETAS), beta=1.0, grad_norm=1.0, loss_at_theta=1.0,
            layer=tuple(f"m{i}" for i in range(layers)),
            grad_diff_layer=rng.random((ETAS, layers)), grad_norm_layer=rng.random(layers)))
    log.add_epoch(epoch=epoch, steps=STEPS_PER_EPOCH, train_loss=1.0, train_acc=0.5,
                  test_loss=1.0, test_acc=0.5, seconds=10.0)
    log.set_attrs(steps_completed=int(steps[-1]) + 1)
    return log.take_pending()


def paper_layers() -> int:
    """Modules owning parameters in VGG-A+BN: the probe's split by layer."""
    model = build_model("vgg_a_bn")
    return sum(1 for m in model.modules() if any(True for _ in m.parameters(recurse=False)))


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


def receive_seconds(block: dict, messages: int) -> tuple[float, float]:
    """The driver's receive loop per message: blocks of one run, and small progress messages."""
    ray = import_ray()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")

    def produce(payload, n):
        for _ in range(n):
            yield [("rows", [payload])]

    try:
        task = ray.remote(produce).options(num_cpus=1, max_retries=0)
        results = []
        for payload in (block, ("progress", SimpleNamespace(step=1, loss=1.0))):
            gens = {task.remote(payload, messages // 2): None for _ in range(2)}
            time.sleep(3.0)  # let the producers run ahead: the driver is what is measured
            started, received = time.perf_counter(), 0
            while gens:
                ready, _ = ray.wait(list(gens), num_returns=1, timeout=5.0)
                for gen in ready:
                    try:
                        ray.get(next(gen))
                        received += 1
                    except StopIteration:
                        del gens[gen]
            results.append((time.perf_counter() - started) / received)
        return results[0], results[1]
    finally:
        ray.shutdown()


def replay_seconds(layers: int, runs: int, epochs: int,
                   per_flush: int = 1) -> tuple[float, float, float]:
    """Per block: ``absorb``; per flush of ``runs`` runs' blocks (``per_flush`` epochs each, as
    when the driver falls behind): ``SweepStore.flush``; wall time, and this process's CPU time
    per run-epoch (what it would take on a core of its own)."""
    blocks = [[pickle.loads(pickle.dumps(paper_block(f"run{r}", layers, e + i)))
               for i in range(per_flush) for r in range(runs)]
              for e in range(0, epochs * per_flush, per_flush)]
    with tempfile.TemporaryDirectory() as folder:
        store = SweepStore(Path(folder) / "s.h5", config={}, command="ray_bench")
        logs = [store.run(f"run{r}", np.array([0.05, 0.1, 0.2, 0.4])) for r in range(runs)]
        absorb = flush = cpu = 0.0
        for epoch in blocks:
            started, cpu_started = time.perf_counter(), time.process_time()
            for i, block in enumerate(epoch):
                logs[i % runs].absorb(block)
            absorb += time.perf_counter() - started
            started = time.perf_counter()
            store.flush(*logs)
            flush += time.perf_counter() - started
            cpu += time.process_time() - cpu_started
    return absorb / (runs * epochs * per_flush), flush / epochs, cpu / (runs * epochs * per_flush)


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
    layers = paper_layers()
    block = paper_block("run0", layers, 0)
    size = len(pickle.dumps(block))
    per_block, per_progress = receive_seconds(block, 100 if quick else 400)
    rows = ["| runs per flush | epochs per run and flush | absorb per block (ms) | flush (ms) | "
            "flush per run (ms) | absorb + flush per run-epoch, CPU time (ms) |",
            "|---|---|---|---|---|---|"]
    costs = {}
    for runs, per_flush in ((1, 1), (10, 1), (64, 1), (64, 4)):
        absorb, flush, cpu = replay_seconds(layers, runs, 3 if quick else 10, per_flush)
        costs[runs, per_flush] = (absorb + flush / runs / per_flush, cpu)
        rows.append(f"| {runs} | {per_flush} | {absorb * 1e3:.2f} | {flush * 1e3:.1f} | "
                    f"{flush / runs * 1e3:.2f} | {cpu * 1e3:.2f} |")
    progress_rate = 2 * GPUS  # a worker reports at most twice a second
    busy_progress = progress_rate * per_progress
    need = GPUS * H100_RUN_STEPS
    driver = [f"driver (a block: one run's epoch, {STEPS_PER_EPOCH} steps, {PROBES_PER_EPOCH} "
              f"probes x {ETAS} etas x {layers} layers, {size / 1024:.0f} KiB pickled)", "",
              f"receive (ray.wait + next + ray.get) per block: {per_block * 1e3:.2f} ms; per "
              f"progress message: {per_progress * 1e3:.2f} ms", ""] + rows + [""]
    for what, replay in (("wall time here", costs[64, 1][0]), ("CPU time", costs[64, 1][1])):
        per_run_epoch = per_block + replay
        capacity = (1 - busy_progress) * STEPS_PER_EPOCH / per_run_epoch
        driver.append(f"one driver, {what}: {per_run_epoch * 1e3:.2f} ms per run-epoch "
                      f"(receive + absorb + its share of a 64-run flush), {busy_progress:.0%} "
                      f"of its time on {progress_rate} progress messages/s -> {capacity:,.0f} "
                      f"run-steps/s at one epoch per flush; {GPUS} H100s at {H100_RUN_STEPS} "
                      f"run-steps/s each need {need:,} ({capacity / need:.2f}x; "
                      f"{capacity / H100_RUN_STEPS:,.0f} GPUs)")
    return [scale, driver]
