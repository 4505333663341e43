"""Plotly figure builders: bands and curves (numpy arrays) in, ``go.Figure`` out.

Every band is drawn as a filled polygon per stretch without gaps plus its two edges as
thin lines, so a band of a single run (lower == upper) still shows as a line and a
masked (diverged) stretch shows as a gap, never as a spurious fill. Smoothing, when
asked for, adds smoothed edges on top; the raw band always stays visible.
"""

from __future__ import annotations

import contextvars
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .bands import Band, contiguous_segments, line_points

# Santurkar et al. draw the standard network in blue and the BatchNorm one in red; the
# names are what the page's header says of each colour.
COLOR_NAMES = {"#1f77b4": "blue", "#d62728": "red", "#2ca02c": "green", "#9467bd": "purple",
               "#ff7f0e": "orange", "#8c564b": "brown", "#e377c2": "pink", "#17becf": "cyan",
               "#7f7f7f": "grey", "#bcbd22": "olive"}
MODEL_COLORS = {"vgg_a": "#1f77b4", "vgg_a_bn": "#d62728"}
OTHER_COLORS = ("#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
                "#bcbd22")
LR_DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
# Where the dash already says something else (train vs eval mode), the learning rate's marker.
LR_SYMBOLS = ("circle", "square", "diamond", "triangle-up", "cross", "star")
FIGURE_HEIGHT = 460
BAND_OPACITY = 0.25
# A y axis spanning more than this many decades opens on a log scale (the DLN's beta: 1e6-1e11).
LOG_DECADES = 2
# Log axes label every tick with its value (plotly's default labels 20 and 50 as "2", "5"):
# plain numbers from 0.01 to 500, "1e+6" beyond (exponentformat "power" wrote 20 as "2x10").
Y_AXIS_STYLE = dict(minorloglabels="complete", exponentformat="e")
# Plotly picks a log axis's ticks from t = (decades shown) / nticks: t <= 0.3, every digit
# (2, 3, … 9 per decade); t <= 0.7, 1, 2 and 5; beyond, every ceil(t)-th decade; and under one
# decade shown, plain values (2.29, 2.3, 2.31). Its default nticks (about 9 on a 310-pixel
# axis) labels every digit up to 2.6 decades, where 7, 8, 9 and 10 land a few pixels apart and
# overlap (0.15-25: the quick start's figure 2a). ``log_nticks`` aims at t = 0.5 up to
# LOG_D2_DECADES (1, 2, 5) and t = 0.9 beyond (every decade), at most LOG_NTICKS_MAX ticks.
LOG_D2_DECADES = 3
LOG_NTICKS_MAX = 10
LOG_PADDING = 1.1  # plotly's autorange shows about 10% more than the data's decades


def pool_colors(pools: Sequence[tuple[object, str]]) -> dict[object, str]:
    """A colour per pool, given as (key, model) in order: a model's first pool gets the
    paper's colour for it (VGG-A blue, VGG-A+BN red), every other pool the next free one."""
    taken = {MODEL_COLORS[m] for _, m in pools if m in MODEL_COLORS}
    free = iter([c for c in OTHER_COLORS if c not in taken] * (1 + len(pools)))
    colors, first_of_model = {}, set()
    for key, model in pools:
        if model in MODEL_COLORS and model not in first_of_model:
            colors[key] = MODEL_COLORS[model]
        else:
            colors[key] = next(free)
        first_of_model.add(model)
    return colors


def color_name(color: str) -> str:
    return COLOR_NAMES.get(color, color)


def _finite(arrays: Sequence[np.ndarray]) -> np.ndarray:
    values = np.concatenate([np.asarray(a, dtype=np.float64).reshape(-1) for a in arrays]
                            or [np.zeros(0)])
    return values[np.isfinite(values)]


def spans_decades(arrays: Sequence[np.ndarray], decades: float = LOG_DECADES) -> bool:
    """Whether the finite positive values span more than ``decades`` powers of ten (and
    nothing is <= 0, which a log axis could not show)."""
    values = _finite(arrays)
    if not len(values) or values.min() <= 0:
        return False
    return bool(np.log10(values.max() / values.min()) > decades)


def _decades(arrays: Sequence[np.ndarray]) -> float:
    """How many powers of ten the finite positive values of ``arrays`` span (0: none)."""
    values = _finite(arrays)
    values = values[values > 0]
    return float(np.log10(values.max() / values.min())) if len(values) else 0.0


def log_nticks(arrays: Sequence[np.ndarray]) -> int:
    """plotly's ``nticks`` for a y axis showing ``arrays`` on a log scale (see LOG_D2_DECADES;
    0: plotly's own, under a decade). On a linear scale it gives 3 to 10 plain ticks."""
    decades = _decades(arrays)
    if decades <= 1:
        return 0
    per_tick = 0.5 if decades <= LOG_D2_DECADES else 0.9
    return int(min(LOG_NTICKS_MAX, max(3, round(LOG_PADDING * decades / per_tick))))


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
    dash: str = "solid"  # of the edges: tells two quantities of one pool apart (beta, lambda)


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


