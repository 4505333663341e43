"""Store: a sweep is an index file and a folder of run files, readable with plain h5py while
it is being written.

Layout (README, "HDF5 schema")::

    SWEEP.h5                  the index: attrs landscape_version, created, command, config
                              (JSON), schema, layout = "run-files"
    SWEEP.h5:/runs/<name>     an HDF5 external link to SWEEP.h5.runs/<name>.h5, relative:
                              the folder moves and copies with the file
    SWEEP.h5.runs/<name>.h5   the run: root attrs model, norm, lr, seed, ..., status; its groups
                              steps/, probe/, epochs/ and the instruments' (runlog.py)
    SWEEP.h5.runs/<name>.h5.journal-G   its flushes since the file was last written

So ``h5py.File("SWEEP.h5")["runs/<name>/steps/loss"]`` reads a run through its link, as it
read the one file of earlier versions (layout "one-file", which ``read_sweep`` still reads and
``landscape pack`` writes, to share a sweep as one file).

Why this layout (measured, ``benchmarks/RESULTS.md``): the earlier store rewrote the whole file
at each flush (copy and rename: kill-safe, never torn for a reader) at about 2 ms per MiB of
file, whatever was appended. Here a flush appends a record to its run's journal and a run's
file is rewritten (built in memory and renamed over it) only when its journal has outgrown it
and when the run ends (``runfile.py``): a flush costs what it appends, a rewrite costs one run, and the index
is rewritten only when a run is added. Every file at its path is at every instant whole (a
rename) or a journal that ends on a whole record as far as any reader checks (a CRC): kill -9
anywhere loses at most the rows since the last flush, and a write that fails (disk full, a
file-size limit) leaves every committed row.

Locks: ``SweepLock`` (``SWEEP.h5.lock``) keeps a second sweep off the file; each run's
``RunLock`` (``NAME.h5.lock``) is held by the process writing that run, so a reader can tell a
run whose writer died (``stale``) from one being written.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np

from ..errors import LandscapeError, os_reason
from ..version import __version__
from .files import lock_is_free, rewrite_hdf5, temporaries
from .layout import LAYOUT, link_target, run_groups, runs_dir, write_index
from .pack import unpack
from .runfile import RESERVED_ATTRS, RunFile, RunView, journals
from .runlog import RunLog
from .schema import SCHEMA_VERSION

RUN_FILE_SUFFIXES = (".h5", ".lock")  # with journals and temporaries: what a runs folder holds
# A resumed sweep waits this long for a killed driver's Ray workers to let go of their runs
# (they stop within distributed.DRIVER_WATCH_SECONDS and a training step of noticing).
WRITERS_GONE_SECONDS = 120.0


def _json_default(obj):
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, (Path, os.PathLike)):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def _root_attrs(config: dict, command: str) -> dict[str, Any]:
    return {"landscape_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": command,
            "config": json.dumps(config, default=_json_default, sort_keys=True),
            "schema": SCHEMA_VERSION, "layout": LAYOUT}


class RunWriter:
    """Writes runs into their files in a folder (each a file, its journal and its lock): a Ray
    worker's writer, and the part of ``SweepStore`` that writes runs. A run whose file is there
    already (``run`` of a resumed or continued run) is continued: its rows kept, a killed
    writer's journal compacted."""

    def __init__(self, folder: str | os.PathLike, paths: dict[str, Path] | None = None):
        self.folder = Path(folder)
        self.paths: dict[str, Path] = dict(paths or {})  # run files found elsewhere (links)
        self.runs: dict[str, RunLog] = {}
        self.files: dict[str, RunFile] = {}

    def _run_path(self, name: str) -> Path:
        return self.paths.get(name) or self.folder / f"{name}.h5"

    def _file(self, name: str) -> RunFile:
        """The run's file, taken for writing (its lock held; a killed writer's journal
        compacted)."""
        if name not in self.files:
            file = RunFile(self._run_path(name))
            file.open()
            self.files[name] = file
        return self.files[name]

    def run(self, name: str, eta, **attrs) -> RunLog:
        """The run's file (probe grid ``eta``, attributes, status ``running``), written at once.
        A run whose file is there gets its attributes set and keeps its rows."""
        if name in self.runs:
            raise ValueError(f"run {name!r} is already being written in {self.folder}")
        log = RunLog(name, eta)
        log.set_attrs(status="running", **attrs)
        if self._run_path(name).exists():
            file = self._file(name)
            log.rows_in_file = file.rows()
            file.flush(log)
        else:
            file = RunFile(self._run_path(name))
            try:
                file.create(log)
            except OSError as error:
                file.close()
                raise LandscapeError(f"cannot write {file.path}: {os_reason(error)}") from None
            self.files[name] = file
            self._created(name, log)
        self.runs[name] = log
        return log

    def _created(self, name: str, log: RunLog) -> None:
        """A new run's file is there (``SweepStore``: its link goes into the index)."""

    def flush(self, *logs: RunLog) -> None:
        """Each log's new rows on disk (all runs when none given): a record appended to its
        run's journal, or its file rewritten when one is due (``RunFile.flush``). A run that
        has ended (status not ``running``) is left one whole file, and its lock released."""
        for log in logs or tuple(self.runs.values()):
            if not log.dirty:
                continue
            file = self._file(log.name)  # taken anew if the run had ended and goes on
            file.flush(log)
            if log.attrs.get("status") != "running":
                self.release(log.name)

    def set_run_attrs(self, name: str, **attrs) -> None:
        """Attributes of a run this writer does not write (a Ray unit's, whose worker ended):
        its file taken, the attributes flushed, the run released."""
        log = RunLog(name, self._eta(name))
        log.rows_in_file = self._file(name).rows()
        log.set_attrs(**attrs)
        self.files[name].flush(log)
        self.release(name)

    def _eta(self, name: str):
        with RunView(self._run_path(name)) as run:
            return run["probe/eta"][()]

    def truncate(self, counts: dict[str, dict[str, int]]) -> None:
        """Cut the rows of runs already written: ``counts[run][group]`` rows are kept (none
        of a group not named), so that a run continued from a checkpoint repeats no step."""
        for name, kept in counts.items():
            if not self._run_path(name).exists():
                continue
            file = self._file(name)
            try:
                file.compact(cut=kept)
            except OSError as error:
                raise LandscapeError(f"cannot write {file.path}: {os_reason(error)}") from None
            if name in self.runs:
                log = self.runs[name]
                log.rows_in_file = {g: min(n, kept.get(g, 0))
                                    for g, n in log.rows_in_file.items()}

    def release(self, *names: str) -> None:
        """Let go of runs (their locks), e.g. for another process to continue them."""
        for name in names:
            file = self.files.pop(name, None)
            if file is not None:
                file.close()

    def close(self) -> None:
        """Release every run still open (their rows stay: a journal, if any, for the next
        writer; ``SweepStore.reopen`` compacts it)."""
        self.release(*self.files)


