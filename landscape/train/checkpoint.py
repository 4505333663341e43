"""Checkpoints: a trainer and the loop's position, saved so that training goes on bit-identically.

A checkpoint holds everything the next step depends on, taken between two steps right after
the sweep file was flushed:

- the trainer's ``state_dict()`` (``SequentialRun``, ``GridRuns``, ``StreamRuns``): weights,
  buffers (BatchNorm's statistics, the noise layers' draw counters, from which their
  generators are seeded), optimizer state, the per-step statistics' previous gradient, the
  probes' and instruments' schedules and warm starts;
- every torch generator: the CPU's and each CUDA device's; the batch order and augmentation
  generators are in the stream's state;
- the ``LoopPosition``: steps taken, the epoch under way and how far it is (its running loss
  and accuracy sums), each run's status;
- ``rows``: how many rows each group of each run had in the sweep file when it was saved. Rows
  written later are cut on resume (``SweepStore.truncate``), so no step appears twice.

Use from Python (the CLI's ``--resume`` is built on these)::

    save_checkpoint(path, trainer, position, rows)   # atomic: a temporary file, then rename
    checkpoint = load_checkpoint(path, device)
    position = restore(trainer, checkpoint)           # a trainer built as the saved one was

``loop.train_runs(..., listeners=[..., Checkpointing(path, every)], start=checkpoint)`` saves
them as it trains and continues from one.
"""

from __future__ import annotations

import io
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
import torch

from ..errors import LandscapeError, os_reason
from ..store import replace_atomically
from .events import LoopListener

FORMAT = 1
SUFFIX = ".pt"


@dataclass
class LoopPosition:
    """Where ``loop.train_runs`` stands between two steps (what a checkpoint holds of it)."""

    step: int = 0  # steps taken
    epoch: int = 0  # the epoch under way (or, at its start, the next one)
    epoch_first_step: int = 0  # the step that epoch began with
    seen: int = 0  # training samples of this epoch so far
    loss_sum: torch.Tensor | None = None  # (K,) float64: sum of the epoch's minibatch losses x size
    correct: torch.Tensor | None = None  # (K,) int64: correct predictions of the epoch so far
    stream: dict = field(default_factory=dict)  # the batch stream's state_dict()
    runs: list[dict] = field(default_factory=list)  # per run: status, steps, alive, ...
    seconds: float = 0.0  # training time spent before


@dataclass
class Checkpoint:
    """A loaded checkpoint: which runs, their file rows, the loop position, the states."""

    path: Path
    runs: list[str]  # run names, in the trainer's order
    rows: dict[str, dict[str, int]]  # run -> group -> rows in the sweep file
    position: LoopPosition
    trainer: dict
    rng: dict


def rng_states() -> dict:
    """torch's generators: the CPU's and, where CUDA is in use, every device's."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["cpu"])
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(path: str | os.PathLike, trainer, position: LoopPosition,
                    rows: dict[str, dict[str, int]], runs: list[str]) -> None:
    """Save ``trainer`` (its ``state_dict()``), ``position``, torch's generators and the file's
    row counts to ``path``, atomically: a temporary file beside it, then a rename, so a kill at
    any instant leaves the previous checkpoint or this one. ``LandscapeError`` when it cannot
    be written (the previous checkpoint stays)."""
    path = Path(path)
    state = {"format": FORMAT, "runs": list(runs), "rows": rows, "position": asdict(position),
             "trainer": trainer.state_dict(), "rng": rng_states()}

    # Serialized in memory, written by Python: a failed write is an OSError with its errno
    # (torch's own file writer reports ENOSPC as an "unexpected pos" RuntimeError).
    serialized = io.BytesIO()
    torch.save(state, serialized)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(serialized.getbuffer())

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_atomically(path, write, copy=False)
    except OSError as error:
        raise LandscapeError(f"cannot write checkpoint {path}: {os_reason(error)}; the sweep "
                             "file keeps every row it had") from None


def load_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu") -> Checkpoint:
    """Read a checkpoint saved by ``save_checkpoint`` (tensors onto ``device``)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except (OSError, RuntimeError, EOFError) as error:
        raise LandscapeError(f"cannot read checkpoint {path}: "
                             f"{str(error).splitlines()[0] if str(error) else error}") from None
    if state.get("format") != FORMAT:
        raise LandscapeError(f"{path}: checkpoint format {state.get('format')!r}, expected {FORMAT}")
    state["rng"]["cpu"] = state["rng"]["cpu"].cpu()  # generator states are CPU byte tensors
    if state["rng"].get("cuda") is not None:
        state["rng"]["cuda"] = [s.cpu() for s in state["rng"]["cuda"]]
    position = state["position"]
    position["stream"] = {k: v.cpu() if isinstance(v, torch.Tensor) and k != "position" else v
                          for k, v in position["stream"].items()}
    return Checkpoint(path, list(state["runs"]), state["rows"], LoopPosition(**position),
                      state["trainer"], state["rng"])


