"""The paper's Fig. 4 grid end to end on one GPU: 2 models x 5 learning rates x 20 epochs.

    python benchmarks/fig4_grid.py [--precision tf32|bf16] [--epochs 20] [--no-probe]

Full CIFAR-10 cannot be downloaded on the GPU machines, so the real cifar10-mini images are
tiled to CIFAR-10's sizes (50,000 training images: 390 steps of 128 an epoch; 10,000 test
images evaluated after every epoch). Every step, probe (every 100 steps, 4 eta points), test
evaluation and HDF5 write of ``landscape run`` happens: the timed call is ``run_sweep``, the
function behind the CLI, with the dataset already on the GPU. 2 x 5 x 20 x 390 = 78,000
run-steps, 780 probes.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from landscape import train
from landscape.data import ImageData, load_cifar10_mini
from landscape.train.streams import StreamRuns
from landscape.store import SweepStore
from landscape.train import SweepConfig, run_sweep

LRS = (0.05, 0.075, 0.1, 0.125, 0.15)  # the experiment file's range, 5 points


def tiled(data: ImageData, n_train: int, n_test: int) -> ImageData:
    """``data``'s images repeated up to CIFAR-10's sizes (the normalization stays the same)."""
    def repeat(t: torch.Tensor, n: int) -> torch.Tensor:
        return t.repeat(-(-n // len(t)), *([1] * (t.ndim - 1)))[:n].contiguous()

    return ImageData(f"{data.name} tiled", repeat(data.x_train, n_train), repeat(data.y_train, n_train),
                     repeat(data.x_test, n_test), repeat(data.y_test, n_test), data.mean, data.std)


def time_phases() -> dict[str, float]:
    """Wall seconds spent in the sweep's phases (the GPU drained at each phase's edges).

    The wrapped functions are the sweep's own; what is left of the total is the training loop
    proper: steps and probes, which run asynchronously and are not told apart here.
    """
    phases: dict[str, float] = {}
    running: list[str] = []  # a phase inside another (the trial builds runs) counts once

    def wrap(owner, name: str, label: str) -> None:
        inner = getattr(owner, name)

        def timed(*args, **kwargs):
            if running:
                return inner(*args, **kwargs)
            running.append(label)
            torch.cuda.synchronize()
            started = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                torch.cuda.synchronize()
                phases[label] = phases.get(label, 0.0) + time.perf_counter() - started
                running.pop()

        setattr(owner, name, timed)

    wrap(train, "grid_chunks", "memory trial (grid_chunks)")
    wrap(train, "_make_trainer", "building the runs")
    wrap(StreamRuns, "evaluate", "test evaluations")
    wrap(SweepStore, "flush", "HDF5 flushes")
    return phases


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="tf32", choices=["fp32", "tf32", "bf16"])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--no-probe", action="store_true")
    args = parser.parse_args()
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    device = torch.device("cuda")
    data = tiled(load_cifar10_mini(), 50_000, 10_000).to(device)
    config = SweepConfig(models=("vgg_a", "vgg_a_bn"), lrs=LRS, epochs=args.epochs,
                         dataset="cifar10", device="cuda", precision=args.precision,
                         probe=not args.no_probe, probe_every=100)
    phases = time_phases()
    with tempfile.TemporaryDirectory() as tmp:
        torch.cuda.synchronize()
        started = time.perf_counter()
        summaries = run_sweep(config, os.path.join(tmp, "fig4.h5"), data=data)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        size_mib = os.path.getsize(os.path.join(tmp, "fig4.h5")) / 2**20
    run_steps = sum(s.steps for s in summaries)
    probes = sum(-(-s.steps // 100) for s in summaries) if config.probe else 0
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}; "
          f"precision {args.precision}, "
          f"{'no probes' if args.no_probe else 'probe every 100 (4 eta)'}\n")
    print("| run | status | steps | test acc | median beta | group seconds |")
    print("|---|---|---|---|---|---|")
    for s in summaries:
        print(f"| {s.name} | {s.status} | {s.steps} | {s.final_test_acc:.3f} | {s.median_beta:.3g} | "
              f"{s.seconds:.1f} |")
    print(f"\nFig. 4 grid: {run_steps} run-steps, {probes} probes in {seconds:.1f} s "
          f"({seconds / 60:.2f} min): {run_steps / seconds:.0f} run-steps/s, "
          f"{run_steps * config.batch_size / seconds:.3g} images/s; "
          f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB; "
          f"HDF5 {size_mib:.1f} MiB")
    print("\n| phase | seconds |\n|---|---|")
    for label, phase_seconds in phases.items():
        print(f"| {label} | {phase_seconds:.1f} |")
    print(f"| the rest: training steps, probes, loop | {seconds - sum(phases.values()):.1f} |")


if __name__ == "__main__":
    main()
