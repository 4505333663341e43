"""A run's rows in memory (``RunLog``) and how they become HDF5 groups of a run.

``RunLog`` buffers a run's rows and attributes until its store flushes them; ``_write(run)``
appends them to an HDF5 group laid out as the schema says (``schema.FIELDS``: units,
descriptions, dimension scales). The same code writes a run's file at a compaction, replays a
journal for a reader, and packs a sweep into one file, so the three cannot disagree.
"""

from __future__ import annotations

from typing import Any

import h5py
import numpy as np

from .schema import (ADDED_FIELDS, ADDED_FROM_ATTRS, EPOCH_FIELDS, FIELDS, GROUPS, INT_FIELDS,
                     PROBE_GRID_FIELDS, PROBE_LAYER_FIELDS, PROBE_ROW_FIELDS, STATUSES,
                     STEP_FIELDS)

TEXT = h5py.string_dtype("utf-8")  # variable-length UTF-8: netCDF strings, str through asstr()


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


def added_fill(group: str, field: str, attrs) -> Any:
    """The value of an added field (``schema.ADDED_FIELDS``) in rows written without it: the
    run attribute ``schema.ADDED_FROM_ATTRS`` names where the run has it, else the fill."""
    attr = ADDED_FROM_ATTRS.get((group, field))
    return attrs[attr] if attr is not None and attr in attrs else ADDED_FIELDS[(group, field)]


