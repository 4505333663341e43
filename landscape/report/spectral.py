"""Figures of the Hessian's spectrum, per-layer curvature and ranks (plotly on ``RunData``).

Each builder takes the report's runs and how the legend colours and names them, and returns
(definition HTML, figure), or None when no run recorded the instrument; ``build.SECTIONS``
wraps them as sections.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..store import RunData
from .spectral_findings import growth_factor, last_hidden_rank

Color = Callable[[RunData], str]
Name = Callable[[RunData], str]
MAX_PANELS = 6  # runs drawn side by side in the per-run figures (the first ones)
DENSITY_FLOOR = 1e-7  # the log axis' floor: a Gaussian tail below it is not drawn


def _with(runs: Sequence[RunData], what: str) -> list[RunData]:
    return [r for r in runs if getattr(r, what) is not None and len(getattr(r, what).step)]


def density_parts(runs: Sequence[RunData], color: Color, name: Name):
    runs = _with(runs, "spectrum")
    if not runs:
        return None
    fig = go.Figure()
    for run in runs:
        s = run.spectrum
        steps = sorted(set(s.step.tolist()))
        for mode, dash in (("batch", "solid"), ("running", "dot")):
            for row in s.rows(mode):
                if s.repeat[row] != 0:
                    continue
                fade = 0.25 + 0.75 * (steps.index(int(s.step[row])) + 1) / len(steps)
                fig.add_trace(go.Scatter(
                    x=s.grid[row], y=np.maximum(s.density[row], DENSITY_FLOOR), mode="lines",
                    opacity=fade, line=dict(color=color(run), dash=dash, width=1),
                    name=f"{name(run)} step {s.step[row]} ({mode} BN)"))
    fig.update_layout(title="Hessian eigenvalue density (SLQ)<br><sup>a line per probed step, "
                            "later steps darker; solid: BN on batch statistics, dotted: on "
                            "running statistics; first Hessian set</sup>",
                      xaxis_title="eigenvalue λ", yaxis_title="density", yaxis_type="log")
    return (
        "The eigenvalue density of the Hessian of the mean batch loss over a fixed set of "
        f"{runs[0].spectrum.samples:,} training images (each batch with its own statistics, "
        "or, dotted, BN on its running statistics), by stochastic Lanczos quadrature with full "
        "reorthogonalization (PyHessian's settings: Rademacher start vector, Gaussian "
        "smoothing σ² = 10⁻⁵ max(1, λ<sub>max</sub> − λ<sub>min</sub>)). Ghorbani et al. "
        "(2019): without BN, isolated outliers far right of the bulk; with BN, almost none.",
        fig)


def _spread(s, rows: np.ndarray, values: np.ndarray) -> tuple[list, list, list, list]:
    steps = sorted(set(s.step[rows].tolist()))
    med, low, high = [], [], []
    for step in steps:
        at = values[rows][s.step[rows] == step]
        med.append(float(np.median(at)))
        low.append(float(np.median(at) - at.min()))
        high.append(float(at.max() - np.median(at)))
    return steps, med, low, high


def outlier_parts(runs: Sequence[RunData], color: Color, name: Name):
    runs = _with(runs, "spectrum")
    if not runs:
        return None
    fig = make_subplots(rows=1, cols=3, subplot_titles=(
        "outliers", "share of ‖g‖² in their eigenspace", "λ<sub>max</sub> (top Ritz value)"))
    for run in runs:
        s = run.spectrum
        for mode, dash in (("batch", "solid"), ("running", "dot")):
            rows = s.rows(mode)
            if not len(rows):
                continue
            for col, values in enumerate((s.outliers, s.grad_in_outliers, s.top[:, 0]), 1):
                steps, med, low, high = _spread(s, rows, values.astype(float))
                fig.add_trace(go.Scatter(
                    x=steps, y=med, error_y=dict(type="data", symmetric=False, array=high,
                                                 arrayminus=low),
                    line=dict(color=color(run), dash=dash), name=f"{name(run)} ({mode} BN)",
                    legendgroup=f"{name(run)}{mode}", showlegend=col == 1), row=1, col=col)
    fig.update_xaxes(title_text="training step")
    fig.update_layout(title="Hessian outliers over training<br><sup>median over Hessian sets, "
                            "bars: min to max (--hessian-repeats)</sup>")
    return (
        "Outliers: the Ritz values separated from the bulk: among the values above 95 % of the "
        "spectral mass, the top j for the largest j with θ<sub>j+1</sub> > 0 and "
        "θ<sub>j</sub> − θ<sub>j+1</sub> > θ<sub>j+1</sub> − θ<sub>min</sub>, a gap wider than "
        "the spectrum under it (probes.spectrum). Middle: the fraction of the set's gradient ‖g‖² in "
        "the span of their Ritz vectors (Ghorbani et al.: without BN the gradient concentrates "
        "there). Right: the largest Ritz value, the sharpness on the Hessian set.", fig)


def layer_curvature_parts(runs: Sequence[RunData], color: Color, name: Name):
    runs = _with(runs, "layer_curvature")[:MAX_PANELS]
    if not runs:
        return None
    fig = make_subplots(rows=2, cols=len(runs), subplot_titles=[name(r) for r in runs],
                        row_titles=["log₁₀ λ<sub>max</sub> × ‖w‖² (×: not scale-invariant)",
                                    "log₁₀ trace"], vertical_spacing=0.12)
    for col, run in enumerate(runs, 1):
        c = run.layer_curvature
        labels = [f"#{i}" + ("" if inv else "×") for i, inv in zip(c.layer_index,
                                                                   c.scale_invariant)]
        with np.errstate(divide="ignore", invalid="ignore"):
            for row, values in enumerate((c.scaled_lambda, c.trace), 1):
                fig.add_trace(go.Heatmap(x=c.step, y=labels, z=np.log10(np.abs(values)).T,
                                         coloraxis="coloraxis"), row=row, col=col)
    fig.update_layout(title="Curvature by layer: each weight layer's diagonal Hessian block",
                      coloraxis=dict(colorscale="Viridis"))
    return (
        "For each conv and linear layer, the Hessian block of its own parameters (weight and "
        "bias) on the probed step's minibatch: top, its largest eigenvalue times ‖w‖² (for a "
        "weight before a normalization the loss is scale-invariant and λ‖w‖² is the curvature "
        "per unit of effective learning rate LR/‖w‖², comparable across layers; Lyu, Li & "
        "Arora 2022); bottom, its Hutchinson trace. Columns: probed steps.", fig)


def rank_parts(runs: Sequence[RunData], color: Color, name: Name):
    runs = [r for r in _with(runs, "ranks") if r.ranks.step[0] == 0]
    if not runs:
        return None
    fig = make_subplots(rows=1, cols=3, subplot_titles=(
        "‖∇<sub>W</sub>L‖ by layer at init", "effective rank / largest, by layer at init",
        "‖g₁‖/‖g_L‖ and last hidden rank vs depth"))
    by_depth: dict[tuple[str, int], list] = {}
    for run in runs:
        r = run.ranks
        fig.add_trace(go.Scatter(x=r.layer_index, y=r.grad_norm[0], line=dict(color=color(run)),
                                 name=name(run), legendgroup=name(run)), row=1, col=1)
        fig.add_trace(go.Scatter(x=r.layer_index, y=r.effective_rank[0] / np.maximum(r.size[0], 1),
                                 line=dict(color=color(run)), showlegend=False,
                                 legendgroup=name(run)), row=1, col=2)
        by_depth.setdefault((run.norm, color(run)), []).append(
            (len(r.layer), growth_factor(run)[0], last_hidden_rank(run)))
    for (norm, line_color), points in by_depth.items():
        points.sort()
        for y, dash, what in ((1, "solid", "‖g₁‖/‖g_L‖"), (2, "dot", "rank")):
            fig.add_trace(go.Scatter(x=[p[0] for p in points], y=[p[y] for p in points],
                                     mode="lines+markers", line=dict(color=line_color, dash=dash),
                                     name=f"norm {norm}: {what}"), row=1, col=3)
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_yaxes(type="log", row=1, col=3)
    fig.update_xaxes(title_text="weight layer #", row=1, col=1)
    fig.update_xaxes(title_text="weight layer #", row=1, col=2)
    fig.update_xaxes(title_text="weight layers", row=1, col=3)
    fig.update_layout(title="Gradients and ranks by layer at initialization (step 0)")
    return (
        "At step 0 on the first minibatch: left, the gradient norm of each weight layer's "
        "weight (Yang et al. 2019: with BN and no skip connections it grows exponentially "
        "toward the input); middle, the effective rank (exp of the entropy of the normalized "
        "singular values) of each layer's output representation over its largest possible "
        "value (Daneshmand et al. 2020: without BN it collapses with depth); right, across "
        "depths (--depth), ‖g₁‖/‖g_L‖ (solid) and the last hidden layer's rank fraction "
        "(dotted).", fig)
