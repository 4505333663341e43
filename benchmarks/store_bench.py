"""The store's cost (issue 24): a flush against the sweep's size, and the bytes a sweep writes.

Run through ``python benchmarks/bench.py --suite store``. Only the public writer API:
``SweepStore(path, config=...)``, ``store.run(name, eta, **attrs)``, ``log.add_steps``,
``log.add_probe``, ``log.add_epoch``, ``log.set_attrs``, ``store.flush(log)``.

A synthetic run is the paper's length: 15,000 steps (6 columns a step), a probe every 100
steps (4 step sizes, split by 21 layers as VGG-A+BN's), an epoch row every 390 steps. For 10,
100 and 1,000 runs:

1. The sweep written as a local sweep writes it: every run flushed after each epoch (39 flushes
   a run), the runs interleaved as the Ray driver interleaves them. Wall seconds, and the bytes
   handed to ``write`` (``/proc/self/io`` ``wchar``: journals, compactions, the index) against
   the bytes on disk at the end: the write amplification.
2. Then a 10-row flush into a full-size run, 300 times, each to a run drawn at random:
   median, 95th percentile and largest, in ms; and one run's compaction (the largest single
   write a flush can cause: its own file, whatever the sweep's size).
3. For scale, the earlier store's floor at that size: it copied the whole one-file sweep at each
   flush, so one flush cost at least a copy and rename of the packed sweep.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from landscape.store import SweepStore, pack, runs_dir

STEPS = 15_000
STEPS_PER_EPOCH = 390  # CIFAR-10 at batch 128
PROBE_EVERY = 100
ETAS = np.array([0.05, 0.1, 0.2, 0.4])
LAYERS = tuple(f"features.{i}" for i in range(21))  # VGG-A+BN's modules owning parameters
SAMPLES = 300  # 10-row flushes timed at full size
RUN_COUNTS = (10, 100, 1000)


def written_bytes() -> int:
    """Bytes this process has handed to write() so far (``wchar``: page cache included)."""
    with open("/proc/self/io") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("wchar:"))


def disk_bytes(sweep: Path) -> int:
    return sweep.stat().st_size + sum(p.stat().st_size for p in runs_dir(sweep).iterdir())


def add_rows(log, start: int, stop: int, rng: np.random.Generator) -> None:
    """Steps ``start`` to ``stop`` of a run: step rows, probes, the epochs that end there."""
    steps = np.arange(start, stop)
    log.add_steps(step=steps, epoch=steps // STEPS_PER_EPOCH, loss=rng.random(len(steps)),
                  grad_norm=rng.random(len(steps)), grad_diff=rng.random(len(steps)),
                  beta_consecutive=rng.random(len(steps)))
    for step in steps[steps % PROBE_EVERY == 0]:
        log.add_probe(SimpleNamespace(
            step=int(step), eta=ETAS, loss=rng.random(len(ETAS)), grad_diff=rng.random(len(ETAS)),
            beta=1.0, grad_norm=1.0, loss_at_theta=1.0, layer=LAYERS,
            grad_diff_layer=rng.random((len(ETAS), len(LAYERS))),
            grad_norm_layer=rng.random(len(LAYERS))))
    for epoch in range(start // STEPS_PER_EPOCH, stop // STEPS_PER_EPOCH):
        if (epoch + 1) * STEPS_PER_EPOCH <= stop:
            log.add_epoch(epoch=epoch, steps=STEPS_PER_EPOCH, train_loss=1.0, train_acc=0.5,
                          test_loss=1.0, test_acc=0.5, seconds=10.0)
    log.set_attrs(steps_completed=stop)


def write_sweep(folder: Path, runs: int) -> tuple[SweepStore, list, dict]:
    """The sweep of ``runs`` runs written epoch by epoch (runs interleaved); its figures."""
    rng = np.random.default_rng(runs)
    sweep = folder / "sweep.h5"
    before, started = written_bytes(), time.perf_counter()
    store = SweepStore(sweep, config={"bench": "store"}, command="store_bench")
    logs = [store.run(f"run{r:04d}", ETAS, model="vgg_a_bn", lr=0.1, seed=r) for r in range(runs)]
    bounds = list(range(0, STEPS, STEPS_PER_EPOCH)) + [STEPS]
    for start, stop in zip(bounds, bounds[1:]):
        for log in logs:
            add_rows(log, start, stop, rng)
            store.flush(log)
    seconds = time.perf_counter() - started
    return store, logs, {"seconds": seconds, "written": written_bytes() - before,
                         "disk": disk_bytes(sweep)}


def flush_costs(store: SweepStore, logs: list, runs: int) -> list[float]:
    """Seconds of each of ``SAMPLES`` 10-row flushes, each to a run drawn at random."""
    rng, costs = np.random.default_rng(0), []
    ends = {log.name: STEPS for log in logs}
    for pick in rng.integers(0, runs, SAMPLES):
        log = logs[pick]
        add_rows(log, ends[log.name], ends[log.name] + 10, rng)
        ends[log.name] += 10
        started = time.perf_counter()
        store.flush(log)
        costs.append(time.perf_counter() - started)
    return costs


def compaction_seconds(store: SweepStore, log) -> float:
    """One run's compaction: what a flush that ends a run (or finds its journal grown past
    its file) costs."""
    log.set_attrs(status="completed")
    started = time.perf_counter()
    store.flush(log)
    return time.perf_counter() - started


def copy_seconds(sweep: Path, folder: Path) -> tuple[float, int]:
    """The earlier store's floor for one flush: copy the one-file sweep and rename it over."""
    one = pack(sweep, folder / "one.h5")
    started = time.perf_counter()
    shutil.copyfile(one, folder / "one.copy.h5")
    os.replace(folder / "one.copy.h5", one)
    seconds = time.perf_counter() - started
    size = one.stat().st_size
    one.unlink()
    return seconds, size