def _add_missing(run: h5py.Group, rows: dict[str, dict[str, list]]) -> None:
    """Datasets of the schema that a run's group written by an earlier version lacks (a
    resumed or journalled run of an older file), created with the fill in its rows so far."""
    for group_name, columns in rows.items():
        group = run.get(group_name)
        if not isinstance(group, h5py.Group) or "step" not in group:
            continue
        for f in columns.keys() - group.keys():
            if (group_name, f) not in ADDED_FIELDS:
                continue
            fill = np.full(group["step"].shape[0], added_fill(group_name, f, run.attrs),
                           dtype=np.int64 if f in INT_FIELDS else np.float64)
            ds = group.create_dataset(f, data=fill, maxshape=(None,), chunks=(1024,))
            field = FIELDS[group_name][f]
            ds.attrs["units"], ds.attrs["description"] = field.units, field.description
            ds.dims[0].attach_scale(group["step"])


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
        self._watchers: list = []  # live views of the rows as they come (``watch``)

    def watch(self, watcher) -> None:
        """Call ``watcher(log, group, rows)`` with the rows of every ``add_steps``,
        ``add_epoch``, ``add_probe`` and ``append`` from now on (``rows``: each field's values
        as an array, one entry per row): a live view of the run (``train.livelog``: TensorBoard
        events), beside the file, never instead of it."""
        self._watchers.append(watcher)

    def _tell(self, group: str, rows: dict[str, Any]) -> None:
        for watcher in self._watchers:
            watcher(self, group, {f: np.asarray(v) for f, v in rows.items()})

    def constants(self, group: str) -> dict[str, Any]:
        """A ``declare``d group's constants (its ``layer`` names, ...); {} for another group."""
        return dict(self._extra[group][1]) if group in self._extra else {}

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
        if self._watchers:
            self._tell(group, {f: [self._rows[group][f][-1]] for f in fields})

    def add_steps(self, **columns) -> None:
        """Append steps: each of STEP_FIELDS as an equal-length 1-D array; one of
        ``schema.ADDED_FIELDS`` left out (``learning_rate``) is written as its fill (NaN)."""
        n = np.asarray(columns["step"]).size
        added = {}
        for f in STEP_FIELDS:
            values = columns[f] if f in columns else np.full(n, ADDED_FIELDS[("steps", f)])
            added[f] = np.asarray(values).reshape(-1)
            self._rows["steps"][f].extend(added[f].tolist())
        self.dirty = True
        if self._watchers:
            self._tell("steps", added)

    def add_epoch(self, **values) -> None:
        """One epoch's row: every field of EPOCH_FIELDS; one of ``schema.ADDED_FIELDS`` left
        out (not measured: the train/eval-mode statistics of the DLN) is written as its fill."""
        for f in EPOCH_FIELDS:
            self._rows["epochs"][f].append(values[f] if f in values
                                           else ADDED_FIELDS[("epochs", f)])
        self.dirty = True
        if self._watchers:
            self._tell("epochs", {f: self._rows["epochs"][f][-1:] for f in EPOCH_FIELDS})

    def add_probe(self, record) -> None:
        """Append a ``probes.LandscapeRecord`` taken on this run's eta grid, scaled by the
        learning rate at its step (a schedule's LR(t) x --etas: the same multiples)."""
        eta = np.asarray(record.eta, dtype=np.float64).reshape(-1)
        scale = eta / self.eta if eta.shape == self.eta.shape else None
        if scale is None or not np.allclose(scale, scale[0], rtol=1e-6, atol=0):
            raise ValueError(f"run {self.name}: probe etas {record.eta} are no multiple of "
                             f"{self.eta}")
        lr = getattr(record, "lr", None)  # None: a record made outside a training loop
        for f in PROBE_ROW_FIELDS + PROBE_GRID_FIELDS:
            self._rows["probe"][f].append(getattr(record, f) if f != "learning_rate"
                                          else np.nan if lr is None else lr)
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
        if self._watchers:
            self._tell("probe", {f: columns[-1:] for f, columns in self._rows["probe"].items()})

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
        run's attributes and declarations so far: a journal record, or a block a log kept in
        another process (a Ray worker's) replays into the writer's log with ``absorb``. Plain
        data, each field's rows one array of its stored dtype: picklable, and what
        ``journal.encode`` stores."""
        rows = {group: {f: self._array(group, f, values) for f, values in columns.items()
                        if values}
                for group, columns in self._rows.items()}
        for columns in self._rows.values():
            for f in columns:
                columns[f] = []
        self.dirty = False
        return {"name": self.name, "eta": self.eta, "attrs": dict(self._attrs),
                "extra": {g: {"fields": fields, "constants": constants}
                          for g, (fields, constants) in self._extra.items()},
                "probe_layers": self.probe_layers, "rows": rows}

    def absorb(self, pending: dict) -> None:
        """Replay ``take_pending``'s block: its declarations, rows and attributes, as if the
        calls that made them had been made on this log."""
        if pending["name"] != self.name or not np.array_equal(pending["eta"], self.eta):
            raise ValueError(f"rows of run {pending['name']!r} replayed into run {self.name!r}")
        for group, declared in pending["extra"].items():
            if group not in self._extra:
                fields = {f: (np.dtype(dtype), tuple(shape))
                          for f, (dtype, shape) in declared["fields"].items()}
                self._extra[group] = (fields, dict(declared["constants"]))
                self._rows[group] = {f: [] for f in fields}
        if pending["probe_layers"] is not None and self.probe_layers is None:
            self._set_probe_layers(tuple(pending["probe_layers"]))
        self._attrs.update(pending["attrs"])
        for group, columns in pending["rows"].items():
            for f, values in columns.items():
                self._rows[group][f].extend(values)
            self._pad_added(group, columns)
        self.dirty = True

    def _pad_added(self, group: str, columns: dict) -> None:
        """Rows of a block written by an earlier version, which lacked a field added since:
        that field's fill (``added_fill``) in each of them, so columns stay aligned."""
        n = len(columns.get("step", ()))
        for f in self._rows[group].keys() - columns.keys():
            if n and (group, f) in ADDED_FIELDS:
                self._rows[group][f].extend([added_fill(group, f, self._attrs)] * n)

    def _write(self, run: h5py.Group) -> None:
        """Append the buffered rows to ``run`` (a run's group: a run file's root), creating
        what it lacks; the rows stay buffered until ``_committed``."""
        if "steps" not in run:
            self._create(run)
        _add_missing(run, self._rows)
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


