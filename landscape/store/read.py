"""Read a sweep's HDF5 file (see ``write.py`` for the layout) into typed, in-memory arrays.

The reader never blocks a running ``landscape run``: it opens the sweep read-only with HDF5
file locking off, and each run as its file and journal hold it (``runfile.RunView``: the file
a rename left, whole, and the journal's whole records), copies everything it needs and closes
it at once. A read that fails anyway is retried, and columns of different lengths (a file of
an earlier version, written in place) are cut to the rows every column of the group has.

Anything that is not a landscape sweep (a text file, another tool's HDF5 file, a
truncated file) raises ``LandscapeError`` with a one-line message.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np

from ..errors import LandscapeError
from .files import lock_is_free
from .layout import run_groups
from .runfile import RESERVED_ATTRS, RunView
from .runlog import added_fill
from .schema import (ADDED_FIELDS, EPOCH_FIELDS, INT_FIELDS, PROBE_GRID_FIELDS, PROBE_ROW_FIELDS,
                     STEP_FIELDS, WEIGHT_FIELDS)

# A read that fails while a writer is mid-flush succeeds a moment later; a corrupt file
# fails every time. These pauses (seconds) bound how long a bad file delays the error.
RETRY_PAUSES = (0.05, 0.2, 0.5)


@dataclass(frozen=True)
class StepSeries:
    """Per training step (n,): the minibatch loss and consecutive-gradient statistics."""

    step: np.ndarray
    epoch: np.ndarray
    loss: np.ndarray
    grad_norm: np.ndarray
    grad_diff: np.ndarray  # ||g_t - g_{t-1}||, different minibatches
    beta_consecutive: np.ndarray
    learning_rate: np.ndarray  # LR(t) of the step's update (files from before: the run's lr)


@dataclass(frozen=True)
class ProbeSeries:
    """The landscape probe along the gradient: n probed steps, k step sizes eta."""

    step: np.ndarray  # (n,)
    eta: np.ndarray  # (k,), absolute step sizes
    loss: np.ndarray  # (n, k): L(theta - eta g)
    grad_diff: np.ndarray  # (n, k): ||grad L(theta - eta g) - g||
    beta: np.ndarray  # (n,): effective beta-smoothness
    grad_norm: np.ndarray  # (n,): ||g||
    loss_at_theta: np.ndarray  # (n,): L(theta)
    learning_rate: np.ndarray  # (n,): LR(t) at the probed step (files from before: the run's lr)
    # (n, k): the step sizes at each probed step, eta x learning_rate / the run's lr, i.e.
    # LR(t) x --etas: eta on every row under a constant schedule.
    eta_at_step: np.ndarray
    # Split by layer (the L modules owning parameters); empty in files written before it.
    layer: tuple[str, ...] = ()  # (L,)
    grad_diff_layer: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0)))  # (n, k, L)
    grad_norm_layer: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # (n, L)


@dataclass(frozen=True)
class EpochSeries:
    """Per epoch: training averages over the epoch's minibatches and the test set."""

    epoch: np.ndarray
    train_loss: np.ndarray
    train_acc: np.ndarray
    test_loss: np.ndarray
    test_acc: np.ndarray
    seconds: np.ndarray
    steps: np.ndarray  # training steps in the epoch (-1: not recorded, files before it was)
    # On a fixed training subset after the epoch: train mode (batch statistics, no dropout)
    # and eval mode (running statistics); NaN in files from before and for the DLN.
    train_mode_loss: np.ndarray
    train_mode_acc: np.ndarray
    eval_mode_loss: np.ndarray
    eval_mode_acc: np.ndarray
    partial: np.ndarray  # bool: fewer steps than a whole epoch (a --steps run's last epoch)


@dataclass(frozen=True)
class ICSSeries:
    """Internal covariate shift (``/runs/<name>/ics``): n probed steps, L weight layers."""

    step: np.ndarray  # (n,)
    layer: tuple[str, ...]  # (L,) module names, e.g. "features.15"
    layer_index: np.ndarray  # (L,) 1-based among the conv and linear layers
    l2: np.ndarray  # (n, L): ||G - G'||_2
    cosine: np.ndarray  # (n, L): cos(G, G')
    grad_norm: np.ndarray  # (n, L): ||G||_2


@dataclass(frozen=True)
class ActivationSeries:
    """Pre-activation distributions (``/runs/<name>/activations``): n steps, L layers, b bins."""

    step: np.ndarray  # (n,)
    layer: tuple[str, ...]  # (L,)
    layer_index: np.ndarray  # (L,) 1-based among the conv and linear layers
    bin_edges: np.ndarray  # (b + 1,)
    mean: np.ndarray  # (n, L)
    std: np.ndarray  # (n, L)
    hist: np.ndarray  # (n, L, b): fractions, each row sums to 1


