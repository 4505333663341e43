"""A sweep file as tidy pandas tables, and ``landscape export`` (CSV or Parquet files).

``to_frames(path)`` gives one long table per kind of row, each with the run's name and every
run attribute as columns, so a pandas user can filter, group and plot without knowing HDF5:

========================  ==================================================================
``runs``                  one row per run: its attributes
``steps``                 one row per run x training step (``steps/``)
``probes``                one row per run x probed step x eta (``probe/``; the per-step
                          ``beta``, ``grad_norm``, ``loss_at_theta`` repeat over eta)
``epochs``                one row per run x epoch (``epochs/``)
``probe_layers``          one row per run x probed step x layer x eta: the probe split by layer
``curvature``             one row per run x measured step x eigenvalue rank (``curvature/``)
``weights``               one row per run x step x layer (``weights/``)
``ics``                   one row per run x probed step x layer (when a run has ``ics/``)
``activations``           one row per run x probed step x layer (when a run has
                          ``activations/``): ``mean``, ``std``
``activation_histograms`` one row per run x probed step x layer x bin: ``bin_low``,
                          ``bin_high``, ``fraction``
``spectrum``              one row per run x spectrum row (step, Hessian set ``repeat``,
                          ``bn`` mode) x top-eigenvalue rank: ``top``, ``grad_fraction``
                          (the row's scalars repeat over the rank)
``spectrum_density``      one row per run x spectrum row x grid point: ``eigenvalue``,
                          ``density``
``layer_curvature``       one row per run x probed step x layer (``layer_curvature/``)
``ranks``                 one row per run x probed step x layer (``ranks/``)
========================  ==================================================================

A run attribute whose name is also a column of a table (``seconds``) is named
``run_<name>`` in every table. Columns mean what the same field means in the file
(``landscape.store.schema.FIELDS``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import LandscapeError
from .read import RunData, read_sweep

RUN = "run"  # the column with the run's name
FORMATS = ("csv", "parquet")


def to_frames(path: str | os.PathLike) -> dict[str, pd.DataFrame]:
    """The sweep file's tables (see the module's docstring); ``LandscapeError`` if not a sweep."""
    runs = read_sweep(path).runs
    tables: dict[str, list[tuple[RunData, dict[str, np.ndarray]]]] = {}
    for run in runs:
        for name, columns in _run_tables(run).items():
            tables.setdefault(name, []).append((run, columns))
    measured = {column for parts in tables.values() for _, part in parts for column in part}
    attr_names = list(dict.fromkeys(key for run in runs for key in run.attrs))
    attr_columns = {key: f"run_{key}" if key in measured or key == RUN else key
                    for key in attr_names}
    frames = {"runs": pd.DataFrame([{RUN: run.name, **_attr_row(run, attr_columns)}
                                    for run in runs], columns=[RUN, *attr_columns.values()])}
    for name, parts in tables.items():
        frames[name] = pd.concat([_frame(run, part, attr_columns) for run, part in parts],
                                 ignore_index=True)
    return frames


def export_tables(path: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                  file_format: str = "csv", overwrite: bool = False) -> list[Path]:
    """Write ``to_frames(path)`` as ``<table>.csv`` (or ``.parquet``) files into ``out_dir``.

    ``out_dir`` defaults to ``<file name without suffix>-tables`` next to the file. Nothing
    is written when a table's file exists (unless ``overwrite``) or the format cannot be
    written; returns the files written.
    """
    if file_format not in FORMATS:
        raise LandscapeError(f"--format {file_format!r}: choose one of {', '.join(FORMATS)}")
    path = Path(path)
    frames = to_frames(path)
    out = Path(out_dir) if out_dir is not None else path.with_name(f"{path.stem}-tables")
    if out.exists() and not out.is_dir():
        raise LandscapeError(f"-o {out} is a file, not a folder")
    targets = {name: out / f"{name}.{file_format}" for name in frames}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not overwrite:
        raise LandscapeError(f"{', '.join(existing)} exist{'s' if len(existing) == 1 else ''}; "
                             "pass --overwrite to replace them or choose another -o")
    out.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        if file_format == "csv":
            frame.to_csv(targets[name], index=False)
            continue
        try:
            frame.to_parquet(targets[name], index=False, engine="pyarrow")
        except ImportError:  # pandas imports pyarrow only now, before it opens the file
            raise LandscapeError("--format parquet needs the pyarrow package (pip install "
                                 "pyarrow); --format csv needs nothing more") from None
    return list(targets.values())


def _run_tables(run: RunData) -> dict[str, dict[str, np.ndarray]]:
    """The run's long-table columns, one dict per table it has rows (or empty columns) for."""
    steps, probe, epochs = run.steps, run.probe, run.epochs
    tables = {
        "steps": _long([vars(steps)]),
        "probes": _long([{"step": probe.step}, {"eta": probe.eta}],
                        {f: getattr(probe, f) for f in vars(probe) if f not in PROBE_AXES}),
        "epochs": _long([vars(epochs)]),
    }
    if probe.layer and len(probe.grad_diff_layer):
        layers = {"layer": np.asarray(probe.layer, dtype=object)}
        tables["probe_layers"] = _long(
            [{"step": probe.step}, layers, {"eta": probe.eta}],
            {"grad_norm_layer": probe.grad_norm_layer,
             "grad_diff_layer": np.swapaxes(probe.grad_diff_layer, 1, 2)})
    if run.curvature is not None:
        c = run.curvature
        rank = {"eigenvalue": np.arange(1, c.lambda_max.shape[1] + 1)}
        tables["curvature"] = _long([{"step": c.step}, rank],
                                    {"trace": c.trace, "gHg": c.gHg, "iterations": c.iterations,
                                     "lambda_max": c.lambda_max})
    if run.weights is not None:
        w = run.weights
        tables["weights"] = _long([{"step": w.step}, {**_layers(w),
                                                      "scale_invariant": w.scale_invariant}],
                                  {f: getattr(w, f) for f in ("norm", "effective_lr",
                                                              "effective_grad_norm",
                                                              "angular_update")})
    if run.ics is not None:
        ics = run.ics
        tables["ics"] = _long([{"step": ics.step}, _layers(ics)],
                              {"l2": ics.l2, "cosine": ics.cosine, "grad_norm": ics.grad_norm})
    if run.activations is not None:
        a = run.activations
        tables["activations"] = _long([{"step": a.step}, _layers(a)],
                                      {"mean": a.mean, "std": a.std})
        bins = {"bin_low": a.bin_edges[:-1], "bin_high": a.bin_edges[1:]}
        tables["activation_histograms"] = _long(
            [{"step": a.step}, _layers(a), bins],
            {"fraction": a.hist})
    tables.update(_hessian_tables(run))
    return tables