def restore(trainer, checkpoint: Checkpoint) -> LoopPosition:
    """Put torch's generators and ``trainer`` back as they were saved; the loop position.

    The generators first: a probe reads them when its state is loaded (``reuse_grad``)."""
    set_rng_states(checkpoint.rng)
    trainer.load_state_dict(checkpoint.trainer)
    return checkpoint.position


@dataclass
class Checkpointing(LoopListener):
    """Saves the checkpoint of a loop's runs at ``path``: every ``every`` steps (None: at the
    end of every epoch but the last), and when a stop is asked for (SIGINT, SIGTERM); each
    after the rows it refers to are in the file. ``keep``: leave the last one when the runs
    complete (it is removed otherwise). A listener of ``loop.TrainingLoop``."""

    path: Path
    every: int | None = None
    keep: bool = False

    def due_after_step(self, step: int, total_steps: int) -> bool:
        return self.every is not None and step % self.every == 0 and step < total_steps

    def due_after_epoch(self, last: bool) -> bool:
        return self.every is None and not last

    def on_step(self, loop) -> None:
        if loop.stop_asked() or self.due_after_step(loop.step, loop.total_steps):
            self.save(loop)

    def on_epoch_end(self, loop, last: bool) -> None:
        if loop.stop_asked() or self.due_after_epoch(last):
            self.save(loop)

    def save(self, loop) -> None:
        """The rows to the file, then the checkpoint that refers to them; announced."""
        loop.rows_due()
        save_checkpoint(self.path, loop.trainer, loop.position(),
                        {run.log.name: run.log.rows_in_file for run in loop.runs},
                        [run.log.name for run in loop.runs])
        loop.emit("on_checkpoint_saved", self.path)

    def on_runs_end(self, loop, error: BaseException | None) -> None:
        """The runs are complete and in the file: their checkpoint is no longer needed."""
        if error is None and not self.keep:
            self.path.unlink(missing_ok=True)


def checkpoint_dir(sweep_path: str | os.PathLike) -> Path:
    """Where a sweep file's checkpoints live: ``FILE.checkpoints/`` beside it."""
    return Path(f"{sweep_path}.checkpoints")


def checkpoint_path(sweep_path: str | os.PathLike, runs: list[str]) -> Path:
    """One checkpoint per trainer: named after its first run (``+N``: N more runs with it)."""
    more = f"+{len(runs) - 1}" if len(runs) > 1 else ""
    return checkpoint_dir(sweep_path) / f"{runs[0]}{more}{SUFFIX}"


def checkpoint_header(path: str | os.PathLike) -> tuple[list[str], dict[str, dict[str, int]]]:
    """A checkpoint's runs and file row counts, read without loading its tensors (mmap)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return list(state["runs"]), state["rows"]
    except (OSError, RuntimeError, EOFError, KeyError) as error:
        raise LandscapeError(f"cannot read checkpoint {path}: "
                             f"{str(error).splitlines()[0] if str(error) else error}") from None


def find_checkpoints(sweep_path: str | os.PathLike) -> dict[str, Path]:
    """Run name -> the checkpoint holding it, for every checkpoint beside a sweep file (call
    with the sweep's lock held: temporary files of a killed writer are removed)."""
    folder = checkpoint_dir(sweep_path)
    found: dict[str, Path] = {}
    if not folder.is_dir():
        return found
    for tmp in folder.glob(f".*{SUFFIX}.tmp-*"):  # a killed writer's: never a checkpoint
        tmp.unlink(missing_ok=True)
    for path in sorted(folder.glob(f"*{SUFFIX}")):
        found.update({name: path for name in checkpoint_header(path)[0]})
    return found
