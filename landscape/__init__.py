"""landscape: why BatchNorm helps optimization, measured (Santurkar et al., NeurIPS 2018).

data -> models -> probes -> store -> report. The probes are plain functions and hooks that
work in any PyTorch training loop; ``run_sweep`` trains a learning-rate grid and writes HDF5.
"""

__version__ = "0.1.0"

from .errors import LandscapeError  # noqa: E402
from .probes import GradientStats, LandscapeProbe, LandscapeRecord, along_gradient  # noqa: E402

__all__ = ["LandscapeError", "LandscapeProbe", "LandscapeRecord", "GradientStats",
           "along_gradient", "__version__"]
