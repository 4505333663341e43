"""Store: one HDF5 file per sweep -- its schema, its writer and its reader.

``write``: ``SweepStore`` / ``RunLog`` buffer rows and append them at each flush to each run's
journal (``runfile``, ``journal``), so the sweep is readable while it runs and a flush costs
what it appends; ``pack``: the sweep as one file. ``read``: ``read_sweep`` copies a file into typed numpy
dataclasses. ``schema``: the field names both agree on, with every field's units, description
and dimensions. ``frames``: the file as tidy pandas tables (``to_frames``, ``landscape
export``). The room needs numpy, h5py and pandas, never torch: the training side writes
through it, the report reads through it.
"""

from .read import (ActivationSeries, CurvatureSeries, EpochSeries, ICSSeries, ProbeSeries, RunData,
                   StepSeries, SweepFile, WeightSeries, read_sweep)
from .read import LayerCurvatureSeries, RankSeries, SpectrumSeries
from .schema import CURVATURE_FIELDS, STATUSES, WEIGHT_FIELDS
from .files import (WRITE_PAUSE_ENV, SweepLock, lock_is_free, lock_path,
                    remove_stale_temporaries, replace_atomically, temporaries, write_pause)
from .layout import run_file, runs_dir
from .pack import pack
from .runlog import RunLog
from .write import RunWriter, SweepStore

__all__ = ["SweepStore", "RunWriter", "RunLog", "read_sweep", "SweepFile", "RunData", "StepSeries",
           "ProbeSeries", "EpochSeries", "ICSSeries", "ActivationSeries", "STATUSES",
           "CurvatureSeries", "WeightSeries", "CURVATURE_FIELDS", "WEIGHT_FIELDS", "SweepLock",
           "replace_atomically", "remove_stale_temporaries", "write_pause", "WRITE_PAUSE_ENV",
           "lock_is_free", "lock_path", "temporaries", "runs_dir", "run_file", "pack",
           "SpectrumSeries", "LayerCurvatureSeries", "RankSeries"]