def _gaps(parts: list[np.ndarray]) -> np.ndarray:
    """Concatenate arrays with NaN between them (plotly starts a new shape there), as float32:
    a typed array in the page (4 bytes a value, and no per-value check by plotly.py, which
    cost 14 s of a 1,000-run report as lists)."""
    out = []
    for i, part in enumerate(parts):
        if i:
            out.append(np.array([np.nan]))
        out.append(np.asarray(part, dtype=np.float64))
    return display_array(np.concatenate(out) if out else np.zeros(0))


# Pixel columns a per-step series is drawn at (``--points``): about one per pixel of a
# figure's width. A band keeps its envelope per column (``Band.coarsened``), a line its
# first, last, lowest and highest point per column (``line_points``); None draws every point.
MAX_BAND_POINTS = 500
_columns: contextvars.ContextVar[int | None] = contextvars.ContextVar("columns",
                                                                      default=MAX_BAND_POINTS)
# A line of more points than this is drawn with WebGL (plotly's scattergl): SVG paths of tens
# of thousands of points slow a page's drawing and every hover. Decimated lines stay below.
WEBGL_POINTS = 5000


@contextmanager
def drawn_columns(columns: int | None):
    """Figures built inside draw per-step series at ``columns`` pixel columns (None: every
    point): ``landscape plot --points``."""
    if columns is not None and columns < 1:
        raise ValueError(f"columns must be >= 1 or None, got {columns}")
    token = _columns.set(columns)
    try:
        yield
    finally:
        _columns.reset(token)


def columns_text() -> str:
    """What the page says of how its per-step series are drawn."""
    columns = _columns.get()
    if columns is None:
        return "Every point of every series is drawn (--points all)."
    return (f"Per-step series are drawn at {columns} pixel columns: a band keeps its [min, max] "
            "in each, a line its first, last, lowest and highest point (no spike is lost); "
            "`landscape export` has every value, and `landscape plot --points all` with "
            "--runs/--where draws every point of the runs chosen.")


def coarsened(band: Band) -> Band:
    """``band`` at the drawn columns: its envelope per column (every point: unchanged)."""
    columns = _columns.get()
    return band if columns is None else band.coarsened(columns)