class SweepStore(RunWriter):
    """A sweep's index and run files. Refuses to replace an existing sweep unless
    ``overwrite``; ``SweepStore.reopen(path)`` continues one already there (``--resume``)."""

    def __init__(self, path: str | os.PathLike, *, config: dict, command: str = "",
                 overwrite: bool = False):
        super().__init__(runs_dir(path))
        self.path = Path(path)
        if self.path.exists() and self.path.is_dir():
            raise LandscapeError(f"{self.path} is a directory, not a sweep file")
        if (self.path.exists() or _holds_runs(self.folder)) and not overwrite:
            there = self.path if self.path.exists() else self.folder
            raise LandscapeError(f"{there} exists; replace it with overwrite=True (--overwrite "
                                 "on the command line), or choose another path")
        self.attrs = _root_attrs(config, command)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _clear_runs(self.folder)
            self.folder.mkdir(exist_ok=True)
            rewrite_hdf5(self.path, lambda f: write_index(f, self.attrs, {}), copy=False)
        except OSError as error:
            raise LandscapeError(f"cannot write {self.path}: {os_reason(error)}") from None
        self.run_attrs: dict[str, dict[str, Any]] = {}
        self.linked: set[str] = set()  # runs the index links

    @classmethod
    def joined(cls, path: str | os.PathLike, *, config: dict, command: str = "") -> "SweepStore":
        """A sweep that writers add runs to one at a time (``train.Recorder``: a user's own
        loop over learning rates or seeds): created when ``path`` is not there, else reopened
        with its runs left to their writers (``reopen(settle=False)``). Call with the sweep's
        lock held: the index changes only under it."""
        if not Path(path).exists():
            return cls(path, config=config, command=command)
        return cls.reopen(path, settle=False)

    @classmethod
    def reopen(cls, path: str | os.PathLike, settle: bool = True) -> "SweepStore":
        """The store of an existing sweep: its runs' attributes in ``run_attrs``, its root
        attributes in ``attrs``; journals its killed writers left compacted. A one-file sweep
        (earlier versions, ``landscape pack``) is turned into run files first. Call with the
        sweep's lock held. ``settle=False``: the runs are neither waited for nor read (another
        process may be writing one; ``run_attrs`` is empty), only linked runs are known."""
        store = cls.__new__(cls)
        store.path = Path(path)
        try:
            with h5py.File(store.path, "r", locking=False) as f:
                if "landscape_version" not in f.attrs or not isinstance(f.get("runs"), h5py.Group):
                    raise LandscapeError(f"{store.path} is not a landscape sweep file")
                store.attrs = {k: _text(v) for k, v in f.attrs.items()}
            if store.attrs.get("layout") != LAYOUT:
                unpack(store.path)
                store.attrs["layout"] = LAYOUT
            with h5py.File(store.path, "r", locking=False) as f:
                paths = {name: source.path for name, source in run_groups(f, store.path)}
            RunWriter.__init__(store, runs_dir(path), paths)
            store.linked = set(paths)
            store.run_attrs = {}
            if settle:
                wait_for_writers(list(paths.values()))
                store.run_attrs = {name: store._settle(name) for name in paths}
        except OSError as error:
            raise LandscapeError(f"cannot read {store.path}: {os_reason(error)}") from None
        return store

    def _settle(self, name: str) -> dict[str, Any]:
        """A run's attributes; a journal its killed writer left is compacted into its file."""
        path = self._run_path(name)
        for tmp in temporaries(path):
            tmp.unlink(missing_ok=True)
        if journals(path):
            self._file(name)
            self.release(name)
        return self.read_run_attrs(name)

    def read_run_attrs(self, name: str) -> dict[str, Any]:
        """A run's attributes as its file and journal hold them now."""
        with RunView(self._run_path(name)) as run:
            return {k: _text(v) for k, v in run.attrs.items() if k not in RESERVED_ATTRS}

    def _created(self, name: str, log: RunLog) -> None:
        self.add_runs(name)
        self.run_attrs[name] = log.attrs

    def add_runs(self, *names: str) -> None:
        """Link runs whose files are in the runs folder into the index (those not in it yet,
        in one write): the sweep's readers see them."""
        new = [name for name in dict.fromkeys(names) if name not in self.linked]

        def link(f: h5py.File) -> None:
            for name in new:
                f["runs"][name] = h5py.ExternalLink(link_target(self.path, name), "/")

        if new:
            self._commit_index(link)
            self.linked.update(new)

    def set_root_attrs(self, **attrs) -> None:
        values = {key: value if isinstance(value, str) else json.dumps(
            value, default=_json_default, sort_keys=True) for key, value in attrs.items()}
        self._commit_index(lambda f: f.attrs.update(values))
        self.attrs.update(values)

    def _commit_index(self, write: Callable[[h5py.File], None]) -> None:
        """Apply ``write(index)`` to a copy of the index and rename it over the index (it
        holds links and attributes only: kilobytes)."""
        try:
            rewrite_hdf5(self.path, write, copy=True)
        except OSError as error:
            raise LandscapeError(f"cannot write {self.path}: {os_reason(error)}") from None


def wait_for_writers(paths: list[Path], seconds: float = WRITERS_GONE_SECONDS) -> None:
    """Until no process writes these run files: a sweep resumed while a Ray worker of its
    killed driver still writes a run (it stops by itself: ``distributed.DriverWatch``) waits
    for it, so that what the resume plans from is final; a writer that does not stop within
    ``seconds`` is one line."""
    deadline = time.monotonic() + seconds
    while busy := [p for p in paths if not lock_is_free(p)]:
        if time.monotonic() > deadline:
            raise LandscapeError(f"{busy[0]} is still being written by another process after "
                                 f"{seconds:.0f} s (a worker of the sweep's killed driver?): "
                                 "stop it, then resume")
        time.sleep(0.2)


def _holds_runs(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def _clear_runs(folder: Path) -> None:
    """Remove a runs folder's run files (an overwritten sweep's), nothing else."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.is_file() and (path.name.endswith(RUN_FILE_SUFFIXES) or ".journal-" in path.name
                               or ".tmp-" in path.name):
            path.unlink()


def _text(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    return value
