"""landscape: why BatchNorm helps optimization, measured (Santurkar et al., NeurIPS 2018).

The rooms, in the order the numbers flow: ``data`` -> ``models`` -> ``probes`` -> ``train``
-> ``store`` -> ``report``, with ``cli`` a thin shell over them (docs/architecture.md). The
probes are plain functions and hooks that work in any PyTorch training loop;
``landscape.Recorder`` writes such a loop's run into a sweep file, and
``landscape.train.run_sweep`` trains a learning-rate grid and writes one.
"""

from .errors import LandscapeError
from .probes import GradientStats, LandscapeProbe, LandscapeRecord, along_gradient
from .train.recorder import Instruments, Recorder
from .version import __version__

__all__ = ["LandscapeError", "LandscapeProbe", "LandscapeRecord", "GradientStats",
           "along_gradient", "Recorder", "Instruments", "__version__"]
