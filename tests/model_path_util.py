"""A package of the user's own models on disk, for ``--models module:callable`` (shared by
test_model_path and test_distributed)."""

from __future__ import annotations

import sys
from pathlib import Path

from landscape.models import MODELS, is_import_path

PACKAGE = "landscape_usernets"
NETS = f"{PACKAGE}.nets"

# Small MLPs on 3x32x32 images: plain, with BatchNorm, with dropout; and bad entries.
NETS_SOURCE = '''
import torch
from torch import nn


def Plain(num_classes, hidden=32):
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))


def WithBN(num_classes, hidden=32):
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, hidden), nn.BatchNorm1d(hidden),
                         nn.ReLU(), nn.Linear(hidden, num_classes))


class WithDropout(nn.Module):
    def __init__(self, hidden=32, p=0.5, **kwargs):  # num_classes through **kwargs
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, hidden), nn.ReLU(),
                                    nn.Dropout(p), nn.Linear(hidden, kwargs["num_classes"]))

    def forward(self, x):
        return self.layers(x)


def Fixed(hidden=32):  # takes no num_classes: always 10 outputs
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, hidden), nn.ReLU(),
                         nn.Linear(hidden, 10))


def NeedsValues(num_classes, hidden=32):  # reads a tensor's value: not on the meta device
    scale = float(torch.linspace(0, 1, hidden).max())
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, hidden), nn.GroupNorm(4, hidden),
                         nn.Linear(hidden, num_classes), nn.Identity() if scale else None)


NOT_CALLABLE = 3


def not_a_module(num_classes):
    return "a string"
'''
OTHER_SOURCE = "from .nets import WithBN as Plain  # another module's callable named Plain\n"


def write_package(root: Path) -> Path:
    """The package ``PACKAGE`` (modules ``nets`` and ``other``) written under ``root``."""
    folder = root / PACKAGE
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "__init__.py").write_text("")
    (folder / "nets.py").write_text(NETS_SOURCE)
    (folder / "other.py").write_text(OTHER_SOURCE)
    return root


def forget_imported_models() -> None:
    """Drop what importing the package left in this process: its modules and the import-path
    models registered (later tests see ``MODELS`` as the package registers it)."""
    for name in [m for m in MODELS if is_import_path(m)]:
        del MODELS[name]
    for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
        del sys.modules[name]