@dataclass(frozen=True)
class CurvatureSeries:
    """Hessian sharpness (``/runs/<name>/curvature``): n probed steps, k top eigenvalues."""

    step: np.ndarray  # (n,)
    lambda_max: np.ndarray  # (n, k): the k largest Hessian eigenvalues, descending
    trace: np.ndarray  # (n,): Hutchinson's tr H (NaN: not measured)
    gHg: np.ndarray  # (n,): curvature along the normalized gradient
    iterations: np.ndarray  # (n,): Hessian-vector products of the eigensolver


@dataclass(frozen=True)
class WeightSeries:
    """Weight statistics (``/runs/<name>/weights``): every step, L weight layers."""

    step: np.ndarray  # (n,)
    layer: tuple[str, ...]  # (L,)
    layer_index: np.ndarray  # (L,) 1-based among the conv and linear layers
    scale_invariant: np.ndarray  # (L,) bool: a normalization follows the layer
    norm: np.ndarray  # (n, L): ||w||
    effective_lr: np.ndarray  # (n, L): lr / ||w||^2
    effective_grad_norm: np.ndarray  # (n, L): ||w|| ||grad_w L||
    angular_update: np.ndarray  # (n, L): angle(w_t, w_t+1), radians


@dataclass(frozen=True)
class SpectrumSeries:
    """The Hessian's spectral density (``/runs/<name>/spectrum``): n rows, each a probed step x
    Hessian set (``repeat``) x BN mode (``bn``, an index into ``bn_mode``); k top values, V
    start vectors, m Lanczos nodes, G grid points."""

    step: np.ndarray  # (n,)
    repeat: np.ndarray  # (n,)
    bn: np.ndarray  # (n,) index into bn_mode
    bn_mode: tuple[str, ...]  # ("batch", "running")
    samples: int  # images per Hessian set
    top: np.ndarray  # (n, k) descending
    grad_fraction: np.ndarray  # (n, k) share of ||g||^2 in the top 1..k Ritz vectors' span
    lambda_min: np.ndarray  # (n,)
    trace: np.ndarray  # (n,)
    outliers: np.ndarray  # (n,) int
    bulk_edge: np.ndarray  # (n,)
    grad_in_outliers: np.ndarray  # (n,)
    grad_norm: np.ndarray  # (n,)
    loss: np.ndarray  # (n,)
    hvps: np.ndarray  # (n,)
    ritz_values: np.ndarray  # (n, V, m)
    ritz_weights: np.ndarray  # (n, V, m)
    grid: np.ndarray  # (n, G)
    density: np.ndarray  # (n, G)

    def rows(self, mode: str) -> np.ndarray:
        """Indices of the rows in BN mode ``mode`` (batch | running)."""
        if mode not in self.bn_mode:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(self.bn == self.bn_mode.index(mode))


@dataclass(frozen=True)
class LayerCurvatureSeries:
    """Each weight layer's diagonal Hessian block (``/runs/<name>/layer_curvature``)."""

    step: np.ndarray  # (n,)
    layer: tuple[str, ...]  # (L,)
    layer_index: np.ndarray  # (L,)
    scale_invariant: np.ndarray  # (L,) bool
    lambda_max: np.ndarray  # (n, L)
    trace: np.ndarray  # (n, L)
    weight_norm_sq: np.ndarray  # (n, L)
    scaled_lambda: np.ndarray  # (n, L): lambda_max x ||w||^2


@dataclass(frozen=True)
class RankSeries:
    """Gradient norms and representation ranks per weight layer (``/runs/<name>/ranks``)."""

    step: np.ndarray  # (n,)
    layer: tuple[str, ...]  # (L,)
    layer_index: np.ndarray  # (L,)
    grad_norm: np.ndarray  # (n, L)
    rank: np.ndarray  # (n, L)
    effective_rank: np.ndarray  # (n, L)
    size: np.ndarray  # (n, L): min(batch, features)


