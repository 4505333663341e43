"""Where a sweep's runs are: in its run files (layout "run-files") or in the file itself.

A sweep written by this version is an index (``SWEEP.h5``) whose ``/runs/<name>`` are HDF5
external links to ``SWEEP.h5.runs/<name>.h5``, relative, so the folder moves with the file
(``write.py``). Files of earlier versions and ``landscape pack``'s hold every run as a group
under ``/runs`` (layout "one-file"). ``run_groups`` yields each run's group either way.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import ContextManager, Iterator

import h5py

from .runfile import RunView

LAYOUT = "run-files"  # the index's ``layout`` attribute
ONE_FILE = "one-file"  # every run a group of the file (earlier versions, ``landscape pack``)


def runs_dir(path: str | os.PathLike) -> Path:
    """Where a sweep's run files live: ``SWEEP.h5.runs/`` beside the index."""
    return Path(f"{path}.runs")


def run_file(sweep: str | os.PathLike, name: str) -> Path:
    """A run's own HDF5 file in a sweep of run files: open it with anything that reads HDF5
    or netCDF (``xarray.open_dataset(run_file(SWEEP, NAME), engine="h5netcdf",
    group="probe")``). It holds the run's rows up to its last compaction (all of them once the
    run has ended); ``read_sweep`` adds the journal's."""
    return runs_dir(sweep) / f"{name}.h5"


def link_target(index: Path, name: str) -> str:
    """The run file's path as the index's link holds it: relative to the index's folder."""
    return f"{runs_dir(index).name}/{name}.h5"


def write_index(f: h5py.File, attrs: dict, links: dict[str, str]) -> None:
    """A new index in the empty file ``f``: root ``attrs``, ``/runs/<name>`` -> ``links[name]``."""
    f.attrs.update(attrs)
    runs = f.create_group("runs")
    for name, target in links.items():
        runs[name] = h5py.ExternalLink(target, "/")


def resolve(index: Path, name: str, target: str) -> Path:
    """A run file as the index's link names it (relative to the index's folder); where that is
    not there, in ``runs_dir(index)``: a sweep renamed with its folder (``a.h5`` and
    ``a.h5.runs/`` to ``b.h5`` and ``b.h5.runs/``) still reads, though plain h5py follows the
    links to ``a.h5.runs/``."""
    linked = index.parent / target
    return linked if linked.exists() else run_file(index, name)


def run_groups(index: h5py.File, path: Path) -> Iterator[tuple[str, ContextManager[h5py.Group]]]:
    """Each run of the open sweep file ``index`` (at ``path``): its name and a context giving
    its group (a run file and its journal read into memory, or the file's own group)."""
    for name in index["runs"]:
        link = index["runs"].get(name, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            yield name, RunView(resolve(path, name, link.filename))
        elif isinstance(index["runs"].get(name), h5py.Group):
            yield name, contextlib.nullcontext(index["runs"][name])
