"""Store: one HDF5 file per sweep, readable with plain h5py while it is being written.

Layout (see README, "HDF5 schema")::

    /                       attrs landscape_version, created, command, config (JSON)
    /runs/<name>            attrs model, norm, lr, seed, batch_size, optimizer, status, ...
    /runs/<name>/steps/     step, epoch, loss, grad_norm, grad_diff, beta_consecutive   (n,)
    /runs/<name>/probe/     step (n,), eta (k,), loss (n,k), grad_diff (n,k), beta (n,),
                            grad_norm (n,), loss_at_theta (n,); split by layer (L modules
                            owning parameters): layer (L,), grad_diff_layer (n,k,L),
                            grad_norm_layer (n,L)
    /runs/<name>/epochs/    epoch, steps, train_loss, train_acc, test_loss, test_acc, seconds,
                            train_mode_loss/acc, eval_mode_loss/acc (a fixed training subset)
    /runs/<name>/<group>/   extra groups declared by instruments (``RunLog.declare``):
                            ics/ and activations/ (see landscape/train/instruments.py)

Every dataset gets the ``units`` and ``description`` attributes of ``schema.FIELDS``, and its
axes are HDF5 dimension scales (``step``, ``eta``, ``layer``, ...): netCDF readers such as
``xarray.open_dataset(path, engine="h5netcdf", group="runs/<name>/probe")`` see named
dimensions. Strings are variable-length UTF-8: attributes come back from h5py as ``str``.

Rows are buffered in memory and appended to chunked, resizable datasets by ``flush()``.
The file is never written in place: each flush copies it beside itself (``.NAME.tmp-PID``),
appends to the copy, closes it and renames it over the file (``os.replace``, atomic on POSIX).
So the file at its path is at every instant a complete, closed HDF5 file -- the one before
the flush or the one after: a reader (``landscape info`` on a live sweep) never sees a
half-written row, a ``kill -9`` at any instant loses at most the rows since the last flush,
and a write that fails (disk full, folder made unwritable) leaves the file as it was. HDF5 in
place is not safe against a kill: measured here, a writer killed inside an in-place flush
left files that did not open or had columns of different lengths (README, "When a sweep is
interrupted"). A buffered row leaves memory only once the rename has happened.

``SweepLock`` (an ``fcntl.flock`` on ``NAME.lock``, released by the OS when its process dies)
keeps a second writer off a file in use.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np

from ..errors import LandscapeError, os_reason
from ..version import __version__
from .schema import (ADDED_FIELDS, EPOCH_FIELDS, FIELDS, GROUPS, INT_FIELDS, PROBE_GRID_FIELDS,
                     PROBE_LAYER_FIELDS, PROBE_ROW_FIELDS, SCHEMA_VERSION, STATUSES, STEP_FIELDS)

TEXT = h5py.string_dtype("utf-8")  # variable-length UTF-8: netCDF strings, str through asstr()

# Test hook: seconds to pause inside each commit (after writing the copy, before the rename)
# and each checkpoint write, so that a stress test's random kills land there often.
WRITE_PAUSE_ENV = "LANDSCAPE_WRITE_PAUSE"


def write_pause() -> None:
    pause = os.environ.get(WRITE_PAUSE_ENV)
    if pause:
        time.sleep(float(pause))


def replace_atomically(path: Path, write: Callable[[Path], None], copy: bool) -> None:
    """Write ``path`` anew without ever writing it in place: ``write(tmp)`` on a temporary file
    beside it (a copy of it when ``copy``), then ``os.replace``; the temporary file is removed
    when anything fails (an ``OSError``, a signal's exception)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if copy:
            shutil.copyfile(path, tmp)
        write(tmp)
        write_pause()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_stale_temporaries(path: Path) -> None:
    """Temporary files a killed writer of ``path`` left beside it (call with the lock held)."""
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        tmp.unlink(missing_ok=True)


class SweepLock:
    """Exclusive use of a sweep file by one writing process: ``fcntl.flock`` on ``PATH.lock``.

    The OS releases the lock when its process ends, however it ends (``kill -9`` included), so
    a lock file left behind by a dead process never blocks. A second writer gets
    ``LandscapeError`` saying the file is in use by another sweep.
    """

    def __init__(self, sweep_path: str | os.PathLike):
        self.sweep_path = Path(sweep_path)
        self.path = Path(f"{sweep_path}.lock")
        self._fd: int | None = None

    def acquire(self) -> "SweepLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            while True:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = os.read(fd, 32).decode(errors="replace").strip()
                    os.close(fd)
                    raise LandscapeError(
                        f"{self.sweep_path} is in use by another sweep"
                        + (f" (process {holder})" if holder else "")) from None
                # A holder that was releasing may have unlinked the file we opened: lock anew.
                try:
                    if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                        break
                except FileNotFoundError:
                    pass
                os.close(fd)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as error:
            raise LandscapeError(f"cannot write {self.sweep_path}: {os_reason(error)} (taking its "
                                 f"lock {self.path.name})") from None
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "SweepLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

def _json_default(obj):
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, (Path, os.PathLike)):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def _describe(group: h5py.Group, group_name: str) -> None:
    """Write ``schema.FIELDS`` into a new group: ``units`` and ``description`` on every dataset,
    and its dimensions as HDF5 dimension scales (the dataset named like a dimension is its
    scale), so that netCDF readers (h5netcdf, xarray) see named dimensions."""
    fields = FIELDS[group_name]
    group.attrs["description"] = GROUPS[group_name]
    datasets = {name: node for name, node in group.items() if isinstance(node, h5py.Dataset)}
    for name, ds in datasets.items():
        field = fields[name]
        if len(field.dims) != ds.ndim:
            raise ValueError(f"{group.name}/{name} has {ds.ndim} axes, the schema names "
                             f"{len(field.dims)}: {field.dims}")
        ds.attrs["units"] = field.units
        ds.attrs["description"] = field.description
        if field.dims == (name,):
            ds.make_scale(name)
    for name, ds in datasets.items():
        for axis, dim in enumerate(fields[name].dims):
            if dim != name:
                if dim not in datasets:
                    raise ValueError(f"{group.name}/{name}: no dataset {dim!r} for its axis {axis}")
                ds.dims[axis].attach_scale(datasets[dim])


