"""``landscape slice``: a slice of the landscape around one run's saved weights.

Reads a run's settings and its snapshots (``snapshots``: ``--save-weights-*``) from a sweep,
rebuilds its model and loss, takes a fixed evaluation set (the first ``samples`` training
images, no augmentation, in batches of the run's batch size, so that ``batch`` BatchNorm sees
the statistics of batches the size the optimizer saw), builds the directions
(``probes.slices``) and evaluates the grid, then writes it with every setting into the run's
file (``store.slices``). A PCA slice also stores the trajectory's coordinates on its plane,
the loss along the real trajectory (each saved theta_t) and the plane's loss at the projected
points, which agree only as far as the trajectory lies in the plane (the explained variance).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from ..data import load_dataset
from ..errors import LandscapeError
from ..probes import trainable_parameters
from ..probes.slices import (BN_MODES, BN_PARAMS, DIRECTIONS, NORMALIZATIONS, POINT_MODES,
                             evaluate_points, evaluate_weights, grid_coords, hessian_directions,
                             interpolation_direction, normalize_direction, pca_directions,
                             random_direction)
from ..store.runfile import RunView
from ..store.slices import fallback_path, next_id, run_path, writable, write_slice
from .config import SweepConfig
from .device import resolve_device
from .snapshots import ATTRIBUTE, load_snapshot, saved_steps, snapshot_path
from .tasks import task_for


@dataclass
class SliceSettings:
    """Every setting of a slice (stored as the slice's attributes)."""

    direction: str = "random"  # DIRECTIONS
    at: int | None = None  # the saved step at the centre; None: the last saved
    to: str | None = None  # interpolate: "STEP", "RUN" or "RUN@STEP" (its last step)
    normalization: str | None = None  # None: filter for random/hessian, none otherwise
    bn_params: str = "zero"
    bn_mode: str = "batch"
    samples: int = 4096
    test: bool = False  # also the test set's loss at every point
    grid: tuple[int, ...] = (21, 21)
    # Coordinates along each direction; None: -1:1, interpolate -0.5:1.5, pca 1.25 x the
    # trajectory's largest coordinate either way.
    range: tuple[float, float] | None = None
    seed: int = 0  # the random directions' (d2's is seed + 1)
    batch_size: int | None = None  # None: the run's
    points: str = "auto"
    device: str = "auto"

    def check(self) -> None:
        for name, value, choices in (("--direction", self.direction, DIRECTIONS),
                                     ("--bn-params", self.bn_params, BN_PARAMS),
                                     ("--bn-mode", self.bn_mode, BN_MODES),
                                     ("--points", self.points, POINT_MODES)):
            if value not in choices:
                raise LandscapeError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        if self.normalization is not None and self.normalization not in NORMALIZATIONS:
            raise LandscapeError(f"--normalization must be one of {', '.join(NORMALIZATIONS)}, "
                                 f"got {self.normalization!r}")
        if self.direction in ("pca", "interpolate") and self.normalization not in (None, "none"):
            raise LandscapeError(f"--direction {self.direction} spans real weights' differences: "
                                 "rescaling them would leave that plane; use --normalization "
                                 "none (the default there)")
        if (self.direction == "interpolate") != (self.to is not None):
            raise LandscapeError("--to STEP|RUN|RUN@STEP goes with --direction interpolate, "
                                 "and it needs one")
        if not (1 <= len(self.grid) <= 2) or min(self.grid) < 2:
            raise LandscapeError(f"--grid takes N or NxM with N, M >= 2, got {self.grid}")
        if self.direction == "interpolate" and len(self.grid) != 1:
            raise LandscapeError("--direction interpolate is a line: give --grid N")
        if self.range is not None and not self.range[0] < self.range[1]:
            raise LandscapeError(f"--range LOW:HIGH needs LOW < HIGH, got {self.range}")
        if self.samples < 1:
            raise LandscapeError(f"--samples must be >= 1, got {self.samples}")

    @property
    def scale(self) -> str:
        if self.normalization is not None:
            return self.normalization
        return "filter" if self.direction in ("random", "hessian") else "none"


@dataclass
class RunWeights:
    """A run of a sweep: its settings, its model (empty weights) and its saved steps."""

    name: str
    cell: SweepConfig
    model_name: str
    folder: Path
    steps: list[int]

    def state(self, step: int, device) -> dict[str, torch.Tensor]:
        if step not in self.steps:
            raise LandscapeError(f"run {self.name} saved no weights at step {step} (saved: "
                                 f"{_listing(self.steps)})")
        return load_snapshot(snapshot_path(self.folder, step), device)


def _listing(steps) -> str:
    return ", ".join(map(str, steps[:8])) + (", ..." if len(steps) > 8 else "")


def run_weights(sweep: str, run: str) -> RunWeights:
    """A run's settings (the file's config, its cell's values) and its snapshots."""
    path = run_path(sweep, run) or Path(sweep)
    with h5py.File(sweep, "r", locking=False) as f:
        config = json.loads(f.attrs.get("config", "{}"))
        if path == Path(sweep):  # a one-file sweep
            attrs = dict(f["runs"][run].attrs)
    if path != Path(sweep):
        with RunView(path) as group:  # the run's file and its journal
            attrs = dict(group.attrs)
    if ATTRIBUTE not in attrs:
        raise LandscapeError(f"run {run} saved no weights: train it with --save-weights-every N "
                             "or --save-weights-at STEPS")
    known = {f.name for f in dataclasses.fields(SweepConfig)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if k in known}
    cell_values = {k: _plain(attrs[k]) for k in known if k in attrs and k != "models"}
    cell = dataclasses.replace(SweepConfig(**values), **cell_values)
    folder = Path(sweep).parent / str(attrs[ATTRIBUTE])
    if not folder.is_dir():
        folder = path.parent / Path(str(attrs[ATTRIBUTE])).name
    return RunWeights(run, cell, str(attrs["model"]), folder, saved_steps(folder))


def _plain(value):
    """An HDF5 attribute as a Python value (numpy scalars unwrapped)."""
    return value.item() if isinstance(value, np.generic) else value


def evaluation_batches(data, samples: int, batch_size: int, test: bool = False) -> list[tuple]:
    """The first ``samples`` training (or test) images, normalized, in fixed batches."""
    images, labels = (data.x_test, data.y_test) if test else (data.x_train, data.y_train)
    images, labels = images[:samples], labels[:samples]
    return [(data.normalize(images[i:i + batch_size]), labels[i:i + batch_size])
            for i in range(0, len(labels), batch_size)]


@dataclass
class Slice:
    """A computed slice: its arrays and its attributes (settings, seeds, what was measured)."""

    arrays: dict[str, np.ndarray]
    attrs: dict


def _model_at(weights: RunWeights, step: int, data, device) -> torch.nn.Module:
    model = weights.cell.model(weights.model_name, data).to(device)
    model.load_state_dict(weights.state(step, device))
    return model


def _other_end(weights: RunWeights, sweep: str, to: str, device) -> tuple[dict, str]:
    """The parameters at the far end of an interpolation, and its name: a step of this run,
    another run's last saved step, or RUN@STEP."""
    run, _, step = to.rpartition("@") if "@" in to else (None, "", to)
    if run is None and not to.isdigit():
        run, step = to, ""
    other = weights if run is None else run_weights(sweep, run)
    if run is not None and other.model_name != weights.model_name:
        raise LandscapeError(f"--to {to}: run {run} is a {other.model_name}, run "
                             f"{weights.name} a {weights.model_name}: interpolate one model")
    if not other.steps:
        raise LandscapeError(f"run {other.name} has no saved weights")
    at = int(step) if step else other.steps[-1]
    state = other.state(at, device)
    return state, f"{other.name}@{at}"


def _directions(settings: SliceSettings, model, theta, loss_fn, batches, weights, sweep,
                device) -> tuple[list[dict], dict, dict]:
    """The directions, the attributes that say how they were made, and extra arrays."""
    k = len(settings.grid)
    if settings.direction == "random":
        raw = [random_direction(theta, settings.seed + j) for j in range(k)]
        return ([normalize_direction(d, theta, settings.scale, settings.bn_params) for d in raw],
                {"direction_seeds": [settings.seed + j for j in range(k)]}, {})
    if settings.direction == "hessian":
        x, y = batches[0]
        raw, values = hessian_directions(model, loss_fn, x, y, k=k, seed=settings.seed)
        return ([normalize_direction(d, theta, settings.scale, settings.bn_params) for d in raw],
                {"hessian_batch": len(y), "lanczos_seed": settings.seed},
                {"eigenvalues": values})
    if settings.direction == "interpolate":
        state, end = _other_end(weights, sweep, settings.to, device)
        return [interpolation_direction(theta, {n: state[n] for n in theta})], {"to": end}, {}
    steps = [s for s in weights.steps if s <= settings.at]
    trajectory = [{n: state[n] for n in theta}
                  for state in (weights.state(s, device) for s in steps)]
    plane = pca_directions(trajectory, theta)
    return plane.directions, {}, {"explained_variance": plane.explained,
                                  "trajectory_step": np.asarray(steps, np.int64),
                                  "trajectory_coords": plane.coords,
                                  "_trajectory": trajectory}


def _range(settings: SliceSettings, extra: dict) -> tuple[float, float]:
    if settings.range is not None:
        return settings.range
    if settings.direction == "pca":
        reach = 1.25 * float(np.abs(extra["trajectory_coords"]).max())
        return -reach, reach
    return (-0.5, 1.5) if settings.direction == "interpolate" else (-1.0, 1.0)


def compute_slice(sweep: str, run: str, settings: SliceSettings) -> Slice:
    """The slice ``settings`` asks for around run ``run`` of ``sweep`` (nothing written)."""
    settings.check()
    weights = run_weights(sweep, run)
    if not weights.steps:
        raise LandscapeError(f"run {run} has no saved weights in {weights.folder}")
    settings = dataclasses.replace(settings, at=weights.steps[-1] if settings.at is None
                                   else settings.at)
    device = resolve_device(settings.device)
    data = load_dataset(weights.cell.dataset, weights.cell.data_root).to(device)
    model = _model_at(weights, settings.at, data, device)
    loss_fn = task_for(data, weights.cell.loss, weights.cell.label_smoothing).loss_fn
    batch_size = settings.batch_size or weights.cell.batch_size
    batches = evaluation_batches(data, settings.samples, batch_size)
    theta = trainable_parameters(model)
    directions, made, extra = _directions(settings, model, theta, loss_fn, batches, weights,
                                          sweep, device)
    low, high = _range(settings, extra)
    settings = dataclasses.replace(settings, range=(low, high))
    axes = [np.linspace(low, high, n) for n in settings.grid]
    coords = grid_coords(axes)

    def measure(eval_batches, points):
        return evaluate_points(model, loss_fn, eval_batches, theta, directions, points,
                               settings.bn_mode, settings.points)

    values = measure(batches, coords)
    shape = tuple(settings.grid)
    arrays = {"alpha": axes[0], "loss": values.loss.reshape(shape),
              "accuracy": values.accuracy.reshape(shape)}
    if len(axes) == 2:
        arrays["beta"] = axes[1]
    if settings.test:
        test = measure(evaluation_batches(data, settings.samples, batch_size, test=True), coords)
        arrays["test_loss"], arrays["test_accuracy"] = (test.loss.reshape(shape),
                                                        test.accuracy.reshape(shape))
    trajectory = extra.pop("_trajectory", None)
    if trajectory is not None:
        arrays["trajectory_loss"] = evaluate_weights(model, loss_fn, batches, trajectory,
                                                     settings.bn_mode).loss
        arrays["trajectory_plane_loss"] = measure(batches, extra["trajectory_coords"]).loss
    arrays.update(extra)
    attrs = {**{k: v for k, v in dataclasses.asdict(settings).items() if k != "device"},
             "normalization": settings.scale, "batch_size": batch_size,
             "samples": sum(len(y) for _, y in batches), "model": weights.model_name,
             "center_step": settings.at, "dataset": data.name, "device": str(device),
             "loss_fn": weights.cell.loss, **made,
             "bn_mode_means": ("train mode: each evaluation batch normalized by its own "
                               "statistics" if settings.bn_mode == "batch" else
                               "eval mode: running statistics re-estimated at every point "
                               "over the evaluation set")}
    return Slice(arrays, attrs)


def slice_run(sweep: str, run: str, settings: SliceSettings, slice_id: str | None = None,
              out: str | None = None) -> tuple[Path, str, Slice]:
    """Compute a slice and write it under ``/runs/<run>/slices/<id>`` of the run's file, or of
    ``out`` (given, or ``SWEEP.slices.h5`` beside the sweep when that is read-only)."""
    path = run_path(sweep, run) or Path(sweep)
    if out is None and not writable(path):
        out = str(fallback_path(sweep))
    slice_id = slice_id or next_id(sweep, run, out)
    result = compute_slice(sweep, run, settings)
    written = write_slice(sweep, run, slice_id, result.arrays, result.attrs, out)
    return written, slice_id, result