def _hessian_tables(run: RunData) -> dict[str, dict[str, np.ndarray]]:
    """The spectrum's, per-layer curvature's and ranks' tables of a run that has them."""
    tables = {}
    if run.spectrum is not None:
        s = run.spectrum
        rows = {"step": s.step, "repeat": s.repeat,
                "bn": np.asarray([s.bn_mode[i] for i in s.bn], dtype=object)}
        scalars = {f: getattr(s, f) for f in ("lambda_min", "trace", "outliers", "bulk_edge",
                                              "grad_in_outliers", "grad_norm", "loss", "hvps")}
        tables["spectrum"] = _long([rows, {"rank": np.arange(1, s.top.shape[1] + 1)}],
                                   {**scalars, "top": s.top, "grad_fraction": s.grad_fraction})
        tables["spectrum_density"] = _long([rows, {"point": np.arange(s.grid.shape[1])}],
                                           {"eigenvalue": s.grid, "density": s.density})
    if run.layer_curvature is not None:
        c = run.layer_curvature
        tables["layer_curvature"] = _long(
            [{"step": c.step}, {**_layers(c), "scale_invariant": c.scale_invariant}],
            {f: getattr(c, f) for f in ("lambda_max", "trace", "weight_norm_sq",
                                        "scaled_lambda")})
    if run.ranks is not None:
        r = run.ranks
        tables["ranks"] = _long([{"step": r.step}, _layers(r)],
                                {f: getattr(r, f) for f in ("grad_norm", "rank",
                                                            "effective_rank", "size")})
    return tables


# Axes of the probe table, and the split by layer that has a table of its own.
PROBE_AXES = ("step", "eta", "layer", "grad_diff_layer", "grad_norm_layer")


def _layers(series) -> dict[str, np.ndarray]:
    return {"layer": np.asarray(series.layer, dtype=object), "layer_index": series.layer_index}


def _long(axes: list[dict[str, np.ndarray]],
          cells: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Columns of a long table over the product of ``axes`` (the first varies slowest).

    Each axis is a dict of equal-length 1-D columns (e.g. a layer's name and index); each
    cell array has shape (len(axis 0), ..., len(axis j)) for its first j + 1 axes and is
    repeated over the others (a per-step value over eta).
    """
    shape = tuple(len(next(iter(axis.values()))) for axis in axes)
    index = np.indices(shape).reshape(len(shape), -1)
    columns = {name: np.asarray(values)[i] for axis, i in zip(axes, index)
               for name, values in axis.items()}
    for name, values in (cells or {}).items():
        values = np.asarray(values)
        trailing = (1,) * (len(shape) - values.ndim)
        columns[name] = np.broadcast_to(values.reshape(values.shape + trailing), shape).reshape(-1)
    return columns


def _attr_row(run: RunData, attr_columns: dict[str, str]) -> dict:
    return {column: run.attrs.get(key) for key, column in attr_columns.items()}


def _frame(run: RunData, columns: dict[str, np.ndarray],
           attr_columns: dict[str, str]) -> pd.DataFrame:
    rows = len(next(iter(columns.values())))
    constant = {RUN: run.name, **_attr_row(run, attr_columns)}
    return pd.DataFrame({**{name: [value] * rows for name, value in constant.items()}, **columns})

