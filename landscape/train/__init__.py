"""Train: a sweep's settings, the training loop, and the ways a learning-rate grid runs.

``config`` (``SweepConfig`` and its validation), ``experiment`` (TOML experiment files),
``device`` (device, TF32/bf16, out of memory), ``tasks`` (what a dataset needs of the loop),
``instruments`` (the probes a sweep attaches, bound to a run's log), the three trainers --
``sequential`` (one eager run, probes as hooks), ``batched`` (the grid as one vmapped model),
``streams`` (CUDA-graph steps on concurrent streams) -- ``loop`` (``train_runs``),
``checkpoint`` (a trainer and the loop position, saved and restored), ``signals`` (SIGINT and
SIGTERM stop at a step boundary), ``sweep`` (``run_sweep``: every model at every learning
rate and every value of the axes ``AXES``, one HDF5 file; ``resume=True`` continues one) and
``distributed`` (``run_sweep_ray``: the same sweep as Ray tasks, the same one file).
"""

from .batched import BatchedGrid, GridRuns, supports_batched
from .checkpoint import (Checkpoint, Checkpointing, LoopPosition, load_checkpoint, restore,
                         save_checkpoint)
from .config import (AXES, GRID_MODES, MAX_RUNS_UNASKED, OPTIMIZERS, PRECISIONS, SweepConfig,
                     resumed_config)
from .distributed import RayOptions, run_sweep_ray, sweep_units
from .device import out_of_memory, resolve_device, training_precision
from .experiment import load_experiment, merge
from .loop import Progress, RunSummary, train_runs
from .sequential import SequentialRun, build_run, make_optimizer
from .streams import WARMUP, CapturedProbe, CapturedStep, StreamRuns, supports_graphs
from .signals import SweepInterrupted, stop_on_signals
from .sweep import (cell_run_name, check_size, grid_chunks, grid_mode, plan_resume, resume_action,
                    run_name, run_sweep, train_group)
from .tasks import ClassificationTask, RegressionTask, dln_loss, evaluate, task_for

__all__ = ["SweepConfig", "run_sweep", "RunSummary", "Progress", "GRID_MODES", "PRECISIONS",
           "resolve_device", "training_precision", "out_of_memory", "load_experiment", "merge",
           "train_runs", "SequentialRun", "build_run", "BatchedGrid", "GridRuns",
           "supports_batched", "WARMUP", "CapturedStep", "CapturedProbe", "StreamRuns",
           "supports_graphs", "grid_chunks", "grid_mode", "run_name", "ClassificationTask",
           "RegressionTask", "dln_loss", "evaluate", "task_for", "AXES", "MAX_RUNS_UNASKED",
           "OPTIMIZERS", "check_size", "make_optimizer",
           "Checkpoint", "Checkpointing",
           "LoopPosition", "load_checkpoint", "restore", "save_checkpoint", "resumed_config",
           "SweepInterrupted", "stop_on_signals", "plan_resume", "resume_action", "cell_run_name",
           "train_group", "RayOptions", "run_sweep_ray", "sweep_units"]