def store_tables(run_counts=RUN_COUNTS) -> list[str]:
    rows = ["| runs | sweep on disk | written while training (write amplification) | "
            "seconds to write it | 10-row flush at full size: median / p95 / max (ms) | "
            "one run's compaction (ms) | earlier store's floor: copy of the one-file sweep "
            "(ms) |", "|---|---|---|---|---|---|---|"]
    medians = {}
    for runs in run_counts:
        with tempfile.TemporaryDirectory() as name:
            folder = Path(name)
            store, logs, sweep = write_sweep(folder, runs)
            costs = np.array(flush_costs(store, logs, runs)) * 1e3
            compaction = compaction_seconds(store, logs[0]) * 1e3
            store.close()
            copy, one_file = copy_seconds(folder / "sweep.h5", folder) if runs <= 100 \
                else (float("nan"), 0)
        medians[runs] = statistics.median(costs)
        copied = (f"{copy * 1e3:.0f} ({one_file / 2**20:.0f} MiB)" if one_file
                  else f"not measured (about {sweep['disk'] / 2**20 * 0.9:.0f} at 0.9 ms/MiB)")
        rows.append(f"| {runs:,} | {sweep['disk'] / 2**20:,.0f} MiB | "
                    f"{sweep['written'] / 2**20:,.0f} MiB ({sweep['written'] / sweep['disk']:.2f}x) "
                    f"| {sweep['seconds']:.0f} | {medians[runs]:.2f} / "
                    f"{np.percentile(costs, 95):.2f} / {costs.max():.2f} | {compaction:.0f} | "
                    f"{copied} |")
        print(rows[-1], flush=True)
    first, last = run_counts[0], run_counts[-1]
    return rows + ["", f"median 10-row flush at {last:,} runs / at {first:,} runs: "
                       f"{medians[last] / medians[first]:.2f}"]
