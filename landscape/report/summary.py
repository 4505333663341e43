"""Per-run summaries (the report's run table and ``landscape info``), free of plotting.

Nothing here imports plotly: ``landscape info`` works where only the training stack is
installed.
"""

from __future__ import annotations

import math
import platform
from dataclasses import dataclass
from importlib import metadata
from typing import Sequence

from ..store import RunData
from ..version import __version__
from .bands import last_finite
from .phases import phase_median, stall_step

# Display names, the one table every legend, title and table uses (the paper's for its two
# networks); a model registered later and missing here shows under its own name.
# A model's label: its family's, then its normalizer's (``vgg_a_bn`` -> "VGG-A+BN").
FAMILY_LABELS = {"vgg_a": "VGG-A", "resnet20": "ResNet-20", "resnet32": "ResNet-32",
                 "resnet56": "ResNet-56", "resnet18": "ResNet-18"}
NORM_LABELS = {"": "", "_bn": "+BN", "_noisy_bn": "+noisy BN", "_noise": "+noise",
               "_l1": "+ℓ1 BN", "_l2": "+ℓ2 BN", "_linf": "+ℓ∞ BN", "_ln": "+LN", "_gn": "+GN",
               "_gbn": "+Ghost BN"}
MODEL_LABELS = {**{family + suffix: label + norm for family, label in FAMILY_LABELS.items()
                   for suffix, norm in NORM_LABELS.items()},
                "dln": "DLN", "dln_bn": "DLN+BN", "mlp": "MLP", "mlp_bn": "MLP+BN", "cnn": "CNN",
                "cnn_bn": "CNN+BN"}


def model_label(model: str) -> str:
    return MODEL_LABELS.get(model, model)


@dataclass(frozen=True)
class RunRow:
    """What one line of the run table says about a run."""

    source: str
    name: str
    model: str
    norm: str
    lr: float
    seed: int
    status: str  # the file's, or "stale": running, but its writer is gone (killed)
    diverged_step: int | None
    steps: int  # training steps recorded
    probes: int  # probed steps recorded
    epochs: int  # epochs evaluated
    final_train_acc: float
    final_test_acc: float
    final_train_loss: float  # the last finite epoch mean, as for the accuracies
    final_test_loss: float
    median_beta: float  # of the probe's effective beta-smoothness, probed steps while learning
    seconds: float
    ics_probes: int | None = None  # probed steps of the ICS instrument; None: it was off
    activation_probes: int | None = None  # same for the activation instrument
    stall_step: int | None = None  # the step from which it stopped learning (phases.stall_step)
    median_beta_after: float = math.nan  # median beta_eff from stall_step on

    @property
    def status_text(self) -> str:
        """'diverged@57' for a diverged run, the plain status otherwise."""
        return self.status if self.diverged_step is None else f"{self.status}@{self.diverged_step}"


def summarize_run(run: RunData) -> RunRow:
    stall = stall_step(run)
    end = math.inf if stall is None else stall
    return RunRow(source=str(run.source), name=run.name, model=run.model, norm=run.norm,
                  lr=run.lr, seed=run.seed, diverged_step=run.diverged_step,
                  # "running" with no writer left (killed): say so, not "running"
                  status="stale" if run.stale else run.status,
                  steps=len(run.steps.step), probes=len(run.probe.step),
                  epochs=len(run.epochs.epoch),
                  final_train_acc=last_finite(run.epochs.train_acc),
                  final_test_acc=last_finite(run.epochs.test_acc),
                  final_train_loss=last_finite(run.epochs.train_loss),
                  final_test_loss=last_finite(run.epochs.test_loss),
                  median_beta=phase_median(run.probe.step, run.probe.beta, end),
                  seconds=run.seconds, stall_step=stall,
                  median_beta_after=phase_median(run.probe.step, run.probe.beta, end, after=True),
                  ics_probes=None if run.ics is None else len(run.ics.step),
                  activation_probes=None if run.activations is None
                  else len(run.activations.step))


RUN_TABLE_HEADER = ("run", "model", "norm", "lr", "seed", "status", "steps", "probes", "epochs",
                    "train acc", "test acc", "train loss", "test loss", "stops learning",
                    "median β learning", "median β after", "seconds")


def run_table_cells(row: RunRow) -> tuple[str, ...]:
    """The row as text, in the order of ``RUN_TABLE_HEADER``; '-' for a missing number."""
    return (row.name, model_label(row.model), row.norm, f"{row.lr:g}", str(row.seed),
            row.status_text, str(row.steps), str(row.probes), str(row.epochs),
            _number(row.final_train_acc, ".4f"), _number(row.final_test_acc, ".4f"),
            _number(row.final_train_loss, ".4g"), _number(row.final_test_loss, ".4g"),
            "-" if row.stall_step is None else str(row.stall_step),
            _number(row.median_beta, ".3g"), _number(row.median_beta_after, ".3g"),
            _number(row.seconds, ".1f"))


def instrument_columns(rows: Sequence[RunRow]) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """Extra columns (header, cells per row) for the instruments some run had; '-' when off."""
    columns = [(name, attr) for name, attr in (("ics", "ics_probes"), ("acts", "activation_probes"))
               if any(getattr(r, attr) is not None for r in rows)]
    cells = [tuple("-" if getattr(r, attr) is None else str(getattr(r, attr))
                   for _, attr in columns) for r in rows]
    return tuple(name for name, _ in columns), cells


def _number(value: float, spec: str) -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, spec)


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces, for a terminal."""
    table = [tuple(header)] + [tuple(r) for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table)


def library_versions() -> dict[str, str]:
    """Versions of what made the report (the sweep's own torch version is in its config)."""
    # This package's own: the code that runs (whatever pip's metadata, under the distribution
    # name, says of an install elsewhere on the path).
    versions = {"python": platform.python_version(), "landscape": __version__}
    for package in ("numpy", "h5py", "plotly", "torch"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions
