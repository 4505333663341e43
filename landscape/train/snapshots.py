"""Weights at chosen steps (``--save-weights-every N``, ``--save-weights-at 0,100,...``).

Each run keeps its parameters and buffers (``module.state_dict()``) at those steps, and at its
first (0, before any update) and last, as safetensors files beside the sweep:
``SWEEP.h5.runs/<run>.weights/step-00000100.safetensors``. Why safetensors: the ecosystem's
no-pickle tensor format (Hugging Face's; a loaded file runs no code, unlike ``torch.load`` of
a pickle), read lazily and by any framework, one small wheel without dependencies. The run's
file names the folder (run attribute ``weights_dir``, relative to the sweep's folder as its
links are) and lists every snapshot in its ``snapshots`` group (``step`` rows), so a reader
never lists a folder. Step s is the weights after s optimizer steps.

Resume: the ``snapshots`` rows are cut with the run's other rows to its checkpoint, and the
files of later steps removed when the run continues; training from a checkpoint is
bit-identical, so the steps after it are saved again with the same bytes. Off by default:
a sweep without it writes nothing of this.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..errors import LandscapeError
from ..store import replace_atomically, runs_dir
from .events import LoopListener
from .tasks import task_for

GROUP = "snapshots"  # the run's group listing its saved steps
ATTRIBUTE = "weights_dir"  # the run attribute naming its folder (relative to the sweep's)
SUFFIX = ".safetensors"


def check_weight_schedule(every, at) -> None:
    """``--save-weights-every`` a positive integer (or None), ``--save-weights-at`` integers >= 0."""
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise LandscapeError(f"--save-weights-every must be a positive integer, got {every!r}")
    if at is not None:
        if isinstance(at, (str, bytes)) or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in at):
            raise LandscapeError(f"--save-weights-at must be a list of steps >= 0, got {at!r}")


@dataclass(frozen=True)
class WeightSchedule:
    """The steps whose weights a run keeps: every ``every``-th, those in ``at``, 0 and the last."""

    every: int | None = None
    at: tuple[int, ...] = ()

    @classmethod
    def of(cls, config) -> "WeightSchedule | None":
        """The schedule a sweep's settings ask for; None when weights are not saved."""
        if config.save_weights_every is None and not config.save_weights_at:
            return None
        return cls(config.save_weights_every, tuple(config.save_weights_at or ()))

    def due(self, step: int, total: int) -> bool:
        return step == 0 or step == total or step in self.at or bool(
            self.every and step % self.every == 0)

    def steps(self, total: int) -> list[int]:
        return [s for s in range(total + 1) if self.due(s, total)]


def weights_folder(runs_folder: Path, run: str) -> Path:
    """A run's folder of weights, beside its file in the sweep's runs folder."""
    return Path(runs_folder) / f"{run}.weights"


def weights_attribute(runs_folder: Path, run: str) -> str:
    """The run attribute's value: its folder relative to the sweep's folder, as the links."""
    return f"{Path(runs_folder).name}/{run}.weights"


def snapshot_path(folder: Path, step: int) -> Path:
    return folder / f"step-{step:08d}{SUFFIX}"


def save_snapshot(path: Path, module: torch.nn.Module, step: int) -> int:
    """``module``'s parameters and buffers at ``path`` (atomically); the bytes written. One
    metadata entry, the step: safetensors keeps metadata in a hash map, whose order (and so
    the file's bytes) varies between processes when there are several."""
    tensors = {n: t.detach().to("cpu").contiguous().clone() for n, t in module.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(path, lambda tmp: save_file(tensors, str(tmp),
                                                   metadata={"step": str(step)}),
                       copy=False)
    return path.stat().st_size


def load_snapshot(path: str | os.PathLike, device: torch.device | str = "cpu"
                  ) -> dict[str, torch.Tensor]:
    """A snapshot's state dict (``LandscapeError`` when it cannot be read)."""
    try:
        return load_file(str(path), device=str(device))
    except Exception as error:  # noqa: BLE001 - OSError, or safetensors' own SafetensorError
        raise LandscapeError(f"cannot read weights {path}: {error}") from None


def snapshot_bytes(module: torch.nn.Module) -> int:
    """The bytes of one snapshot's tensors (the file adds a small JSON header)."""
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


class SavingWeights(LoopListener):
    """Saves each live run's weights at the schedule's steps into ``folder(run)`` and lists
    them in the run's ``snapshots`` group. A listener of ``loop.TrainingLoop``; before
    ``WriteRows`` flushes, so the rows and the files go to disk together."""

    def __init__(self, schedule: WeightSchedule, folder):
        self.schedule, self.folder = schedule, folder  # folder: run name -> Path
        self.started = False

    def on_rows_due(self, loop) -> None:
        if self.started:
            return
        self.started = True  # the first event: the loop's start (or its resume point)
        for run in loop.runs:
            if not run.done:  # a resumed run's file has the group: its rows continue it
                run.log.declare(GROUP, {"step": (np.int64, ())})
                self._drop_after(run.log.name, loop.step)
        if loop.step == 0:
            self._save(loop)

    def on_step(self, loop) -> None:
        if self.schedule.due(loop.step, loop.total_steps):
            self._save(loop)

    def _save(self, loop) -> None:
        for k, run in enumerate(loop.runs):
            if loop.alive[k]:
                folder = self.folder(run.log.name)
                save_snapshot(snapshot_path(folder, loop.step), loop.trainer.module(k),
                              loop.step)
                run.log.append(GROUP, step=loop.step)

    def _drop_after(self, run: str, step: int) -> None:
        """Files of steps after ``step`` (a killed run's, past its checkpoint): removed, as
        the file's rows of them were cut; training saves them again."""
        folder = self.folder(run)
        for path in folder.glob(f"step-*{SUFFIX}") if folder.is_dir() else ():
            if int(path.stem.split("-")[1]) > step:
                path.unlink()


def saved_steps(folder: Path) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in folder.glob(f"step-*{SUFFIX}"))


def describe_plan(config, data, sweep: str) -> str:
    """One line: the snapshots per run, their size and the total, and where they go."""
    schedule, sizes, total_bytes, counts = WeightSchedule.of(config), {}, 0, set()
    for cell in config.cells():
        steps_per_epoch = task_for(data).stream(cell.batch_size, 0, cell.augment).steps_per_epoch
        count = len(schedule.steps(cell.total_steps(steps_per_epoch)))
        counts.add(count)
        for name in cell.models:
            if name not in sizes:
                sizes[name] = snapshot_bytes(cell.model(name, data))
            total_bytes += sizes[name] * count * len(cell.lrs)
    each = ", ".join(f"{name} {size / 1e6:.3g} MB" for name, size in sizes.items())
    per_run = "-".join(str(c) for c in sorted(counts))
    return (f"saving weights: {per_run} snapshots per run ({each} each) x {config.run_count()} "
            f"runs = {total_bytes / 1e6:.3g} MB in {runs_dir(sweep)}/")
