"""``landscape.read``: the reader of sweep files, under the name the README has always used.

The reader lives in ``landscape.store.read``; this module keeps ``landscape.read.read_sweep``
and its dataclasses importable.
"""

from .store.read import (ActivationSeries, EpochSeries, ICSSeries, ProbeSeries, RunData,  # noqa: F401
                         StepSeries, SweepFile, read_sweep)

__all__ = ["read_sweep", "SweepFile", "RunData", "StepSeries", "ProbeSeries", "EpochSeries",
           "ICSSeries", "ActivationSeries"]
