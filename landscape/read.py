"""``landscape.read``: the reader of sweep files, under the name the README has always used.

The reader lives in ``landscape.store.read``; this module keeps ``landscape.read.read_sweep``
and its dataclasses importable, next to ``to_frames`` (``landscape.store.frames``: the file
as tidy pandas tables).
"""

from .store.frames import to_frames  # noqa: F401
from .store.read import (ActivationSeries, EpochSeries, ICSSeries, ProbeSeries, RunData,  # noqa: F401
                         StepSeries, SweepFile, read_sweep)

__all__ = ["read_sweep", "to_frames", "SweepFile", "RunData", "StepSeries", "ProbeSeries",
           "EpochSeries", "ICSSeries", "ActivationSeries"]