@dataclass(frozen=True)
class RunData:
    """One run (model, learning rate, seed) of a sweep file."""

    name: str
    source: Path  # the file it was read from
    model: str
    norm: str
    lr: float
    seed: int
    status: str  # running | completed | diverged | interrupted | failed
    diverged_step: int | None
    seconds: float  # NaN while running
    steps_completed: int | None
    steps: StepSeries
    probe: ProbeSeries
    epochs: EpochSeries
    attrs: dict[str, Any] = field(default_factory=dict)  # every attribute, as stored
    ics: ICSSeries | None = None  # None when the run had no ICS probe
    activations: ActivationSeries | None = None  # None when it had no activation probe
    curvature: CurvatureSeries | None = None  # None when it had no sharpness probe
    weights: WeightSeries | None = None  # None when it recorded no weight statistics
    # Status "running" but no process writes it: its writer was killed (``--resume`` continues)
    stale: bool = False
    spectrum: SpectrumSeries | None = None  # None when it had no spectrum probe
    layer_curvature: LayerCurvatureSeries | None = None  # None: no per-layer curvature probe
    ranks: RankSeries | None = None  # None when it had no rank probe


@dataclass(frozen=True)
class SweepFile:
    """A sweep file: its provenance and its runs, in the order they were written."""

    path: Path
    landscape_version: str
    created: str
    command: str
    config: dict[str, Any]
    runs: list[RunData]


def read_sweep(path: str | os.PathLike,
               keep: Callable[[str, dict[str, Any]], bool] | None = None) -> SweepFile:
    """Read a landscape sweep file; ``LandscapeError`` (one line) when it is not one.
    ``keep(name, attrs)``: read only the runs it accepts, from their name and attributes
    (a report of a few runs of a large sweep reads only those)."""
    path = Path(path)
    if not path.exists():
        raise LandscapeError(f"{path}: no such file")
    if path.is_dir():
        raise LandscapeError(f"{path} is a directory, not a landscape HDF5 file")
    if not h5py.is_hdf5(path):
        raise LandscapeError(f"{path} is not an HDF5 file (expected a landscape sweep .h5)")
    for pause in RETRY_PAUSES + (None,):
        try:
            with h5py.File(path, "r", locking=False) as f:
                return _read_open_file(path, f, keep)
        except (OSError, KeyError, ValueError, RuntimeError) as e:
            if pause is None:
                reason = " ".join(str(e).split()) or type(e).__name__
                raise LandscapeError(
                    f"{path}: unreadable or truncated HDF5 file ({reason})") from None
            time.sleep(pause)
    raise AssertionError("unreachable")


def _read_open_file(path: Path, f: h5py.File,
                    keep: Callable[[str, dict[str, Any]], bool] | None) -> SweepFile:
    if "landscape_version" not in f.attrs or not isinstance(f.get("runs"), h5py.Group):
        raise LandscapeError(f"{path} is an HDF5 file but not a landscape sweep "
                             "(no landscape_version attribute and /runs group)")
    try:
        config = json.loads(_text(f.attrs.get("config", "{}")))
    except json.JSONDecodeError:
        config = {}
    runs = []
    for name, source in run_groups(f, path):
        with source as group:
            if keep is not None and not keep(name, _run_attrs(group)):
                continue
            run = _read_run(path, name, group)
        if run.status == "running":  # a live writer holds the run's lock (the sweep's, in
            writer = source.path if isinstance(source, RunView) else path  # one file)
            run = replace(run, stale=lock_is_free(writer))
        runs.append(run)
    return SweepFile(path=path, landscape_version=_text(f.attrs["landscape_version"]),
                     created=_text(f.attrs.get("created", "")),
                     command=_text(f.attrs.get("command", "")), config=config, runs=runs)


def _run_attrs(group: h5py.Group) -> dict[str, Any]:
    return {key: _plain(value) for key, value in group.attrs.items()
            if key not in RESERVED_ATTRS}


def _read_run(path: Path, name: str, group: h5py.Group) -> RunData:
    attrs = _run_attrs(group)
    steps = _columns(group, "steps", STEP_FIELDS, attrs)
    epochs = _columns(group, "epochs", EPOCH_FIELDS, attrs)
    probe = _columns(group, "probe", PROBE_ROW_FIELDS + PROBE_GRID_FIELDS, attrs)
    eta = _dataset(group, "probe", "eta", ndim=1)
    if len(eta):
        for grid_field in PROBE_GRID_FIELDS:  # (n, k) even when no row has been written yet
            probe[grid_field] = probe[grid_field].reshape(-1, len(eta))
    probe["eta_at_step"] = eta_at_step(eta, probe["learning_rate"], attrs.get("lr"))
    diverged_step = attrs.get("diverged_step")
    steps_completed = attrs.get("steps_completed")
    return RunData(
        name=name, source=path, model=str(attrs.get("model", "?")),
        norm=str(attrs.get("norm", "?")), lr=float(attrs.get("lr", np.nan)),
        seed=int(attrs.get("seed", 0)), status=str(attrs.get("status", "running")),
        diverged_step=None if diverged_step is None else int(diverged_step),
        seconds=float(attrs.get("seconds", np.nan)),
        steps_completed=None if steps_completed is None else int(steps_completed),
        steps=StepSeries(**steps), probe=ProbeSeries(eta=eta, **probe, **_probe_layers(group)),
        epochs=EpochSeries(**epochs, partial=_partial(epochs["steps"], attrs)), attrs=attrs, ics=_read_ics(group),
        activations=_read_activations(group), curvature=_read_curvature(group),
        weights=_read_weights(group), spectrum=_read_spectrum(group),
        layer_curvature=_read_layer_curvature(group), ranks=_read_ranks(group))


