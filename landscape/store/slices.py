"""Slices of the landscape in the file: ``/runs/<run>/slices/<id>/`` (``landscape slice``).

A slice is a group of arrays (the grid's axes, the loss and accuracy at every point, the
projected trajectory of a PCA slice) with every setting as an attribute. In a sweep of run
files it goes into the run's own file, rewritten atomically under the run's lock (a run that a
writer holds is refused); a sweep that cannot be written (read-only) gets a file of its own
with the same layout, ``/runs/<run>/slices/<id>/``. ``read_slices`` reads either.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import LandscapeError, os_reason
from .files import rewrite_hdf5
from .layout import resolve, run_groups
from .runfile import RunLock, journals

GROUP = "slices"


@dataclass
class SliceData:
    """One stored slice of one run."""

    run: str
    id: str
    arrays: dict[str, np.ndarray]
    attrs: dict[str, Any] = field(default_factory=dict)
    run_attrs: dict[str, Any] = field(default_factory=dict)  # the run's own attributes


def _attr(value: Any) -> Any:
    """An attribute HDF5 stores: None as "", lists and dicts as JSON."""
    if value is None:
        return ""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value)
    return value


def _write_group(run: h5py.Group, slice_id: str, arrays: dict, attrs: dict) -> None:
    group = run.require_group(GROUP)
    if slice_id in group:
        raise LandscapeError(f"run {run.name.strip('/') or 'file'} already has a slice "
                             f"{slice_id!r}: choose another --id")
    target = group.create_group(slice_id)
    for name, values in arrays.items():
        target.create_dataset(name, data=np.asarray(values))
    target.attrs.update({k: _attr(v) for k, v in attrs.items()})


def run_path(sweep: str | os.PathLike, run: str) -> Path | None:
    """The run file of ``run`` in a sweep of run files; None in a one-file sweep."""
    with h5py.File(sweep, "r", locking=False) as f:
        if run not in f.get("runs", {}):
            names = ", ".join(list(f.get("runs", {}))[:6])
            raise LandscapeError(f"{sweep} has no run {run!r} (runs: {names}, ...)")
        link = f["runs"].get(run, getlink=True)
        return resolve(Path(sweep), run, link.filename) if isinstance(link, h5py.ExternalLink) \
            else None


def writable(path: Path) -> bool:
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)


def fallback_path(sweep: str | os.PathLike) -> Path:
    """Where the slices of a read-only sweep go: ``SWEEP.slices.h5`` beside it, or in the
    working folder when the sweep's folder is read-only too."""
    beside = Path(sweep).with_suffix(".slices.h5")
    return beside if os.access(beside.parent, os.W_OK) else Path.cwd() / beside.name


def fallback_files(sweep: str | os.PathLike) -> list[Path]:
    """The slices files of ``sweep`` in either place ``fallback_path`` picks (whose
    ``slices_of`` names it): where a report finds the slices of a read-only sweep."""
    beside = Path(sweep).with_suffix(".slices.h5")
    found = []
    for path in dict.fromkeys((beside, Path.cwd() / beside.name)):
        try:
            with h5py.File(path, "r", locking=False) as f:
                of = f.attrs.get("slices_of")
        except OSError:  # absent, unreadable or not HDF5: not the sweep's
            continue
        if of == str(Path(sweep).resolve()):
            found.append(path)
    return found


def write_slice(sweep: str | os.PathLike, run: str, slice_id: str, arrays: dict, attrs: dict,
                out: str | os.PathLike | None = None) -> Path:
    """The slice into the run's file (``out`` None), or into the file ``out`` (created or
    added to) under ``/runs/<run>/slices/<id>``; the path written."""
    if out is None:
        path = run_path(sweep, run) or Path(sweep)
        inner = "" if path != Path(sweep) else f"runs/{run}"
    else:
        path, inner = Path(out), f"runs/{run}"
    try:
        if out is not None and not path.exists():
            with h5py.File(path, "w") as f:
                f.attrs["slices_of"] = str(Path(sweep).resolve())
        with RunLock(path):
            if any(p.exists() for p in journals(path)):
                raise LandscapeError(f"{path} has rows not yet compacted (a running or killed "
                                     "run): slice it once it has ended or been resumed")
            rewrite_hdf5(path, lambda f: _write_group(f.require_group(inner) if inner else f,
                                                      slice_id, arrays, attrs), copy=True)
    except OSError as error:
        raise LandscapeError(f"cannot write {path}: {os_reason(error)}") from None
    return path


def next_id(sweep: str | os.PathLike, run: str, out=None) -> str:
    """``slice-N``, the first N the run has not used (in its file, or in ``out``)."""
    taken = {s.id for s in read_slices(out if out is not None and Path(out).exists() else sweep)
             if s.run == run} if out is None or Path(out).exists() else set()
    n = 1
    while f"slice-{n}" in taken:
        n += 1
    return f"slice-{n}"


def read_slices(path: str | os.PathLike) -> list[SliceData]:
    """Every slice of a sweep (its runs' files or its own groups) or of a slices file."""
    path = Path(path)
    found = []
    with h5py.File(path, "r", locking=False) as f:
        for name, opened in run_groups(f, path) if "runs" in f else ():
            with opened as run:
                if not isinstance(run.get(GROUP), h5py.Group):
                    continue
                run_attrs = dict(run.attrs)
                for slice_id, group in run[GROUP].items():
                    found.append(SliceData(name, slice_id,
                                           {k: v[()] for k, v in group.items()},
                                           dict(group.attrs), run_attrs))
    return found
