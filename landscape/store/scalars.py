"""A run's rows as named scalars: what a live log (TensorBoard, ``train.livelog``) shows.

Every number the file records one value per row becomes a scalar named ``group/field``
(``steps/loss``, ``probe/beta``, ``epochs/test_acc``, ``curvature/trace``); a field with one
more axis becomes one scalar per entry of that axis, named by the axis's labels from the
schema's dimensions (``probe/grad_diff/eta=0.05``, ``curvature/lambda_max/1``,
``ics/l2/features.3``). Fields with more axes (histograms, the probe's split by layer and
step size) are left to the file. A row's step is its ``step`` (training steps), or its
``epoch`` for ``epochs``.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from .schema import FIELDS

INDEX_FIELDS = ("step", "epoch")  # the rows' own position, not a measurement
# Axes along which a row is a curve, not a few scalars: left to the file (a spectrum's density)
CURVE_DIMS = ("grid_point",)


def _labels(log, group: str, dim: str, width: int) -> list[str]:
    """Names of the ``width`` entries along dimension ``dim`` of a group of ``log``."""
    if dim == "eta":
        return [f"eta={e:g}" for e in log.eta]
    if dim == "layer":
        names = log.probe_layers if group == "probe" else log.constants(group).get("layer")
        if names is not None and len(names) == width:
            return [str(n) for n in names]
    return [str(i + 1) for i in range(width)]  # eigenvalue ranks, 1 = the largest


def row_scalars(log, group: str, rows: dict[str, Any]) -> Iterator[tuple[int, dict[str, float]]]:
    """(step, {name: value}) for each row of ``rows`` (``RunLog.watch``'s) of ``log``'s
    ``group``."""
    position = "epoch" if group == "epochs" else "step"
    fields = FIELDS.get(group, {})
    columns: dict[str, np.ndarray] = {}
    for name, values in rows.items():
        values = np.asarray(values)
        if name in INDEX_FIELDS or name not in fields or values.dtype.kind not in "fiub":
            continue
        if values.ndim == 1:
            columns[f"{group}/{name}"] = values
        elif values.ndim == 2 and fields[name].dims[1] not in CURVE_DIMS:
            labels = _labels(log, group, fields[name].dims[1], values.shape[1])
            columns.update({f"{group}/{name}/{label}": values[:, i]
                            for i, label in enumerate(labels)})
    for i, at in enumerate(np.asarray(rows[position]).reshape(-1)):
        yield int(at), {name: float(values[i]) for name, values in columns.items()}
