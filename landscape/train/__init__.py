"""Train: a sweep's settings, its plan, the trainers, the training loop, and the executors.

``config`` (``SweepConfig``, its validation, and ``SweepConfig.training_mode``: the one rule of
which runs train together), ``experiment`` (TOML experiment files), ``device`` (device,
TF32/bf16, out of memory), ``tasks`` (what a dataset needs of the loop), ``plan`` (``RunSpec``,
``Group``, ``plan_sweep``, ``plan_resume``: the sweep's groups, decided once from the settings),
``instruments`` (the probes a sweep attaches, bound to a run's log), ``protocol`` (the
``Trainer`` protocol) and its three trainers -- ``sequential`` (one eager run, probes as hooks),
``batched`` (the grid as one vmapped model), ``streams`` (CUDA-graph steps on concurrent
streams) -- ``trainers`` (a group's trainer; ``fit``: a group split to fit the device),
``schedules`` (``--lr-schedule``: torch's learning-rate schedulers over a run's optimizer),
``events`` (``LoopListener``: what the loop announces), ``loop`` (``TrainingLoop``,
``train_runs``), ``checkpoint`` (a trainer and the loop position, saved and restored),
``signals`` (SIGINT and SIGTERM stop at a step boundary), ``sweep`` (``execute_sweep``: the one
body of every sweep; ``run_sweep``, its local executor), ``distributed`` (``run_sweep_ray``:
the same sweep as Ray tasks, the same one file), ``recorder`` (``Recorder``: anyone's training
loop into the same file) and ``livelog`` (every recorded scalar, live, as TensorBoard events).
"""

from .batched import BatchedGrid, GridRuns, supports_batched
from .checkpoint import (Checkpoint, Checkpointing, LoopPosition, load_checkpoint, restore,
                         save_checkpoint)
from .config import (AXES, GRID_MODES, MAX_RUNS_UNASKED, OPTIMIZERS, PRECISIONS, SweepConfig,
                     resumed_config)
from .device import out_of_memory, resolve_device, training_precision
from .distributed import RayExecutor, RayOptions, run_sweep_ray
from .events import LoopListener
from .experiment import load_experiment, merge
from .loop import Progress, ReportProgress, RunState, RunSummary, TrainingLoop, WriteRows, \
    train_runs
from .plan import (Group, ResumePlan, RunSpec, plan_resume, plan_sweep, resume_action, run_name,
                   sweep_runs)
from .livelog import LiveLog, LiveRows, TensorBoardLog
from .protocol import Trainer, TrainerContext
from .recorder import Instruments, Recorder
from .schedules import SCHEDULES, Schedule
from .sequential import SequentialRun, build_run, make_optimizer
from .signals import SweepInterrupted, stop_on_signals
from .streams import WARMUP, CapturedProbe, CapturedStep, StreamRuns
from .sweep import (Executor, GroupRunner, LocalExecutor, SweepOptions, check_size,
                    execute_sweep, run_sweep)
from .tasks import ClassificationTask, RegressionTask, dln_loss, evaluate, task_for
from .trainers import TRAINERS, build_trainer, fit

__all__ = ["SweepConfig", "run_sweep", "RunSummary", "Progress", "GRID_MODES", "PRECISIONS",
           "resolve_device", "training_precision", "out_of_memory", "load_experiment", "merge",
           "train_runs", "TrainingLoop", "LoopListener", "WriteRows", "ReportProgress",
           "RunState", "SequentialRun", "build_run", "BatchedGrid", "GridRuns",
           "supports_batched", "WARMUP", "CapturedStep", "CapturedProbe", "StreamRuns",
           "run_name", "ClassificationTask", "RegressionTask", "dln_loss", "evaluate", "task_for",
           "AXES", "MAX_RUNS_UNASKED", "OPTIMIZERS", "check_size", "make_optimizer",
           "Checkpoint", "Checkpointing", "LoopPosition", "load_checkpoint", "restore",
           "save_checkpoint", "resumed_config", "SweepInterrupted", "stop_on_signals",
           "RunSpec", "Group", "plan_sweep", "sweep_runs", "ResumePlan", "plan_resume",
           "resume_action", "Trainer", "TrainerContext", "TRAINERS", "build_trainer", "fit",
           "Executor", "LocalExecutor", "GroupRunner", "SweepOptions", "execute_sweep",
           "RayExecutor", "RayOptions", "run_sweep_ray", "SCHEDULES", "Schedule", "Recorder",
           "Instruments", "LiveLog", "LiveRows", "TensorBoardLog"]