def _layered(run: h5py.Group, group_name: str, row_fields: dict[str, tuple[int, ...]]) -> dict | None:
    """A per-layer instrument group as arrays, or None when the run has no such group.

    ``row_fields`` maps each per-step field to its shape after (n, L); a missing dataset, or
    one whose shape does not fit the layers, reads as empty, and every per-step field is cut
    to the rows all of them have (a flush may be half-way).
    """
    group = run.get(group_name)
    if not isinstance(group, h5py.Group):
        return None
    node = group.get("layer")
    layer = tuple(_text(v) for v in node[()]) if isinstance(node, h5py.Dataset) else ()
    layer_index = _dataset(run, group_name, "layer_index", ndim=1).astype(np.int64)
    if len(layer_index) != len(layer):
        layer_index = np.arange(1, len(layer) + 1, dtype=np.int64)  # unknown: in order
    rows = {"step": _dataset(run, group_name, "step", ndim=1).astype(np.int64)}
    for name, trailing in row_fields.items():
        shape = (len(layer),) + trailing
        values = _dataset(run, group_name, name, ndim=1 + len(shape))
        rows[name] = values if values.shape[1:] == shape else np.zeros((0,) + shape)
    n = min(len(v) for v in rows.values())
    return {"layer": layer, "layer_index": layer_index,
            **{name: values[:n] for name, values in rows.items()}}


def _read_ics(run: h5py.Group) -> ICSSeries | None:
    columns = _layered(run, "ics", {"l2": (), "cosine": (), "grad_norm": ()})
    return None if columns is None else ICSSeries(**columns)


def _read_activations(run: h5py.Group) -> ActivationSeries | None:
    edges = _dataset(run, "activations", "bin_edges", ndim=1)
    columns = _layered(run, "activations",
                       {"mean": (), "std": (), "hist": (max(len(edges) - 1, 0),)})
    return None if columns is None else ActivationSeries(bin_edges=edges, **columns)


def _probe_layers(run: h5py.Group) -> dict:
    """The probe's split by layer, cut to the probe's rows; nothing when the file lacks it."""
    columns = _layered(run, "probe", {"grad_norm_layer": ()})
    if columns is None or not columns["layer"]:
        return {}
    n_eta, n_layers = len(_dataset(run, "probe", "eta", ndim=1)), len(columns["layer"])
    diff = _dataset(run, "probe", "grad_diff_layer", ndim=3)
    if diff.shape[1:] != (n_eta, n_layers):
        return {}
    rows = min(len(diff), len(columns["grad_norm_layer"]), len(columns["step"]))
    return {"layer": columns["layer"], "grad_diff_layer": diff[:rows],
            "grad_norm_layer": columns["grad_norm_layer"][:rows]}


def _read_curvature(run: h5py.Group) -> CurvatureSeries | None:
    if not isinstance(run.get("curvature"), h5py.Group):
        return None
    columns = {"step": _dataset(run, "curvature", "step", ndim=1).astype(np.int64),
               "lambda_max": _dataset(run, "curvature", "lambda_max", ndim=2),
               "trace": _dataset(run, "curvature", "trace", ndim=1),
               "gHg": _dataset(run, "curvature", "gHg", ndim=1),
               "iterations": _dataset(run, "curvature", "iterations", ndim=1).astype(np.int64)}
    n = min(len(v) for v in columns.values())
    return CurvatureSeries(**{name: values[:n] for name, values in columns.items()})


def _read_weights(run: h5py.Group) -> WeightSeries | None:
    columns = _layered(run, "weights", {f: () for f in WEIGHT_FIELDS})
    if columns is None:
        return None
    invariant = _dataset(run, "weights", "scale_invariant", ndim=1).astype(bool)
    if len(invariant) != len(columns["layer"]):
        invariant = np.zeros(len(columns["layer"]), dtype=bool)
    return WeightSeries(scale_invariant=invariant, **columns)


