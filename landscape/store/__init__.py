"""Store: one HDF5 file per sweep -- its schema, its writer and its reader.

``write``: ``SweepStore`` / ``RunLog`` buffer rows and append them at each flush, so the file
is readable while a sweep runs. ``read``: ``read_sweep`` copies a file into typed numpy
dataclasses. ``schema``: the field names both agree on, with every field's units, description
and dimensions. ``frames``: the file as tidy pandas tables (``to_frames``, ``landscape
export``). The room needs numpy, h5py and pandas, never torch: the training side writes
through it, the report reads through it.
"""

from .read import (ActivationSeries, CurvatureSeries, EpochSeries, ICSSeries, ProbeSeries, RunData,
                   StepSeries, SweepFile, WeightSeries, read_sweep)
from .schema import CURVATURE_FIELDS, STATUSES, WEIGHT_FIELDS
from .write import (WRITE_PAUSE_ENV, RunLog, SweepLock, SweepStore, remove_stale_temporaries,
                    replace_atomically, write_pause)

__all__ = ["SweepStore", "RunLog", "read_sweep", "SweepFile", "RunData", "StepSeries",
           "ProbeSeries", "EpochSeries", "ICSSeries", "ActivationSeries", "STATUSES",
           "CurvatureSeries", "WeightSeries", "CURVATURE_FIELDS", "WEIGHT_FIELDS", "SweepLock",
           "replace_atomically", "remove_stale_temporaries", "write_pause", "WRITE_PAUSE_ENV"]
