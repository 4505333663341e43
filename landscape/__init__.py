"""landscape: why BatchNorm helps optimization, measured (Santurkar et al., NeurIPS 2018).

The rooms, in the order the numbers flow: ``data`` -> ``models`` -> ``probes`` -> ``train``
-> ``store`` -> ``report``, with ``cli`` a thin shell over them (docs/architecture.md). The
probes are plain functions and hooks that work in any PyTorch training loop;
``landscape.train.run_sweep`` trains a learning-rate grid and writes one HDF5 file.
"""

from .errors import LandscapeError
from .probes import GradientStats, LandscapeProbe, LandscapeRecord, along_gradient
from .version import __version__

__all__ = ["LandscapeError", "LandscapeProbe", "LandscapeRecord", "GradientStats",
           "along_gradient", "__version__"]