def eta_at_step(eta: np.ndarray, learning_rate: np.ndarray, lr) -> np.ndarray:
    """(n, k) the probe's step sizes at each probed step: ``eta`` (the run's lr x --etas)
    scaled by LR(t) / lr; ``eta`` itself where LR(t) is the run's lr (or either is unknown)."""
    if lr is None or not lr > 0:
        return np.broadcast_to(eta, (len(learning_rate), len(eta))).copy()
    scale = np.where(np.isfinite(learning_rate), learning_rate / float(lr), 1.0)
    return eta[None, :] * scale[:, None]  # x 1.0 leaves eta as it is, bit for bit


def _partial(steps: np.ndarray, attrs: dict) -> np.ndarray:
    per_epoch = attrs.get("steps_per_epoch")
    if per_epoch is None:
        return np.zeros(len(steps), dtype=bool)
    return (steps >= 0) & (steps < int(per_epoch))


def _columns(run: h5py.Group, group_name: str, fields: tuple[str, ...],
             attrs: dict) -> dict[str, np.ndarray]:
    """The group's columns cut to their common length (a flush may be half-way); a field that
    older files lack (``schema.ADDED_FIELDS``) is filled with its fill value, or the run's
    attribute that stood for it (``runlog.added_fill``: the learning rate)."""
    added = {f for f in fields if (group_name, f) in ADDED_FIELDS
             and not isinstance(run.get(f"{group_name}/{f}"), h5py.Dataset)}
    columns = {f: _dataset(run, group_name, f, ndim=2 if f in PROBE_GRID_FIELDS else 1)
               for f in fields if f not in added}
    rows = min(len(c) for c in columns.values())
    columns = {f: c[:rows] for f, c in columns.items()}
    for f in added:
        columns[f] = np.full(rows, added_fill(group_name, f, attrs),
                             dtype=np.int64 if f in INT_FIELDS else np.float64)
    return {f: columns[f] for f in fields}


def _dataset(run: h5py.Group, group_name: str, name: str, ndim: int) -> np.ndarray:
    """A column as a numpy array; a missing one (older or partial file) reads as empty."""
    dtype = np.int64 if name in INT_FIELDS else np.float64
    node = run.get(f"{group_name}/{name}")
    if not isinstance(node, h5py.Dataset):
        return np.zeros((0,) * ndim, dtype=dtype)
    return np.asarray(node[()], dtype=dtype)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _plain(value):
    """HDF5 attribute -> plain Python value (str, int, float, bool, list)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


SPECTRUM_ROW_FIELDS = {"step": 1, "repeat": 1, "bn": 1, "top": 2, "grad_fraction": 2,
                       "lambda_min": 1, "trace": 1, "outliers": 1, "bulk_edge": 1,
                       "grad_in_outliers": 1, "grad_norm": 1, "loss": 1, "hvps": 1,
                       "ritz_values": 3, "ritz_weights": 3, "grid": 2, "density": 2}


def _read_spectrum(run: h5py.Group) -> SpectrumSeries | None:
    group = run.get("spectrum")
    if not isinstance(group, h5py.Group):
        return None
    columns = {f: _dataset(run, "spectrum", f, ndim=ndim)
               for f, ndim in SPECTRUM_ROW_FIELDS.items()}
    n = min(len(v) for v in columns.values())  # a flush may be half-way
    columns = {f: v[:n] for f, v in columns.items()}
    for f in ("step", "repeat", "bn", "outliers", "hvps"):
        columns[f] = columns[f].astype(np.int64)
    node = group.get("bn_mode")
    modes = tuple(_text(v) for v in node[()]) if isinstance(node, h5py.Dataset) else ()
    samples = group.get("samples")
    return SpectrumSeries(bn_mode=modes, samples=int(samples[()]) if samples is not None else 0,
                          **columns)


def _read_layer_curvature(run: h5py.Group) -> LayerCurvatureSeries | None:
    columns = _layered(run, "layer_curvature", {f: () for f in (
        "lambda_max", "trace", "weight_norm_sq", "scaled_lambda")})
    if columns is None:
        return None
    invariant = _dataset(run, "layer_curvature", "scale_invariant", ndim=1).astype(bool)
    if len(invariant) != len(columns["layer"]):
        invariant = np.zeros(len(columns["layer"]), dtype=bool)
    return LayerCurvatureSeries(scale_invariant=invariant, **columns)


def _read_ranks(run: h5py.Group) -> RankSeries | None:
    columns = _layered(run, "ranks", {f: () for f in (
        "grad_norm", "rank", "effective_rank", "size")})
    return None if columns is None else RankSeries(**columns)
