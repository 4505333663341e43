"""A sweep as one file and back: ``pack`` (``landscape pack``, to share) and ``unpack``.

Both copy each run's groups whole (HDF5 object copies: the same bytes, their dimension scales
kept), so a packed sweep reads as its run files do, and a one-file sweep of an earlier version
continues (``--resume``) as run files.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py

from ..errors import LandscapeError, os_reason
from .files import replace_atomically, rewrite_hdf5
from .layout import LAYOUT, ONE_FILE, link_target, run_groups, runs_dir, write_index
from .runfile import GENERATION

SCALE_ATTRS = ("CLASS", "NAME", "DIMENSION_LIST", "REFERENCE_LIST")  # HDF5's scale bookkeeping


def pack(sweep: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """One self-contained HDF5 file of the sweep (layout "one-file"): every run's groups and
    attributes under ``/runs/<name>``, as its run file and journal hold them now."""
    sweep, out = Path(sweep), Path(out)
    if out.exists() and not overwrite:
        raise LandscapeError(f"{out} exists; replace it with --overwrite, or choose another path")
    if out.exists() and out.resolve() == sweep.resolve():
        raise LandscapeError(f"{out} is the sweep itself: choose another path")

    def write(tmp: Path) -> None:
        with h5py.File(sweep, "r", locking=False) as index, h5py.File(tmp, "w") as f:
            f.attrs.update(dict(index.attrs) | {"layout": ONE_FILE})
            runs = f.create_group("runs")
            for name, source in run_groups(index, sweep):
                with source as run:
                    _copy_run(run, runs.create_group(name))

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        replace_atomically(out, write, copy=False)
    except OSError as error:
        raise LandscapeError(f"cannot write {out}: {os_reason(error)}") from None
    return out


def _copy_run(run: h5py.Group, into: h5py.Group) -> None:
    """Copy a run's groups and attributes into ``into``, dataset by dataset (data, dtype,
    chunks, maximum shape, attributes) with its dimension scales made anew: HDF5's object
    copy (``Group.copy``) leaves the copies' scale references pointing nowhere."""
    for name, group in run.items():
        if isinstance(group, h5py.Group):
            _copy_group(group, into.create_group(name))
    into.attrs.update({k: v for k, v in run.attrs.items() if k != GENERATION})


def _copy_group(source: h5py.Group, into: h5py.Group) -> None:
    into.attrs.update(source.attrs)
    datasets = {name: ds for name, ds in source.items() if isinstance(ds, h5py.Dataset)}
    for name, ds in datasets.items():
        copy = into.create_dataset(name, data=ds[()], dtype=ds.dtype, chunks=ds.chunks,
                                   maxshape=ds.maxshape if ds.chunks else None)
        copy.attrs.update({k: v for k, v in ds.attrs.items() if k not in SCALE_ATTRS})
        if ds.is_scale:
            copy.make_scale(name)
    for name, ds in datasets.items():
        for axis, dim in enumerate(ds.dims):
            for scale in dim.values():
                into[name].dims[axis].attach_scale(into[scale.name.rsplit("/", 1)[-1]])


def unpack(path: Path) -> None:
    """Turn a one-file sweep into an index and run files, in place: each run's file written,
    then the index renamed over the file. Killed half-way, the file is the one-file sweep."""
    folder = runs_dir(path)
    folder.mkdir(exist_ok=True)
    with h5py.File(path, "r", locking=False) as old:
        attrs = dict(old.attrs) | {"layout": LAYOUT}
        names = [name for name, run in old["runs"].items() if isinstance(run, h5py.Group)]
        for name in names:
            def write(f: h5py.File, run=old["runs"][name]) -> None:
                _copy_run(run, f)
                f.attrs[GENERATION] = 0

            rewrite_hdf5(folder / f"{name}.h5", write, copy=False)
    links = {name: link_target(path, name) for name in names}
    rewrite_hdf5(path, lambda f: write_index(f, attrs, links), copy=False)
