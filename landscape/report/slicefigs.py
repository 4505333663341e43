"""The landscape's shape in the report: the slices ``landscape slice`` stored (Li et al. 2018).

Contours per 2D slice, all on one colour scale (so VGG-A and VGG-A+BN at the same step and
learning rate compare by colour), a PCA slice's trajectory drawn on its plane with the loss
along the real trajectory beside the plane's at the projected points, 3D surfaces, 1D curves,
and the basin's width for Findings: the distance along each direction at which the loss
doubles (``loss_doubling_distance``).
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from typing import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..store import RunData
from ..store.slices import SliceData, fallback_files, read_slices
from .findings import FAILS, HOLDS


def report_slices(runs: Sequence[RunData]) -> list[SliceData]:
    """The stored slices of the report's runs: in each run's file, and in the sweep's own
    slices file when it was read-only (``store.slices.fallback_files``)."""
    wanted = {(str(r.source), r.name) for r in runs}
    found = []
    for source in dict.fromkeys(str(r.source) for r in runs):
        for path in [source, *fallback_files(source)]:
            found += [s for s in read_slices(path) if (source, s.run) in wanted]
    return found


def _label(s: SliceData) -> str:
    a = s.attrs
    return (f"{s.run} · {s.id}: {a.get('direction')} at step {a.get('center_step')}, "
            f"{a.get('normalization')}, BN {a.get('bn_mode')}")


def loss_doubling_distance(alpha: np.ndarray, loss: np.ndarray) -> float:
    """The basin's width along a 1D profile: the smallest |a| at which the loss reaches twice
    its value at a = 0 (linear interpolation between grid points); inf when it never does
    inside the grid."""
    centre = int(np.argmin(np.abs(alpha)))
    target = 2 * loss[centre]
    widths = []
    for step in (1, -1):
        i = centre
        while 0 <= i + step < len(alpha) and loss[i + step] < target:
            i += step
        if 0 <= i + step < len(alpha):
            a0, a1, l0, l1 = alpha[i], alpha[i + step], loss[i], loss[i + step]
            widths.append(abs(a0 + (target - l0) / (l1 - l0) * (a1 - a0)))
    return min(widths) if widths else math.inf


def basin_widths(s: SliceData) -> tuple[float, ...]:
    """The doubling distance along each direction through the centre of a slice."""
    alpha, loss = s.arrays["alpha"], s.arrays["loss"]
    if loss.ndim == 1:
        return (loss_doubling_distance(alpha, loss),)
    beta = s.arrays["beta"]
    i, j = int(np.argmin(np.abs(alpha))), int(np.argmin(np.abs(beta)))
    return loss_doubling_distance(alpha, loss[:, j]), loss_doubling_distance(beta, loss[i, :])


def _planes(slices: Sequence[SliceData]) -> list[SliceData]:
    return [s for s in slices if s.arrays["loss"].ndim == 2]


def contour_figure(slices: Sequence[SliceData]) -> go.Figure:
    """One contour panel per 2D slice, two a row, every panel on the same colour scale; PCA
    slices with their trajectory's projection (steps as hover)."""
    planes = _planes(slices)
    rows = math.ceil(len(planes) / 2)
    fig = make_subplots(rows=rows, cols=2 if len(planes) > 1 else 1,
                        subplot_titles=[_label(s) for s in planes])
    finite = np.concatenate([s.arrays["loss"][np.isfinite(s.arrays["loss"])] for s in planes])
    low, high = float(finite.min()), float(np.quantile(finite, 0.98))
    for n, s in enumerate(planes):
        row, col = n // 2 + 1, n % 2 + 1
        fig.add_trace(go.Contour(x=s.arrays["alpha"], y=s.arrays["beta"], z=s.arrays["loss"].T,
                                 zmin=low, zmax=high, colorscale="Viridis", showscale=n == 0,
                                 contours={"showlabels": True}, name=s.run,
                                 hovertemplate="a %{x:.3g}, b %{y:.3g}: loss %{z:.4g}"),
                      row=row, col=col)
        if "trajectory_coords" in s.arrays:
            xy = s.arrays["trajectory_coords"]
            fig.add_trace(go.Scatter(x=xy[:, 0], y=xy[:, 1], mode="lines+markers",
                                     line={"color": "red"}, name=f"{s.run} trajectory",
                                     text=[f"step {t}" for t in s.arrays["trajectory_step"]]),
                          row=row, col=col)
    fig.update_layout(height=420 * rows, showlegend=False,
                      title="Loss on planes through the weights (one colour scale: "
                            f"{low:.3g} to {high:.3g})")
    return fig