def drawn_line(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The indices of a line's points to draw at the drawn columns (``line_points``)."""
    columns = _columns.get()
    return np.arange(len(x)) if columns is None else line_points(x, y, columns)


def scatter(points: int, **kwargs) -> go.Scatter | go.Scattergl:
    """A line trace: SVG, or WebGL beyond ``WEBGL_POINTS`` points."""
    return (go.Scattergl if points > WEBGL_POINTS else go.Scatter)(**kwargs)


def display_array(values: np.ndarray) -> np.ndarray:
    """Values as drawn: float32 (7 significant digits, half the bytes of float64 in the
    page's typed arrays); NaN stays NaN."""
    return np.asarray(values, dtype=np.float32)


def band_traces(series: BandSeries, smooth: int = 1) -> list[go.Scatter]:
    """The traces of one band: fill, upper and lower edge, markers, smoothed edges; a band
    of more than the drawn columns (``drawn_columns``) is coarsened (``Band.coarsened``: its envelope
    over blocks of consecutive x), smoothing done before, on every x."""
    band, color, group = coarsened(series.band), series.color, series.label
    drawable = np.isfinite(band.lower) & np.isfinite(band.upper)
    segments = contiguous_segments(drawable)
    fill_x = _gaps([np.concatenate([band.x[s], band.x[s][::-1]]) for s in segments])
    fill_y = _gaps([np.concatenate([band.upper[s], band.lower[s][::-1]]) for s in segments])
    traces = [go.Scatter(x=fill_x, y=fill_y, fill="toself", fillcolor=_rgba(color, BAND_OPACITY),
                         line=dict(width=0), mode="lines", name=series.label, legendgroup=group,
                         hoverinfo="skip")]
    if series.dash != "solid":  # the fill's legend swatch cannot show the edges' dash
        traces[0].showlegend = False
        traces.append(go.Scatter(x=[None], y=[None], mode="lines", name=series.label,
                                 legendgroup=group, line=dict(color=color, width=2,
                                                              dash=series.dash)))
    edge_opacity = 0.5 if smooth > 1 else 1.0
    for edge, values in (("max", band.upper), ("min", band.lower)):
        traces.append(scatter(len(band), x=band.x, y=display_array(values), mode="lines",
                              name=f"{series.label} {edge}",
                              legendgroup=group, showlegend=False, opacity=edge_opacity,
                              line=dict(color=color, width=1 if series.dash == "solid" else 2,
                                        dash=series.dash), connectgaps=False))
    full = series.band
    if full.median is not None and len(full.count) and full.count.max() > 1:
        keep = drawn_line(full.x, full.median)  # the median's spikes too, at their height
        traces.append(scatter(  # a seed band: its median, and how many runs it pools
            len(keep), x=full.x[keep], y=display_array(full.median[keep]),
            customdata=full.count[keep].astype(np.int32), mode="lines",
            name=f"{series.label} median", legendgroup=group, showlegend=False,
            line=dict(color=color, width=2.5, dash=series.dash), connectgaps=False,
            hovertemplate="%{fullData.name}<br>%{x}: %{y:.4g} of %{customdata} "
                          "run(s)<extra></extra>"))
    isolated = [seg.start for seg in segments if seg.stop - seg.start == 1]
    if isolated:  # a stretch of one point draws no line and no fill: a point with its span
        traces.append(go.Scatter(
            x=_gaps([np.array([band.x[i], band.x[i]]) for i in isolated]),
            y=_gaps([np.array([band.lower[i], band.upper[i]]) for i in isolated]),
            mode="lines+markers", name=f"{series.label} (single points)", legendgroup=group,
            showlegend=False, line=dict(color=color, width=2), marker=dict(color=color, size=7)))
    if smooth > 1:
        smoothed = coarsened(series.band.smoothed(smooth))
        for edge, values in (("max", smoothed.upper), ("min", smoothed.lower)):
            traces.append(scatter(len(smoothed), x=smoothed.x, y=display_array(values),
                                  mode="lines",
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


def _finish(fig: go.Figure, title: str, height: int, *, empty: bool, menus: Sequence[dict] = (),
            top: int = 110, left: int = 70, legend_y: float | None = None) -> go.Figure:
    """The tail every figure shares: its title top left, its height, the white template and
    margins, a horizontal legend below the plot (``legend_y``: in fractions of the plot's
    height), its menus, and a note instead of an empty panel when there is nothing to draw."""
    fig.update_layout(title=_title(title), height=height, template="plotly_white",
                      margin=dict(t=top, l=left, r=20, b=50))
    if legend_y is not None:
        fig.update_layout(legend=dict(orientation="h", y=legend_y, x=0))
    if menus:
        fig.update_layout(updatemenus=list(menus))
    if empty:
        _no_data(fig)
    return fig


def _band_axes(fig: go.Figure, x_title: str, y_title: str, log_y: bool,
               series: Sequence[BandSeries]) -> None:
    fig.update_xaxes(title_text=x_title)
    fig.update_yaxes(title_text=y_title, type="log" if log_y else "linear",
                     nticks=_band_nticks(series), **Y_AXIS_STYLE)


def _band_nticks(series: Sequence[BandSeries]) -> int:
    return log_nticks([a for s in series for a in (s.band.lower, s.band.upper)])


def _resolve_log(log_y: bool | None, series: Sequence[BandSeries]) -> bool:
    """``None``: log when the bands span more than ``LOG_DECADES`` decades."""
    if log_y is not None:
        return log_y
    return spans_decades([a for s in series for a in (s.band.lower, s.band.upper)])


def sparse_note(series: Sequence[BandSeries], point_name: str) -> str | None:
    """What a panel says when its bands have too little to draw a curve: nothing finite,
    or a single point per band (one probe: ``--steps`` below ``--probe-every``, or an
    early divergence)."""
    if not series:
        return None
    xs = [s.band.x[np.isfinite(s.band.lower) & np.isfinite(s.band.upper)] for s in series]
    if max(len(x) for x in xs) >= 2:
        return None
    at = sorted({float(v) for x in xs for v in x})
    if not at:
        return f"nothing finite to draw: every {point_name} is NaN or inf"
    where = ", ".join(f"{v:g}" for v in at)
    return (f"only one {point_name} per band (step {where}): drawn as points with their "
            f"[min, max], too few for a curve")


def _note(text: str) -> dict:
    """An annotation in the middle of the plot area (a panel with too little to draw)."""
    return dict(text=text, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.92,
                font=dict(size=13, color="gray"), bgcolor="rgba(255,255,255,0.8)")


def _axis_toggle(log_y: bool, x: float = 1.0) -> dict:
    """Buttons that switch the y axis between log and linear, the paper's choice first."""
    buttons = [dict(label="log y", method="relayout", args=[{"yaxis.type": "log"}]),
               dict(label="linear y", method="relayout", args=[{"yaxis.type": "linear"}])]
    return dict(type="buttons", direction="right", buttons=buttons if log_y else buttons[::-1],
                active=0, x=x, xanchor="right", y=1.01, yanchor="bottom", showactive=True)


def band_figure(series: Sequence[BandSeries], title: str, x_title: str, y_title: str,
                log_y: bool | None, smooth: int = 1, point_name: str = "training step",
                ) -> go.Figure:
    """Bands overlaid in one panel, with a log/linear toggle (``log_y`` None: by the data)."""
    log_y = _resolve_log(log_y, series)
    fig = go.Figure([t for s in series for t in band_traces(s, smooth)])
    _band_axes(fig, x_title, y_title, log_y, series)
    if (note := sparse_note(series, point_name)) is not None:
        fig.add_annotation(**_note(note))
    return _finish(fig, title, FIGURE_HEIGHT, top=100, legend_y=-0.15,
                   menus=[_axis_toggle(log_y)], empty=not series)


@dataclass(frozen=True)
class Reference:
    """A dashed horizontal line drawn with one learning rate's bands (e.g. 2/LR), or, given
    ``x`` and ``values``, a dashed line through those points (2/LR(t) under a schedule)."""

    y: float
    label: str
    dash: str = "dash"
    x: tuple[float, ...] = ()
    values: tuple[float, ...] = ()

    def points(self, xs: np.ndarray) -> tuple[list, list]:
        """The line's x and y: its own points, or across ``xs`` (the bands' steps)."""
        if self.x:
            return list(self.x), list(self.values)
        return [xs.min(), xs.max()], [self.y, self.y]


def title_at_lr(title: str, lr: float) -> str:
    """The figure's title with the learning rate it shows, before its subtitle."""
    head, sep, rest = title.partition("<br>")
    return f"{head} — LR {lr:g}{sep}{rest}"


def band_figure_by_lr(series_by_lr: dict[float, Sequence[BandSeries]], title: str,
                      x_title: str, y_title: str, log_y: bool | None, smooth: int = 1,
                      references: dict[float, Sequence[Reference]] | None = None,
                      initial_lr: float | None = None,
                      point_name: str = "probed step") -> go.Figure:
    """Bands per learning rate; buttons show one learning rate at a time, and the title
    says which. ``references`` adds dashed horizontal lines to a learning rate's view
    (the stability edge 2/LR for beta); ``log_y`` None: log when the bands span decades.
    """
    references = references or {}
    lrs = sorted(series_by_lr)
    if initial_lr is None or initial_lr not in series_by_lr:
        initial_lr = lrs[0] if lrs else None
    log_y = _resolve_log(log_y, [s for lr in lrs for s in series_by_lr[lr]])
    fig = go.Figure()
    owner: list[float] = []  # the learning rate of each trace, in order
    for lr in lrs:
        traces = [t for s in series_by_lr[lr] for t in band_traces(s, smooth)]
        xs = np.concatenate([s.band.x for s in series_by_lr[lr]] or [np.zeros(0)])
        for ref in references.get(lr, ()) if len(xs) else ():
            x, y = ref.points(xs)
            traces.append(go.Scatter(x=x, y=y, mode="lines+markers" if min(x) == max(x)
                                     else "lines", name=ref.label,
                                     line=dict(color="black", dash=ref.dash, width=1.5)))
        for trace in traces:
            trace.visible = lr == initial_lr
            fig.add_trace(trace)
            owner.append(lr)
    nticks = {lr: _band_nticks(series_by_lr[lr]) for lr in lrs}  # each learning rate's span
    _band_axes(fig, x_title, y_title, log_y, series_by_lr.get(initial_lr, ()))
    notes = {lr: [_note(n)] if (n := sparse_note(series_by_lr[lr], point_name)) else []
             for lr in lrs}
    if lrs:
        fig.update_layout(annotations=notes[initial_lr])
    buttons = [dict(label=f"LR {lr:g}", method="update",
                    args=[{"visible": [o == lr for o in owner]},
                          {"title.text": title_at_lr(title, lr), "annotations": notes[lr],
                           "yaxis.nticks": nticks[lr]}])
               for lr in lrs]
    menus = [_axis_toggle(log_y)]
    if buttons:
        menus.insert(0, dict(type="buttons", direction="right", buttons=buttons,
                             active=lrs.index(initial_lr), x=0, xanchor="left", y=1.01,
                             yanchor="bottom", showactive=True))
    return _finish(fig, title_at_lr(title, initial_lr) if lrs else title, FIGURE_HEIGHT, top=100,
                   legend_y=-0.15, menus=menus, empty=not lrs)


FEW_EPOCHS = 20  # up to this many epochs on an axis, a tick at every epoch


def epoch_ticks(epochs: Sequence[np.ndarray]) -> dict:
    """An epoch axis's tick settings: a tick at every whole epoch when they are few (plotly's
    own choice on 0-1 is 0, 0.2, 0.4 …: fractions of an epoch no run has), else plotly's."""
    values = _finite(epochs)
    if not len(values) or values.max() - values.min() > FEW_EPOCHS:
        return dict(tickmode="auto", autorange=True)
    if values.min() == values.max():  # one epoch alone: plotly would draw it on -1 … 1
        return dict(tickmode="linear", tick0=0, dtick=1,
                    range=[values.min() - 0.5, values.max() + 0.5])
    return dict(tickmode="linear", tick0=0, dtick=1, autorange=True)


MAX_MARKED_POINTS = 400  # per panel of the training curves: beyond, lines only
TRAINING_PANELS = (("train_acc", "training accuracy"), ("test_acc", "test accuracy"),
                   ("train_loss", "training loss (epoch mean)"), ("test_loss", "test loss"))


def _has_values(curves: Sequence[Curve], attr: str) -> bool:
    return any(np.isfinite(getattr(c, attr)).any() for c in curves)


EMPTY_TRAINING_PANEL = ("nothing to draw: no epoch evaluated yet",
                        "nothing to draw: no whole epoch yet (the training averages of a partial "
                        "epoch are left out)")


def training_curves_figure(curves: Sequence[Curve], title: str,
                           x_title: str = "epoch") -> go.Figure:
    """Fig. 1: accuracy and loss per epoch, train and test, one line per run.

    Without any accuracy (every run a regression, the DLN) the two accuracy panels are
    left out; when only some runs lack it, the accuracy panels say which. A loss panel
    whose values span more than ``LOG_DECADES`` decades opens on a log axis.
    """
    with_acc = [c for c in curves if _has_values([c], "train_acc") or _has_values([c], "test_acc")]
    panels = TRAINING_PANELS if with_acc or not curves else TRAINING_PANELS[2:]
    rows = (len(panels) + 1) // 2
    fig = make_subplots(rows=rows, cols=2, subplot_titles=[p[1] for p in panels],
                        vertical_spacing=0.14, horizontal_spacing=0.08)
    # A marker per epoch helps with a few runs; hundreds of runs x epochs of SVG markers
    # only slow the page down (measured: 1.5 s of a 60-run report's load in Chromium).
    points = sum(len(c.epoch) for c in curves)
    mode = "lines+markers" if points <= MAX_MARKED_POINTS else "lines"
    for curve in curves:
        for i, (attr, _) in enumerate(panels):
            fig.add_trace(go.Scatter(x=curve.epoch, y=getattr(curve, attr), mode=mode,
                                     name=curve.label, legendgroup=curve.label, showlegend=i == 0,
                                     line=dict(color=curve.color, dash=curve.dash, width=1.8),
                                     marker=dict(size=5), connectgaps=False),
                          row=i // 2 + 1, col=i % 2 + 1)
    for i, (attr, _) in enumerate(panels):
        values = [getattr(c, attr) for c in curves]
        log = attr.endswith("loss") and spans_decades(values)
        fig.update_yaxes(row=i // 2 + 1, col=i % 2 + 1, type="log" if log else "linear",
                         nticks=log_nticks(values) if log else 0, **Y_AXIS_STYLE)
        if curves and not _has_values(curves, attr):  # an empty panel says why
            axis = i + 1 if i else ""
            fig.update_yaxes(showticklabels=False, row=i // 2 + 1, col=i % 2 + 1)
            fig.add_annotation({**_note(EMPTY_TRAINING_PANEL[attr.startswith("train")]),
                                "xref": f"x{axis} domain", "yref": f"y{axis} domain", "y": 0.5})
    subtitle_note = ""
    if curves and not with_acc:
        subtitle_note = "no accuracy: every run is a regression (loss only)"
    elif len(with_acc) < len(curves):
        missing = ", ".join(dict.fromkeys(c.label for c in curves if c not in with_acc))
        subtitle_note = f"no accuracy (regression): {missing}"
    if subtitle_note:
        title = f"{title}<br><sup>{subtitle_note}</sup>"
    fig.update_xaxes(title_text=x_title, **epoch_ticks([c.epoch for c in curves]))
    return _finish(fig, title, rows * FIGURE_HEIGHT, empty=not curves)


def training_bands_figure(lines: dict[str, Sequence["FacetLine"]], title: str,
                          x_title: str = "epoch") -> go.Figure:
    """Fig. 1 for a large sweep: per setting, the median over its seeds and their band, in
    the panels of ``training_curves_figure`` (``lines``: panel attribute -> lines)."""
    panels = [p for p in TRAINING_PANELS if lines.get(p[0])] or TRAINING_PANELS[2:]
    rows = (len(panels) + 1) // 2
    fig = make_subplots(rows=rows, cols=2, subplot_titles=[p[1] for p in panels],
                        vertical_spacing=0.14, horizontal_spacing=0.08)
    for i, (attr, _) in enumerate(panels):
        for line in lines.get(attr, ()):
            for trace in seed_band_traces(line, showlegend=i == 0):
                fig.add_trace(trace, row=i // 2 + 1, col=i % 2 + 1)
        values = [line.band.median for line in lines.get(attr, ())]
        log = attr.endswith("loss") and spans_decades(values)
        fig.update_yaxes(row=i // 2 + 1, col=i % 2 + 1, type="log" if log else "linear",
                         nticks=log_nticks(values) if log else 0, **Y_AXIS_STYLE)
    epochs = [line.band.x for ls in lines.values() for line in ls]
    fig.update_xaxes(title_text=x_title, **epoch_ticks(epochs))
    fig.update_layout(legend=dict(groupclick="togglegroup"))
    return _finish(fig, title, rows * FIGURE_HEIGHT, empty=not epochs)


@dataclass(frozen=True)
class ModeCurve:
    """One run's per-epoch statistics of a fixed training subset in train and eval mode."""

    label: str
    color: str
    epoch: np.ndarray
    train_mode_acc: np.ndarray
    eval_mode_acc: np.ndarray
    train_mode_loss: np.ndarray
    eval_mode_loss: np.ndarray
    symbol: str = "circle"  # the learning rate's (LR_SYMBOLS): the dash is the mode


MODE_PANELS = ("accuracy: train mode (solid), eval mode (dotted)",
               "loss: train mode (solid), eval mode (dotted)",
               "accuracy gap: train mode − eval mode", "loss gap: eval mode − train mode")


def mode_figure(curves: Sequence[ModeCurve], title: str,
                x_title: str = "epoch") -> go.Figure:
    """Train mode vs eval mode: top, each run's accuracy and loss in both modes; bottom,
    their gaps (0: the running statistics give what the batch statistics give)."""
    fig = make_subplots(rows=2, cols=2, subplot_titles=MODE_PANELS, vertical_spacing=0.14,
                        horizontal_spacing=0.08)
    for c in curves:
        panels = ((1, 1, c.train_mode_acc, "solid", True), (1, 1, c.eval_mode_acc, "dot", False),
                  (1, 2, c.train_mode_loss, "solid", False),
                  (1, 2, c.eval_mode_loss, "dot", False),
                  (2, 1, c.train_mode_acc - c.eval_mode_acc, "solid", False),
                  (2, 2, c.eval_mode_loss - c.train_mode_loss, "solid", False))
        for row, col, y, dash, legend in panels:
            fig.add_trace(_line_trace(Line(c.label, c.color, dash, c.epoch, y, c.symbol),
                                      legend), row=row, col=col)
    for col in (1, 2):
        fig.add_hline(y=0, line=dict(color="black", width=1, dash="dash"), row=2, col=col)
    fig.update_yaxes(**Y_AXIS_STYLE)
    fig.update_xaxes(title_text=x_title, **epoch_ticks([c.epoch for c in curves]))
    return _finish(fig, title, 2 * FIGURE_HEIGHT, empty=not curves)


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
    symbol: str | None = None  # a larger marker of this shape (LR_SYMBOLS) tells runs apart


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


def drawn(line: Line) -> Line:
    """``line`` with the points drawn at the page's columns (``drawn_line``)."""
    keep = drawn_line(line.x, line.y)
    return line if len(keep) == len(line.x) else replace(line, x=line.x[keep], y=line.y[keep])


def _line_trace(line: Line, showlegend: bool, **kwargs) -> go.Scatter | go.Scattergl:
    return scatter(len(line.x), x=line.x, y=line.y, mode="lines+markers", name=line.label,
                      legendgroup=line.label, showlegend=showlegend, connectgaps=False,
                      line=dict(color=line.color, dash=line.dash, width=1.8),
                      marker=dict(size=4) if line.symbol is None else
                      dict(size=8, symbol=line.symbol), **kwargs)


def _selector(labels: Sequence[str], visible: Sequence[Sequence[bool]], kind: str,
              layouts: Sequence[dict] | None = None) -> dict:
    """A menu of ``labels``: option i shows the traces where ``visible[i]`` is True (and
    applies ``layouts[i]`` to the layout)."""
    layouts = layouts or [{}] * len(labels)
    buttons = [dict(label=label, method="update", args=[{"visible": list(v)}, layout])
               for label, v, layout in zip(labels, visible, layouts)]
    return dict(type=kind, direction="down" if kind == "dropdown" else "right", buttons=buttons,
                active=0, x=0, xanchor="left", y=1.01, yanchor="bottom", showactive=True)


def ics_figure(layers: Sequence[LayerICS], title: str) -> go.Figure:
    """Fig. 3: ||G - G'||_2 (log y, top) and cos(G, G') (bottom) over steps; one layer
    at a time (buttons), one line per run (colour: model, dash: learning rate)."""
    return layer_lines_figure([LayerPanels(l.title, l.l2, l.cosine) for l in layers], title,
                              ("‖G − G′‖₂ (ideal 0)", "cos(G, G′) (ideal 1)"),
                              ("‖G − G′‖₂", "cos(G, G′)"), bottom_log=False,
                              bottom_ideal=(1.0, "ideal cos = 1"))


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
    fig.update_xaxes(title_text="training step", row=2, col=1)
    fig.update_yaxes(title_text="mean ± std", row=1, col=1)
    fig.update_yaxes(title_text="pre-activation value", row=2, col=1)
    fig.update_yaxes(**Y_AXIS_STYLE)
    menus = ([_selector([m.label for m in maps], [shown(p) for p in range(len(maps))],
                        "dropdown")] if len(maps) > 1 else [])
    return _finish(fig, title, int(1.8 * FIGURE_HEIGHT), top=120, legend_y=-0.08, menus=menus,
                   empty=not maps)


@dataclass(frozen=True)
class LayerPanels:
    """Two panels of per-run lines for one layer (e.g. ||w|| on top, eta / ||w||^2 below)."""

    title: str  # e.g. "layer #5 (features.8)"
    top: Sequence[Line]
    bottom: Sequence[Line]


def layer_lines_figure(layers: Sequence[LayerPanels], title: str, subtitles: tuple[str, str],
                       y_titles: tuple[str, str], bottom_log: bool = True,
                       bottom_ideal: tuple[float, str] | None = None) -> go.Figure:
    """Two stacked panels over steps (top log y), one layer at a time (buttons; a dropdown
    beyond 4 layers), a line per run; ``bottom_ideal`` = (y, label) adds a dotted line."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=subtitles)
    owner: list[int] = []
    for i, layer in enumerate(layers):
        for row, lines in ((1, layer.top), (2, layer.bottom)):
            for line in lines:
                fig.add_trace(_line_trace(line, showlegend=row == 1, visible=i == 0),
                              row=row, col=1)
                owner.append(i)
        xs = np.concatenate([np.asarray(l.x, float) for l in layer.bottom] or [np.zeros(0)])
        if bottom_ideal is not None and len(xs):
            fig.add_trace(go.Scatter(x=[xs.min(), xs.max()], y=[bottom_ideal[0]] * 2,
                                     mode="lines", name=bottom_ideal[1], showlegend=False,
                                     hoverinfo="skip", visible=i == 0,
                                     line=dict(color="gray", dash="dot", width=1)), row=2, col=1)
            owner.append(i)
    ticks = [{"yaxis.nticks": log_nticks([line.y for line in layer.top]),  # each layer's span
              "yaxis2.nticks": log_nticks([line.y for line in layer.bottom]) if bottom_log else 0}
             for layer in layers]
    fig.update_xaxes(title_text="training step", row=2, col=1)
    fig.update_yaxes(title_text=y_titles[0], type="log", row=1, col=1)
    fig.update_yaxes(title_text=y_titles[1], type="log" if bottom_log else "linear", row=2, col=1)
    fig.update_yaxes(**Y_AXIS_STYLE)
    if layers:
        fig.update_layout(**{k.replace(".", "_"): v for k, v in ticks[0].items()})
    menus = [_axis_toggle(log_y=True)]
    if len(layers) > 1:  # a dropdown when a row of buttons would run into the axis toggle
        menus.insert(0, _selector([l.title for l in layers],
                                  [[o == i for o in owner] for i in range(len(layers))],
                                  "buttons" if len(layers) <= 4 else "dropdown", ticks))
    elif layers:
        fig.layout.annotations[0].text = f"{layers[0].title}: {subtitles[0]}"
    return _finish(fig, title, int(1.6 * FIGURE_HEIGHT), legend_y=-0.1, menus=menus,
                   empty=not layers)


@dataclass(frozen=True)
class LayerMap:
    """One run's per-layer values over steps: ``z`` is (layers, steps)."""

    label: str  # the selector's text, e.g. "VGG-A+BN LR 0.1"
    x: np.ndarray  # steps
    layers: Sequence[str]  # y axis, in forward order
    z: np.ndarray


def layer_map_figure(maps: Sequence[LayerMap], title: str, z_title: str) -> go.Figure:
    """A heat map layer x step of one run at a time (dropdown)."""
    fig = go.Figure()
    for i, m in enumerate(maps):
        fig.add_trace(go.Heatmap(x=m.x, y=[f"{j + 1}. {name}" for j, name in enumerate(m.layers)],
                                 z=display_array(m.z), colorscale="Viridis", zmin=0,
                                 name=m.label, visible=i == 0, colorbar=dict(title=z_title),
                                 hovertemplate="step %{x}<br>%{y}<br>" + z_title
                                               + " %{z:.4f}<extra></extra>"))
    fig.update_xaxes(title_text="training step")
    fig.update_yaxes(title_text="layer (forward order)", autorange="reversed")
    menus = ([_selector([m.label for m in maps], [[j == i for j in range(len(maps))]
                                                  for i in range(len(maps))], "dropdown")]
             if len(maps) > 1 else [])
    return _finish(fig, title, int(1.3 * FIGURE_HEIGHT), left=150, menus=menus, empty=not maps)


# Colours of an axis other than the model: the paper's two first, then the rest.
AXIS_COLORS = tuple(MODEL_COLORS.values()) + OTHER_COLORS
FACET_COLUMNS = 3  # panels per row
FACET_HEIGHT = 380  # per row of panels


def axis_colors(axis: str, values: Sequence) -> dict:
    """A colour per value of the colour axis: models keep the paper's colours (VGG-A blue,
    VGG-A+BN red); any other axis takes the palette in the order of its sorted values."""
    if axis == "model":
        return pool_colors([(v, str(v)) for v in values])
    return {v: AXIS_COLORS[i % len(AXIS_COLORS)] for i, v in enumerate(values)}


@dataclass(frozen=True)
class FacetLine:
    """One cell of the grid in one panel: the median over its runs and their seed band."""

    label: str
    color: str
    dash: str
    band: Band  # with ``median``; ``count``: runs finite at each x


@dataclass(frozen=True)
class FacetMetric:
    """One quantity of the faceted figure (a button): lines per panel title."""

    name: str
    x_title: str
    y_title: str
    log_y: bool
    panels: dict[str, Sequence[FacetLine]]
    x_ticks: dict = field(default_factory=lambda: dict(tickmode="auto", autorange=True))


def seed_band_traces(line: FacetLine, showlegend: bool, **where) -> list[go.Scatter]:
    """The fill of a seed band (where two or more runs are finite) and its median line;
    hover on the median says how many runs each point pools."""
    full, band = line.band, coarsened(line.band)
    traces = []
    spread = np.isfinite(band.lower) & np.isfinite(band.upper) & (band.count > 1)
    segments = contiguous_segments(spread)
    if segments:
        traces.append(go.Scatter(
            x=_gaps([np.concatenate([band.x[s], band.x[s][::-1]]) for s in segments]),
            y=_gaps([np.concatenate([band.upper[s], band.lower[s][::-1]]) for s in segments]),
            fill="toself", fillcolor=_rgba(line.color, BAND_OPACITY), line=dict(width=0),
            mode="lines", name=f"{line.label} band", legendgroup=line.label,
            showlegend=False, hoverinfo="skip", **where))
    # A median point between gaps (one epoch, a lone finite value) draws nothing as a line.
    keep = drawn_line(full.x, full.median)
    alone = any(seg.stop - seg.start == 1
                for seg in contiguous_segments(np.isfinite(full.median[keep])))
    traces.append(scatter(
        len(keep), x=display_array(full.x[keep]), y=display_array(full.median[keep]),
        customdata=full.count[keep].astype(np.int32),
        mode="lines+markers" if alone else "lines", name=line.label, legendgroup=line.label,
        showlegend=showlegend,
        line=dict(color=line.color, dash=line.dash, width=1.8), connectgaps=False,
        hovertemplate="%{fullData.name}<br>%{x}: median %{y:.4g} of %{customdata} "
                      "run(s)<extra></extra>", **where))
    return traces


def facet_figure(metrics: Sequence[FacetMetric], panels: Sequence[str], title: str,
                 band_text: str) -> go.Figure:
    """Panels (one per value of the panel axis) of seed bands; buttons switch the quantity.

    Every panel shares the quantity's axes titles; the legend names each line once
    (clicking it hides the line and its band in its panel)."""
    panels = list(panels) or [""]
    cols = min(FACET_COLUMNS, len(panels))
    rows = -(-len(panels) // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=panels, vertical_spacing=0.12 / rows
                        + 0.06, horizontal_spacing=0.06)
    owner: list[int] = []
    for m, metric in enumerate(metrics):
        for p, panel in enumerate(panels):
            for line in metric.panels.get(panel, ()):
                for trace in seed_band_traces(line, showlegend=True, visible=m == 0):
                    fig.add_trace(trace, row=p // cols + 1, col=p % cols + 1)
                    owner.append(m)
    axes = [("" if i == 0 else str(i + 1)) for i in range(rows * cols)]

    def relabel(metric: FacetMetric) -> dict:
        out = {"title.text": f"{title}<br><sup>{metric.name}: median over seeds, band "
                             f"{band_text}</sup>"}
        for p, a in enumerate(axes):
            lines = metric.panels.get(panels[p], ()) if p < len(panels) else ()
            out[f"xaxis{a}.title.text"] = metric.x_title
            out[f"yaxis{a}.title.text"] = metric.y_title
            out.update({f"xaxis{a}.{k}": v for k, v in metric.x_ticks.items()})
            out[f"yaxis{a}.type"] = "log" if metric.log_y else "linear"
            out[f"yaxis{a}.nticks"] = log_nticks([v for line in lines for v in (
                line.band.lower, line.band.upper, line.band.median)]) if metric.log_y else 0
        return out

    fig.update_layout(legend=dict(orientation="h", x=0, y=-70 / (rows * FACET_HEIGHT),
                                  yanchor="top", groupclick="togglegroup"))
    fig.update_yaxes(**Y_AXIS_STYLE)
    menus, heading = [], title
    if metrics:
        first = relabel(metrics[0])
        heading = first.pop("title.text")
        fig.update_layout(**{k.replace(".", "_"): v for k, v in first.items()})
        buttons = [dict(label=metric.name, method="update",
                        args=[{"visible": [o == m for o in owner]}, relabel(metric)])
                   for m, metric in enumerate(metrics)]
        menus = [dict(type="dropdown" if len(metrics) > 5 else "buttons",
                      direction="down" if len(metrics) > 5 else "right", buttons=buttons,
                      active=0, x=0, xanchor="left", y=1.0, yanchor="bottom", showactive=True,
                      pad=dict(b=30))]
    return _finish(fig, heading, rows * FACET_HEIGHT + 120, top=130, menus=menus,
                   empty=not metrics)
