"""Plotly figure builders: bands and curves (numpy arrays) in, ``go.Figure`` out.

Every band is drawn as a filled polygon per stretch without gaps plus its two edges as
thin lines, so a band of a single run (lower == upper) still shows as a line and a
masked (diverged) stretch shows as a gap, never as a spurious fill. Smoothing, when
asked for, adds smoothed edges on top; the raw band always stays visible.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .bands import Band, contiguous_segments

# Santurkar et al. draw the standard network in blue and the BatchNorm one in red.
MODEL_COLORS = {"vgg_a": "#1f77b4", "vgg_a_bn": "#d62728"}
OTHER_COLORS = ("#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
LR_DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
FIGURE_HEIGHT = 460
BAND_OPACITY = 0.25


def model_colors(models: Sequence[str]) -> dict[str, str]:
    """A stable colour per model: the paper's two first, then a palette in order."""
    others = iter(OTHER_COLORS * (1 + len(models) // len(OTHER_COLORS)))
    return {m: MODEL_COLORS.get(m) or next(others) for m in dict.fromkeys(models)}


@dataclass(frozen=True)
class Marker:
    """A point where a run stopped being finite: drawn as a cross with a hover text."""

    x: float
    y: float
    text: str


@dataclass(frozen=True)
class BandSeries:
    """One coloured band of a figure (e.g. VGG-A over the learning-rate grid)."""

    label: str
    color: str
    band: Band
    markers: Sequence[Marker] = field(default_factory=tuple)


@dataclass(frozen=True)
class Curve:
    """One run's per-epoch training curves (Fig. 1)."""

    label: str
    color: str
    dash: str
    epoch: np.ndarray
    train_acc: np.ndarray
    test_acc: np.ndarray
    train_loss: np.ndarray
    test_loss: np.ndarray


def _rgba(color: str, alpha: float) -> str:
    r, g, b = (int(color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _none_gaps(parts: list[np.ndarray]) -> list:
    """Concatenate arrays with ``None`` between them (plotly starts a new shape there)."""
    out: list = []
    for i, part in enumerate(parts):
        if i:
            out.append(None)
        out.extend(part.tolist())
    return out


def band_traces(series: BandSeries, smooth: int = 1) -> list[go.Scatter]:
    """The traces of one band: fill, upper and lower edge, markers, smoothed edges."""
    band, color, group = series.band, series.color, series.label
    drawable = np.isfinite(band.lower) & np.isfinite(band.upper)
    segments = contiguous_segments(drawable)
    fill_x = _none_gaps([np.concatenate([band.x[s], band.x[s][::-1]]) for s in segments])
    fill_y = _none_gaps([np.concatenate([band.upper[s], band.lower[s][::-1]]) for s in segments])
    traces = [go.Scatter(x=fill_x, y=fill_y, fill="toself", fillcolor=_rgba(color, BAND_OPACITY),
                         line=dict(width=0), mode="lines", name=series.label, legendgroup=group,
                         hoverinfo="skip")]
    edge_opacity = 0.5 if smooth > 1 else 1.0
    for edge, values in (("max", band.upper), ("min", band.lower)):
        traces.append(go.Scatter(x=band.x, y=values, mode="lines", name=f"{series.label} {edge}",
                                 legendgroup=group, showlegend=False, opacity=edge_opacity,
                                 line=dict(color=color, width=1), connectgaps=False))
    if smooth > 1:
        smoothed = band.smoothed(smooth)
        for edge, values in (("max", smoothed.upper), ("min", smoothed.lower)):
            traces.append(go.Scatter(x=band.x, y=values, mode="lines",
                                     name=f"{series.label} {edge}, smoothed over {smooth}",
                                     legendgroup=group, showlegend=False,
                                     line=dict(color=color, width=2.5), connectgaps=False))
    if series.markers:
        traces.append(go.Scatter(
            x=[m.x for m in series.markers], y=[m.y for m in series.markers],
            text=[m.text for m in series.markers], hovertemplate="%{text}<extra></extra>",
            mode="markers", name=f"{series.label}: diverged", legendgroup=group,
            marker=dict(symbol="x", size=13, color=color, line=dict(width=2, color="black"))))
    return traces


def _title(text: str) -> dict:
    """Title at the top left, above the buttons (which sit just above the plot area)."""
    return dict(text=text, x=0.01, xanchor="left", yref="container", y=1, yanchor="top",
                pad=dict(t=14), font=dict(size=15))


def _layout(fig: go.Figure, title: str, x_title: str, y_title: str, log_y: bool) -> None:
    fig.update_layout(title=_title(title), height=FIGURE_HEIGHT, template="plotly_white",
                      margin=dict(t=100, l=70, r=20, b=50),
                      legend=dict(orientation="h", y=-0.15, x=0))
    fig.update_xaxes(title_text=x_title)
    fig.update_yaxes(title_text=y_title, type="log" if log_y else "linear")


def _axis_toggle(log_y: bool, x: float = 1.0) -> dict:
    """Buttons that switch the y axis between log and linear, the paper's choice first."""
    buttons = [dict(label="log y", method="relayout", args=[{"yaxis.type": "log"}]),
               dict(label="linear y", method="relayout", args=[{"yaxis.type": "linear"}])]
    return dict(type="buttons", direction="right", buttons=buttons if log_y else buttons[::-1],
                active=0, x=x, xanchor="right", y=1.01, yanchor="bottom", showactive=True)


def band_figure(series: Sequence[BandSeries], title: str, x_title: str, y_title: str,
                log_y: bool, smooth: int = 1) -> go.Figure:
    """Bands overlaid in one panel, with a log/linear toggle."""
    fig = go.Figure([t for s in series for t in band_traces(s, smooth)])
    _layout(fig, title, x_title, y_title, log_y)
    fig.update_layout(updatemenus=[_axis_toggle(log_y)])
    if not series:
        _no_data(fig)
    return fig


@dataclass(frozen=True)
class Reference:
    """A dashed horizontal line drawn with one learning rate's bands (e.g. 2/LR)."""

    y: float
    label: str


def band_figure_by_lr(series_by_lr: dict[float, Sequence[BandSeries]], title: str,
                      x_title: str, y_title: str, log_y: bool, smooth: int = 1,
                      references: dict[float, Reference] | None = None,
                      initial_lr: float | None = None) -> go.Figure:
    """Bands per learning rate; buttons show one learning rate at a time.

    ``references`` adds a dashed horizontal line to a learning rate's view (2/LR for beta).
    """
    references = references or {}
    lrs = sorted(series_by_lr)
    if initial_lr is None or initial_lr not in series_by_lr:
        initial_lr = lrs[0] if lrs else None
    fig = go.Figure()
    owner: list[float] = []  # the learning rate of each trace, in order
    for lr in lrs:
        traces = [t for s in series_by_lr[lr] for t in band_traces(s, smooth)]
        if lr in references:
            xs = np.concatenate([s.band.x for s in series_by_lr[lr]] or [np.zeros(0)])
            if len(xs):
                ref = references[lr]
                traces.append(go.Scatter(x=[xs.min(), xs.max()], y=[ref.y, ref.y], mode="lines",
                                         name=ref.label, line=dict(color="black", dash="dash",
                                                                   width=1.5)))
        for trace in traces:
            trace.visible = lr == initial_lr
            fig.add_trace(trace)
            owner.append(lr)
    _layout(fig, title, x_title, y_title, log_y)
    buttons = [dict(label=f"LR {lr:g}", method="update",
                    args=[{"visible": [o == lr for o in owner]}]) for lr in lrs]
    menus = [_axis_toggle(log_y)]
    if buttons:
        menus.insert(0, dict(type="buttons", direction="right", buttons=buttons,
                             active=lrs.index(initial_lr), x=0, xanchor="left", y=1.01,
                             yanchor="bottom", showactive=True))
    fig.update_layout(updatemenus=menus)
    if not lrs:
        _no_data(fig)
    return fig


def training_curves_figure(curves: Sequence[Curve], title: str) -> go.Figure:
    """Fig. 1: accuracy and loss per epoch, train and test, one line per run."""
    panels = (("train_acc", "training accuracy"), ("test_acc", "test accuracy"),
              ("train_loss", "training loss (epoch mean)"), ("test_loss", "test loss"))
    fig = make_subplots(rows=2, cols=2, subplot_titles=[p[1] for p in panels],
                        vertical_spacing=0.14, horizontal_spacing=0.08)
    for curve in curves:
        for i, (attr, _) in enumerate(panels):
            fig.add_trace(go.Scatter(x=curve.epoch, y=getattr(curve, attr), mode="lines+markers",
                                     name=curve.label, legendgroup=curve.label, showlegend=i == 0,
                                     line=dict(color=curve.color, dash=curve.dash, width=1.8),
                                     marker=dict(size=5), connectgaps=False),
                          row=i // 2 + 1, col=i % 2 + 1)
    fig.update_layout(title=_title(title), height=2 * FIGURE_HEIGHT, template="plotly_white",
                      margin=dict(t=90, l=70, r=20, b=50))
    fig.update_xaxes(title_text="epoch (0 = the first pass, as in the file)", dtick=1)
    if not curves:
        _no_data(fig)
    return fig


def _no_data(fig: go.Figure) -> None:
    """An explicit note instead of an empty, unexplained panel."""
    fig.add_annotation(text="no data recorded yet", showarrow=False, xref="paper", yref="paper",
                       x=0.5, y=0.5, font=dict(size=16, color="gray"))


@dataclass(frozen=True)
class Line:
    """One run's curve in one panel (a layer's ICS or activation mean over steps)."""

    label: str
    color: str
    dash: str
    x: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class LayerICS:
    """Fig. 3 for one weight layer: per run, ||G - G'||_2 and cos(G, G') over steps."""

    title: str  # e.g. "layer #5 (features.15)"
    l2: Sequence[Line]
    cosine: Sequence[Line]


@dataclass(frozen=True)
class HeatMap:
    """One run and layer's histograms over probed steps: ``z`` is (bins, steps) fractions."""

    label: str  # the selector's text, e.g. "VGG-A LR 0.1 · layer #5"
    layer: int  # which ``LayerActivations`` its top panel shows
    x: np.ndarray  # probed steps
    y: np.ndarray  # bin centres
    z: np.ndarray
    quantiles: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (steps,)


@dataclass(frozen=True)
class LayerActivations:
    """Per run, the band mean ± std of one layer's pre-activation over steps, and the mean."""

    bands: Sequence[BandSeries]
    means: Sequence[Line]


def _line_trace(line: Line, showlegend: bool, **kwargs) -> go.Scatter:
    return go.Scatter(x=line.x, y=line.y, mode="lines+markers", name=line.label,
                      legendgroup=line.label, showlegend=showlegend, connectgaps=False,
                      line=dict(color=line.color, dash=line.dash, width=1.8),
                      marker=dict(size=4), **kwargs)


def _selector(labels: Sequence[str], visible: Sequence[Sequence[bool]], kind: str) -> dict:
    """A menu of ``labels``: option i shows the traces where ``visible[i]`` is True."""
    buttons = [dict(label=label, method="update", args=[{"visible": list(v)}])
               for label, v in zip(labels, visible)]
    return dict(type=kind, direction="down" if kind == "dropdown" else "right", buttons=buttons,
                active=0, x=0, xanchor="left", y=1.01, yanchor="bottom", showactive=True)


def ics_figure(layers: Sequence[LayerICS], title: str) -> go.Figure:
    """Fig. 3: ||G - G'||_2 (log y, top) and cos(G, G') (bottom) over steps; one layer
    at a time (buttons), one line per run (colour: model, dash: learning rate)."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("‖G − G′‖₂ (ideal 0)", "cos(G, G′) (ideal 1)"))
    owner: list[int] = []
    for i, layer in enumerate(layers):
        for row, lines in ((1, layer.l2), (2, layer.cosine)):
            for line in lines:
                fig.add_trace(_line_trace(line, showlegend=row == 1, visible=i == 0),
                              row=row, col=1)
                owner.append(i)
        xs = np.concatenate([np.asarray(l.x, float) for l in layer.cosine] or [np.zeros(0)])
        if len(xs):  # the ideal cosine
            fig.add_trace(go.Scatter(x=[xs.min(), xs.max()], y=[1, 1], mode="lines",
                                     name="ideal cos = 1", showlegend=False, hoverinfo="skip",
                                     visible=i == 0, line=dict(color="gray", dash="dot",
                                                               width=1)), row=2, col=1)
            owner.append(i)
    fig.update_layout(title=_title(title), height=int(1.6 * FIGURE_HEIGHT),
                      template="plotly_white", margin=dict(t=110, l=70, r=20, b=50),
                      legend=dict(orientation="h", y=-0.1, x=0))
    fig.update_xaxes(title_text="training step", row=2, col=1)
    fig.update_yaxes(title_text="‖G − G′‖₂", type="log", row=1, col=1)
    fig.update_yaxes(title_text="cos(G, G′)", row=2, col=1)
    menus = [_axis_toggle(log_y=True)]
    if len(layers) > 1:
        menus.insert(0, _selector([l.title for l in layers],
                                  [[o == i for o in owner] for i in range(len(layers))],
                                  "buttons"))
    elif layers:
        fig.layout.annotations[0].text = f"{layers[0].title}: ‖G − G′‖₂ (ideal 0)"
    fig.update_layout(updatemenus=menus)
    if not layers:
        _no_data(fig)
    return fig


def activation_figure(layers: dict[int, LayerActivations], maps: Sequence[HeatMap],
                      title: str) -> go.Figure:
    """Fig. 1c/2: per layer, mean ± std of the pre-activation over steps for every run (top);
    the histogram over probed steps of one run and layer as a heat map (bottom). A dropdown
    picks the run and layer; the top panel follows the layer."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        row_heights=[0.4, 0.6],
                        subplot_titles=("mean ± std of the pre-activation, every run",
                                        "histogram of the selected run (colour: fraction of "
                                        "values per bin); lines: 5%, 50%, 95% quantiles"))
    owner: list[tuple[str, int]] = []  # ("layer", index) or ("map", position)
    for index, layer in layers.items():
        for series, mean in zip(layer.bands, layer.means):
            for trace in band_traces(series):
                trace.showlegend = False
                fig.add_trace(trace, row=1, col=1)
                owner.append(("layer", index))
            fig.add_trace(_line_trace(mean, showlegend=True), row=1, col=1)
            owner.append(("layer", index))
    for position, m in enumerate(maps):
        fig.add_trace(go.Heatmap(x=m.x, y=m.y, z=np.round(m.z, 5), colorscale="Viridis",
                                 zmin=0, name=m.label, showscale=True,
                                 colorbar=dict(len=0.55, y=0.3, title="fraction"),
                                 hovertemplate="step %{x}<br>value %{y:.3g}<br>fraction "
                                               "%{z:.4f}<extra></extra>"), row=2, col=1)
        owner.append(("map", position))
        for name, values in m.quantiles.items():
            fig.add_trace(go.Scatter(x=m.x, y=values, mode="lines", name=f"{name} quantile",
                                     showlegend=False, line=dict(color="white", width=1,
                                                                 dash="dot" if name != "50%"
                                                                 else "solid"),
                                     hovertemplate=f"{name} quantile: %{{y:.3g}}<extra></extra>"),
                          row=2, col=1)
            owner.append(("map", position))

    def shown(position: int) -> list[bool]:
        return [o == ("map", position) or o == ("layer", maps[position].layer) for o in owner]

    for trace, visible in zip(fig.data, shown(0) if maps else [True] * len(owner)):
        trace.visible = visible
    fig.update_layout(title=_title(title), height=int(1.8 * FIGURE_HEIGHT),
                      template="plotly_white", margin=dict(t=120, l=70, r=20, b=50),
                      legend=dict(orientation="h", y=-0.08, x=0))
    fig.update_xaxes(title_text="training step", row=2, col=1)
    fig.update_yaxes(title_text="mean ± std", row=1, col=1)
    fig.update_yaxes(title_text="pre-activation value", row=2, col=1)
    if len(maps) > 1:
        fig.update_layout(updatemenus=[_selector([m.label for m in maps],
                                                 [shown(p) for p in range(len(maps))],
                                                 "dropdown")])
    if not maps:
        _no_data(fig)
    return fig
