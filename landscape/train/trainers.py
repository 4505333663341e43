"""A group's trainer, and what only the device can tell of a group: whether it fits.

``build_trainer(group, data, context)`` builds the ``protocol.Trainer`` of the group's mode
(``TRAINERS``). ``fit(group, data, context)`` runs where the group trains, before it trains:
a grid (batched or streams) that does not fit in the device's memory is split until each part
does, and a batched grid whose model vmap cannot run becomes sequential runs.
"""

from __future__ import annotations

import torch

from ..errors import LandscapeError
from ..models import is_stochastic, random_modules
from .batched import GridRuns, supports_batched
from .device import free_memory, out_of_memory
from .plan import Group
from .protocol import Trainer, TrainerContext
from .sequential import SequentialRun
from .streams import WARMUP, StreamRuns

TRAINERS = {"sequential": SequentialRun, "batched": GridRuns, "streams": StreamRuns}


def build_trainer(group: Group, data, context: TrainerContext) -> Trainer:
    """The trainer of ``group``'s runs, in its mode."""
    return TRAINERS[group.mode](group, data, context)


def fit(group: Group, data, context: TrainerContext) -> list[Group]:
    """``group`` as the groups that train on ``context.device``: itself, or its runs split.

    A sequential run, and a group continuing a checkpoint (built as it was saved), train as
    they are. A grid's model is built to check what only it can tell: that it draws no random
    numbers (on the meta device: its registration said so, ``LandscapeError`` otherwise) and,
    for a batched grid, that vmap runs it (on the device: else its runs train one by one). Then a trial group of all K runs
    takes the first training steps on a real batch; out of memory, it is halved and tried
    again, down to single runs. Trial groups are thrown away: training starts afresh.
    """
    if group.mode == "sequential" or group.checkpoint is not None:
        return [group]
    _check_draws_nothing(group, data)
    if group.mode == "batched":
        model = group.cell.model(group.model, data).to(context.device)
        if not supports_batched(model, data.normalize(data.x_train[:2])):
            return group.split(1)
        del model
    return group.split(_largest_fitting(group, data, context))


def _check_draws_nothing(group: Group, data) -> None:
    """A grid holds no random draws: ``LandscapeError`` for a model whose registration says
    it draws none while its modules do (``models.draws_random`` read the registration)."""
    with torch.device("meta"):
        model = group.cell.model(group.model, data)
    if is_stochastic(model):
        kinds = sorted({type(m).__name__ for m in random_modules(model)})
        raise LandscapeError(f"model {group.model!r} draws random numbers ({', '.join(kinds)}) "
                             "but is registered with random=False: register it with "
                             "ModelSpec(..., random=True) so that its runs train one by one")


def _largest_fitting(group: Group, data, context: TrainerContext) -> int:
    """The most runs of ``group`` that train together in the device's memory (1 if none)."""
    smallest = 1 if group.mode == "streams" else 2  # a batched grid of one is a sequential run
    size = len(group.runs)
    while size >= smallest:
        if _fits(group.split(size)[0], data, context):
            return size
        if size == smallest:
            break
        size = (size + 1) // 2 if size > 2 else 1
    return 1


def _fits(group: Group, data, context: TrainerContext) -> bool:
    """Whether the first steps of ``group`` (with a probe; for streams, up to the recorded
    graph) run without running out of memory."""
    try:
        _trial_steps(group, data, context)
        fits = True
    except Exception as error:  # noqa: BLE001 - anything but running out of memory re-raises
        if not out_of_memory(error):
            raise
        fits = False
    # Here, outside the except block: the traceback no longer holds the trial's tensors.
    free_memory(context.device)
    return fits


def _trial_steps(group: Group, data, context: TrainerContext) -> None:
    trial = TrainerContext(context.device, context.autocast)  # its records go nowhere
    trainer = build_trainer(group, data, trial)
    cell = group.cell
    batches = trainer.task.stream(cell.batch_size, cell.seed, cell.augment).epoch()
    steps = WARMUP + 1 if group.mode == "streams" else 1
    for step, (x, y) in zip(range(steps), batches):
        trainer.step(x, y, step)