def surface_figure(slices: Sequence[SliceData]) -> go.Figure:
    """The 2D slices as 3D surfaces, a dropdown choosing one."""
    planes = _planes(slices)
    fig = go.Figure()
    for n, s in enumerate(planes):
        fig.add_trace(go.Surface(x=s.arrays["alpha"], y=s.arrays["beta"], z=s.arrays["loss"].T,
                                 colorscale="Viridis", visible=n == 0, name=_label(s)))
    buttons = [{"label": _label(s), "method": "update",
                "args": [{"visible": [k == n for k in range(len(planes))]}]}
               for n, s in enumerate(planes)]
    fig.update_layout(height=560, updatemenus=[{"buttons": buttons, "x": 0, "y": 1.12,
                                                "xanchor": "left"}],
                      scene={"xaxis_title": "a (d1)", "yaxis_title": "b (d2)",
                             "zaxis_title": "loss"})
    return fig


def line_figure(slices: Sequence[SliceData]) -> go.Figure:
    """1D slices (interpolations, lines) as loss curves."""
    fig = go.Figure()
    for s in slices:
        if s.arrays["loss"].ndim == 1:
            fig.add_trace(go.Scatter(x=s.arrays["alpha"], y=s.arrays["loss"], mode="lines",
                                     name=_label(s) + (f" → {s.attrs['to']}"
                                                       if s.attrs.get("to") else "")))
    fig.update_layout(height=420, xaxis_title="a (0: the centre; interpolation: 1 is the far "
                      "end)", yaxis_title="loss")
    return fig


def trajectory_text(slices: Sequence[SliceData]) -> str:
    """How far the plane's loss at the projected points agrees with the real trajectory's."""
    parts = []
    for s in slices:
        if "trajectory_loss" not in s.arrays:
            continue
        real, plane = s.arrays["trajectory_loss"], s.arrays["trajectory_plane_loss"]
        gap = np.abs(plane - real)
        worst = int(np.argmax(gap))
        share = float(np.sum(s.arrays["explained_variance"]))
        parts.append(f"<li>{html.escape(s.run)} · {html.escape(s.id)}: the plane's first two "
                     f"components explain {share:.1%} of the trajectory's variance; the "
                     f"contour's loss at the projected points differs from the real "
                     f"trajectory's by {gap.mean():.3g} on average, at most {gap[worst]:.3g} "
                     f"(step {int(s.arrays['trajectory_step'][worst])}: real "
                     f"{real[worst]:.4g}, plane {plane[worst]:.4g})</li>")
    return f"<ul>{''.join(parts)}</ul>" if parts else ""


def basin_rows(slices: Sequence[SliceData]) -> list[tuple[str, str, str, str]]:
    """Findings rows: per learning rate, step and direction settings, the basin's width (loss
    doubled) without BN and with it, from random-direction slices."""
    groups: dict[tuple, dict[str, list[SliceData]]] = defaultdict(lambda: defaultdict(list))
    for s in slices:
        a = s.attrs
        if a.get("direction") != "random":
            continue
        key = (float(s.run_attrs.get("lr", math.nan)), int(a["center_step"]),
               str(a.get("normalization")), str(a.get("bn_mode")), str(a.get("direction_seeds")),
               s.arrays["loss"].shape)
        norm = "with" if str(s.run_attrs.get("norm", "none")) not in ("none", "") else "without"
        groups[key][norm].append(s)
    rows = []
    for (lr, step, scale, mode, _, _), pair in groups.items():
        if not pair["with"] or not pair["without"]:
            continue
        widths = {k: min(min(basin_widths(s)) for s in v) for k, v in pair.items()}
        verdict = HOLDS if widths["with"] > widths["without"] else FAILS
        rows.append((f"lr {lr:g}, step {step}", "BatchNorm widens the basin (Li et al.'s "
                     "filter-normalized slices): the loss doubles farther from the weights",
                     verdict, f"loss doubled at |a| = {widths['without']:.3g} without BN, "
                     f"{widths['with']:.3g} with BN ({scale} directions, BN {mode})"))
    return rows