def row_counts(run: h5py.Group) -> dict[str, int]:
    """Rows of each group of a run: the length of its row datasets (the resizable ones)."""
    counts = {}
    for group_name, group in run.items():
        lengths = [ds.shape[0] for ds in group.values()
                   if isinstance(ds, h5py.Dataset) and ds.maxshape[:1] == (None,)]
        if lengths:
            counts[group_name] = min(lengths)
    return counts


def truncate_rows(run: h5py.Group, counts: dict[str, int]) -> None:
    """Cut every row dataset of a run to ``counts[group]`` rows (0 for a group not named)."""
    for group_name, group in run.items():
        for ds in group.values():
            if isinstance(ds, h5py.Dataset) and ds.maxshape[:1] == (None,):
                ds.resize(min(ds.shape[0], counts.get(group_name, 0)), axis=0)


def _append(group: h5py.Group, name: str, rows: np.ndarray) -> None:
    """Append rows along axis 0 of a chunked, resizable dataset."""
    ds = group[name]
    n = ds.shape[0]
    ds.resize(n + rows.shape[0], axis=0)
    ds[n:] = rows


class RunLog:
    """Buffered rows of one run, written to ``/runs/<name>`` by the sweep's ``flush``."""

    def __init__(self, name: str, eta: np.ndarray):
        self.name = name
        self.eta = np.asarray(eta, dtype=np.float64).reshape(-1)  # the run's probe grid (k,)
        self._rows: dict[str, dict[str, list]] = {
            "steps": {f: [] for f in STEP_FIELDS},
            "epochs": {f: [] for f in EPOCH_FIELDS},
            "probe": {f: [] for f in PROBE_ROW_FIELDS + PROBE_GRID_FIELDS},
        }
        self._attrs: dict[str, Any] = {}
        self.probe_layers: tuple[str, ...] | None = None  # set by the first probe record
        self._extra: dict[str, tuple[dict, dict]] = {}  # group -> (fields, constants)
        # Rows of each group in the file at the last commit (what a checkpoint refers to).
        self.rows_in_file: dict[str, int] = {}
        self._written: dict[str, dict[str, int]] = {}  # rows the pending commit takes
        self._counted: dict[str, int] = {}
        self.dirty = True  # holds something the file has not: a flush must commit

    def declare(self, group: str, fields: dict[str, tuple[Any, tuple]],
                constants: dict[str, Any] | None = None) -> None:
        """An extra group of rows ``/runs/<name>/<group>/`` (e.g. a probe's records).

        ``fields`` maps each row field to (dtype, trailing shape): a row of ``append`` holds
        one value of that shape per field, stored as dataset (n,) + shape. ``constants`` are
        written once (a list of str becomes a string dataset). Every field and constant must
        be described in ``schema.FIELDS[group]`` (units, description, dimension names). The
        group and its empty datasets are created at the next ``flush``.
        """
        if group in self._rows:
            raise ValueError(f"run {self.name}: group {group!r} is already declared")
        undescribed = (set(fields) | set(constants or {})) - set(FIELDS.get(group, {}))
        if undescribed:  # every dataset of the file is described in schema.py
            raise ValueError(f"run {self.name}: group {group!r} fields {sorted(undescribed)} are "
                             "not described in landscape/store/schema.py")
        self._extra[group] = ({f: (np.dtype(d), tuple(shape)) for f, (d, shape) in fields.items()},
                              dict(constants or {}))
        self.dirty = True
        self._rows[group] = {f: [] for f in fields}

    def append(self, group: str, **row) -> None:
        """One row of a ``declare``d group: every field, each a value of its declared shape."""
        fields = self._extra[group][0]
        if set(row) != set(fields):
            raise ValueError(f"run {self.name}: group {group!r} rows have fields {sorted(fields)}, "
                             f"got {sorted(row)}")
        for f, (dtype, shape) in fields.items():
            self._rows[group][f].append(np.asarray(row[f], dtype=dtype).reshape(shape))
        self.dirty = True

    def add_steps(self, **columns) -> None:
        """Append steps: each of STEP_FIELDS as an equal-length 1-D array."""
        for f in STEP_FIELDS:
            self._rows["steps"][f].extend(np.asarray(columns[f]).reshape(-1).tolist())
        self.dirty = True

    def add_epoch(self, **values) -> None:
        """One epoch's row: every field of EPOCH_FIELDS; one of ``schema.ADDED_FIELDS`` left
        out (not measured: the train/eval-mode statistics of the DLN) is written as its fill."""
        for f in EPOCH_FIELDS:
            self._rows["epochs"][f].append(values[f] if f in values
                                           else ADDED_FIELDS[("epochs", f)])
        self.dirty = True

    def add_probe(self, record) -> None:
        """Append a ``probes.LandscapeRecord`` taken on this run's eta grid."""
        if not np.allclose(self.eta, record.eta, rtol=1e-6, atol=0):
            raise ValueError(f"run {self.name}: probe etas {record.eta} differ from {self.eta}")
        for f in PROBE_ROW_FIELDS + PROBE_GRID_FIELDS:
            self._rows["probe"][f].append(getattr(record, f))
        self.dirty = True
        # Records without the split by layer (made elsewhere, or older) store none.
        layers = (tuple(record.layer) if getattr(record, "grad_diff_layer", None) is not None
                  else ())
        if self.probe_layers is None:  # the first record fixes whether the split is stored
            self._set_probe_layers(layers)
        if layers != self.probe_layers:
            raise ValueError(f"run {self.name}: probe layers {layers} differ from "
                             f"{self.probe_layers}")
        if layers:
            for f in PROBE_LAYER_FIELDS:
                self._rows["probe"][f].append(getattr(record, f))

    def _set_probe_layers(self, layers: tuple[str, ...]) -> None:
        self.probe_layers = layers
        if layers:
            self._rows["probe"].update({f: [] for f in PROBE_LAYER_FIELDS})

    def set_attrs(self, **attrs) -> None:
        """Run attributes (status, diverged_step, ...) written at the next flush."""
        if "status" in attrs and attrs["status"] not in STATUSES:
            raise ValueError(f"unknown status {attrs['status']!r}")
        self._attrs.update(attrs)
        self.dirty = True

    @property
    def attrs(self) -> dict[str, Any]:
        """The run's attributes as last set (a copy): ``status``, ``steps_completed``, ..."""
        return dict(self._attrs)

    def rows_held(self) -> dict[str, int]:
        """Rows of each group in the file and buffered: what the file holds after the next
        flush."""
        held = dict(self.rows_in_file)
        for group, columns in self._rows.items():
            buffered = max(map(len, columns.values()), default=0)
            if buffered:
                held[group] = held.get(group, 0) + buffered
        return held

    def take_pending(self) -> dict:
        """The rows buffered since the last take, handed over (the buffers empty), with the
        run's attributes and declarations so far: a log kept in another process (a Ray
        worker's) replays them into the writer's log with ``absorb``. Plain data: picklable."""
        rows = {group: {f: values for f, values in columns.items() if values}
                for group, columns in self._rows.items()}
        for columns in self._rows.values():
            for f in columns:
                columns[f] = []
        self.dirty = False
        return {"name": self.name, "eta": self.eta, "attrs": dict(self._attrs),
                "extra": dict(self._extra), "probe_layers": self.probe_layers, "rows": rows}

    def absorb(self, pending: dict) -> None:
        """Replay ``take_pending``'s block: its declarations, rows and attributes, as if the
        calls that made them had been made on this log."""
        if pending["name"] != self.name or not np.array_equal(pending["eta"], self.eta):
            raise ValueError(f"rows of run {pending['name']!r} replayed into run {self.name!r}")
        for group, (fields, constants) in pending["extra"].items():
            if group not in self._extra:
                self._extra[group] = (fields, constants)
                self._rows[group] = {f: [] for f in fields}
        if pending["probe_layers"] is not None and self.probe_layers is None:
            self._set_probe_layers(pending["probe_layers"])
        for group, columns in pending["rows"].items():
            for f, values in columns.items():
                self._rows[group][f].extend(values)
        self._attrs.update(pending["attrs"])
        self.dirty = True

    def _write(self, root: h5py.Group) -> None:
        if f"runs/{self.name}" not in root:
            self._create(root.create_group(f"runs/{self.name}"))
        run = root[f"runs/{self.name}"]
        for group_name in self._extra.keys() - run.keys():
            self._create_extra(run.create_group(group_name), group_name)
        if self.probe_layers and "layer" not in run["probe"]:
            self._create_probe_layers(run["probe"])
        run.attrs.update(self._attrs)
        self._written = {}
        for group_name, columns in self._rows.items():
            for f, values in columns.items():
                if values:
                    _append(run[group_name], f, self._array(group_name, f, values))
                    self._written.setdefault(group_name, {})[f] = len(values)
        self._counted = row_counts(run)

    def _committed(self) -> None:
        """The commit that took the rows of ``_write`` is on disk: they leave the buffers."""
        for group_name, fields in self._written.items():
            for f, n in fields.items():
                del self._rows[group_name][f][:n]
        self._written = {}
        self.rows_in_file = self._counted
        self.dirty = False

    def _array(self, group: str, field: str, values) -> np.ndarray:
        if group in self._extra:
            dtype, shape = self._extra[group][0][field]
            return np.asarray(values, dtype=dtype).reshape((len(values),) + shape)
        dtype = np.int64 if field in INT_FIELDS else np.float64
        width = (len(self.eta),) if group == "probe" and field in PROBE_GRID_FIELDS else ()
        if group == "probe" and field in PROBE_LAYER_FIELDS:
            width = PROBE_LAYER_FIELDS[field](len(self.eta), len(self.probe_layers))
        return np.asarray(values, dtype=dtype).reshape((len(values),) + width)

    def _create(self, run: h5py.Group) -> None:
        """Every dataset exists from the start, empty, so readers see the full schema."""
        for group_name, columns in self._rows.items():
            if group_name in self._extra:
                continue  # created by _write
            group = run.create_group(group_name)
            for f in columns:
                empty = self._array(group_name, f, [])
                group.create_dataset(f, shape=empty.shape, dtype=empty.dtype,
                                     maxshape=(None,) + empty.shape[1:],
                                     chunks=(1024,) + empty.shape[1:])
        run["probe"].create_dataset("eta", data=self.eta)
        for group_name in run:
            _describe(run[group_name], group_name)

    def _create_probe_layers(self, probe: h5py.Group) -> None:
        layer = probe.create_dataset("layer", data=list(self.probe_layers), dtype=TEXT)
        layer.attrs["units"], layer.attrs["description"] = (FIELDS["probe"]["layer"].units,
                                                            FIELDS["probe"]["layer"].description)
        layer.make_scale("layer")
        for f in PROBE_LAYER_FIELDS:
            empty = self._array("probe", f, [])
            ds = probe.create_dataset(f, shape=empty.shape, dtype=empty.dtype,
                                      maxshape=(None,) + empty.shape[1:],
                                      chunks=(256,) + empty.shape[1:])
            ds.attrs["units"], ds.attrs["description"] = (FIELDS["probe"][f].units,
                                                          FIELDS["probe"][f].description)
            for axis, dim in enumerate(FIELDS["probe"][f].dims):
                ds.dims[axis].attach_scale(probe[dim])

    def _create_extra(self, group: h5py.Group, group_name: str) -> None:
        fields, constants = self._extra[group_name]
        for f, (dtype, shape) in fields.items():
            group.create_dataset(f, shape=(0,) + shape, dtype=dtype, maxshape=(None,) + shape,
                                 chunks=(max(1, min(1024, 2 ** 16 // max(1, int(np.prod(shape))))),)
                                 + shape)
        for f, value in constants.items():
            if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                group.create_dataset(f, data=list(value), dtype=TEXT)
            else:
                group.create_dataset(f, data=np.asarray(value))
        _describe(group, group_name)


class SweepStore:
    """One HDF5 file for a sweep. Refuses to replace an existing file unless ``overwrite``;
    ``SweepStore.reopen(path)`` continues writing a sweep file already there (``--resume``)."""

    def __init__(self, path: str | os.PathLike, *, config: dict, command: str = "",
                 overwrite: bool = False):
        self.path = Path(path)
        if self.path.exists() and self.path.is_dir():
            raise LandscapeError(f"{self.path} is a directory, not a sweep file")
        if self.path.exists() and not overwrite:
            raise LandscapeError(f"{self.path} exists; replace it with overwrite=True (--overwrite "
                                 "on the command line), or choose another path")

        def create(tmp: Path) -> None:
            with h5py.File(tmp, "w") as f:
                f.attrs["landscape_version"] = __version__
                f.attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
                f.attrs["command"] = command
                f.attrs["config"] = json.dumps(config, default=_json_default, sort_keys=True)
                f.attrs["schema"] = SCHEMA_VERSION
                f.create_group("runs")

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            replace_atomically(self.path, create, copy=False)
        except OSError as error:
            raise LandscapeError(f"cannot write {self.path}: {os_reason(error)}") from None
        self.runs: dict[str, RunLog] = {}
        self.run_attrs: dict[str, dict[str, Any]] = {}

    @classmethod
    def reopen(cls, path: str | os.PathLike) -> "SweepStore":
        """The store of an existing sweep file: its runs' attributes in ``run_attrs``, its
        root attributes in ``attrs``; nothing is written until a run or a flush asks."""
        store = cls.__new__(cls)
        store.path, store.runs = Path(path), {}
        try:
            with h5py.File(store.path, "r", locking=False) as f:
                if "landscape_version" not in f.attrs or not isinstance(f.get("runs"), h5py.Group):
                    raise LandscapeError(f"{store.path} is not a landscape sweep file")
                store.attrs = {k: _text(v) for k, v in f.attrs.items()}
                store.run_attrs = {name: {k: _text(v) for k, v in group.attrs.items()}
                                   for name, group in f["runs"].items()}
        except OSError as error:
            raise LandscapeError(f"cannot read {store.path}: {os_reason(error)}") from None
        return store

    def run(self, name: str, eta, **attrs) -> RunLog:
        """The run group (probe grid ``eta``, attributes, status ``running``), written at once.
        A run already in the file (``reopen``) gets its attributes set and keeps its rows."""
        if name in self.runs:
            raise ValueError(f"run {name!r} already in {self.path}")
        log = RunLog(name, eta)
        log.set_attrs(status="running", **attrs)
        self.runs[name] = log
        self.flush(log)
        return log

    def commit(self, write: Callable[[h5py.File], None]) -> None:
        """Apply ``write(file)`` to a copy of the file and rename it over the file."""
        def on_copy(tmp: Path) -> None:
            with h5py.File(tmp, "a") as f:
                write(f)

        try:
            replace_atomically(self.path, on_copy, copy=True)
        except OSError as error:
            raise LandscapeError(f"cannot write {self.path}: {os_reason(error)}; it keeps every "
                                 "row of its last flush") from None

    def flush(self, *logs: RunLog) -> None:
        """Append the buffered rows of ``logs`` (all runs when none given) in one commit; none
        when they hold nothing new (a commit copies the file)."""
        logs = tuple(log for log in logs or self.runs.values() if log.dirty)
        if not logs:
            return

        def write(f: h5py.File) -> None:
            for log in logs:
                log._write(f)

        self.commit(write)
        for log in logs:
            log._committed()

    def truncate(self, counts: dict[str, dict[str, int]]) -> None:
        """Cut the rows of runs already in the file: ``counts[run][group]`` rows are kept (none
        of a group not named), so that a run continued from a checkpoint repeats no step."""
        def write(f: h5py.File) -> None:
            for name, kept in counts.items():
                if f"runs/{name}" in f:
                    truncate_rows(f[f"runs/{name}"], kept)

        if counts:
            self.commit(write)
        for name, kept in counts.items():  # logs of this store: what the file now holds
            if name in self.runs:
                log = self.runs[name]
                log.rows_in_file = {g: min(n, kept.get(g, 0))
                                    for g, n in log.rows_in_file.items()}

    def set_root_attrs(self, **attrs) -> None:
        def write(f: h5py.File) -> None:
            for key, value in attrs.items():
                f.attrs[key] = value if isinstance(value, str) else json.dumps(
                    value, default=_json_default, sort_keys=True)

        self.commit(write)


def _text(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    return value
