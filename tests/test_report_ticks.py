"""The axes a reader sees, read off a report drawn in headless Chromium: log-axis labels that
say their value and do not overlap (before: "9x10⁻¹ 8x10⁻¹ …" piled up near 1 and 20 read
"2x10"), whole epochs on the epoch axes (before: 0.2 … 0.8 on a 2-epoch run, -1 … 1 around a
single epoch), no blank space after the last section, and an empty training panel that says
why. Skipped without chromium, like tests/test_report_browser.py."""

from __future__ import annotations

import html
import json
import re

import numpy as np
import pytest

from conftest import probe_record
from landscape.report import figures as fg
from landscape.report.bands import Band
from landscape.report.build import build_report
from landscape.store import SweepStore, read_sweep
from test_report_browser import CHROMIUM, chromium
from test_report_cli import figures

STEPS_PER_EPOCH = 20


def _run(store, model, lr, epochs, grad_scale):
    """A run of ``epochs`` epochs whose consecutive-gradient distance runs over a decade
    from ``grad_scale`` (VGG-A 0.2-2, VGG-A+BN 2-20: figure 2a spans 2 decades, like the
    quick start's 0.15-25)."""
    eta = np.array([0.5, 1.0, 2.0, 4.0]) * lr
    log = store.run(f"{model}-lr{lr:g}", eta=eta, model=model, lr=lr, seed=0, batch_size=32,
                    optimizer="sgd", norm="batch" if model.endswith("_bn") else "none")
    step = np.arange(epochs * STEPS_PER_EPOCH)
    loss = 2.3 * np.exp(-step / 40.0) + 0.1
    log.add_steps(step=step, epoch=step // STEPS_PER_EPOCH, loss=loss,
                  grad_norm=np.ones(len(step)), beta_consecutive=np.full(len(step), 2 / lr),
                  grad_diff=grad_scale * 10 ** np.linspace(0, 1, len(step)))
    for s in range(0, len(step), 5):
        log.add_probe(probe_record(s, eta, loss[s] * np.array([1.0, 1.1, 1.3, 2.0]),
                                   grad_scale * np.array([1.0, 2.0, 3.0, 4.0]), 2 / lr))
    for e in range(epochs):
        log.add_epoch(epoch=e, steps=STEPS_PER_EPOCH, train_loss=2.0 - 0.3 * e,
                      train_acc=0.2 + 0.1 * e, test_loss=2.1 - 0.3 * e, test_acc=0.18 + 0.1 * e,
                      seconds=1.0, train_mode_loss=1.9 - 0.3 * e, train_mode_acc=0.25 + 0.1 * e,
                      eval_mode_loss=2.0 - 0.3 * e, eval_mode_acc=0.2 + 0.1 * e)
    log.set_attrs(status="completed", steps_completed=len(step), seconds=2.0)
    store.flush(log)


def _page(tmp_path, epochs: int) -> str:
    path = tmp_path / f"ticks-{epochs}.h5"
    store = SweepStore(path, config={"lrs": [0.05, 0.1]}, command="synthetic")
    for lr in (0.05, 0.1):
        _run(store, "vgg_a", lr, epochs, 0.2)
        _run(store, "vgg_a_bn", lr, epochs, 2.0)
    return build_report([read_sweep(path)])


# Injected last in <body>: the tick labels of every axis, as drawn, after the log/linear
# toggle went to linear and back, and after 4b's menu switched to a per-step quantity.
READ_TICKS = """<script>
const labels = div => [...div.querySelectorAll("g.xaxislayer-above, g.yaxislayer-above")].map(
  layer => ({axis: layer.classList.contains("xaxislayer-above") ? "x" : "y",
             ticks: [...layer.querySelectorAll("text")].map(t => {
               const box = t.getBoundingClientRect();
               return {text: t.textContent, top: box.top, bottom: box.bottom, left: box.left,
                       right: box.right};
             })}));
const annotations = div => [...div.querySelectorAll("g.annotation-text-g text")].map(
  t => t.textContent);
window.addEventListener("load", () => setTimeout(async () => {
  const out = {}, byId = id => document.getElementById(id);
  const sections = document.querySelectorAll("section");
  out.blankAtEnd = document.documentElement.scrollHeight
    - (sections[sections.length - 1].getBoundingClientRect().bottom + window.scrollY);
  for (const div of document.querySelectorAll(".plotly-graph-div"))
    out[div.id] = {labels: labels(div), notes: annotations(div)};
  const grad = byId("fig-grad-grid"), toggle = grad.layout.updatemenus[0].buttons;
  await Plotly.relayout(grad, toggle[1].args[0]);  // linear y
  out.linear = labels(grad);
  await Plotly.relayout(grad, toggle[0].args[0]);  // back to log y
  out.relogged = labels(grad);
  const grid = byId("fig-grid"), menu = grid.layout.updatemenus[0].buttons;
  const perStep = menu.find(b => b.label === "minibatch training loss");
  await Plotly.update(grid, perStep.args[0], perStep.args[1]);
  out.perStep = labels(grid);
  const pre = document.createElement("pre");
  pre.id = "ticks";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
}, 1000));
</script>"""


def _drawn(tmp_path, page: str, name: str) -> dict:
    report = tmp_path / f"{name}.html"
    report.write_text(page.replace("</body>", READ_TICKS + "</body>", 1), encoding="utf-8")
    dom = chromium("--window-size=1400,1000", "--virtual-time-budget=15000", "--dump-dom",
                   report.as_uri(), user_data=tmp_path / f"profile-{name}")
    found = re.search(r'<pre id="ticks">(.*?)</pre>', dom.stdout, re.S)
    assert found, f"the tick script did not run; chromium said: {dom.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


def _y_labels_readable(layers: list[dict]) -> list[str]:
    """The y labels of a figure's axes; asserts none says "x10" and none overlaps another."""
    texts = []
    for layer in (l for l in layers if l["axis"] == "y"):
        ticks = sorted((t for t in layer["ticks"] if t["text"]), key=lambda t: t["top"])
        for upper, lower in zip(ticks, ticks[1:]):
            assert upper["bottom"] <= lower["top"] + 0.5, (upper, lower)  # no overlap
        texts += [t["text"] for t in ticks]
    assert texts and not any("x10" in t or "×10" in t for t in texts), texts
    return texts


def _x_labels(layers: list[dict]) -> list[str]:
    return [t["text"] for layer in layers if layer["axis"] == "x" for t in layer["ticks"]
            if t["text"]]


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary; .ci/run installs Debian's "
                                             "`chromium` (apt-get install -y chromium)")
def test_axes_read_cleanly_in_chromium(tmp_path):
    drawn = _drawn(tmp_path, _page(tmp_path, epochs=2), "two-epochs")
    # The page ends with its last section: 64 px (the body's padding, the last margin).
    assert 0 <= drawn["blankAtEnd"] <= 100
    grad = _y_labels_readable(drawn["fig-grad-grid"]["labels"])
    # 0.2-20 on a log axis: 1, 2 and 5 per decade, values as plain numbers (20, not 2x10).
    assert {"0.2", "0.5", "1", "2", "5", "10", "20"} <= set(grad), grad
    assert all(float(t) > 0 for t in grad)
    _y_labels_readable(drawn["linear"])
    assert set(_y_labels_readable(drawn["relogged"])) == set(grad)  # linear y and back
    for figure in (f for f in drawn if f.startswith("fig-") and f != "fig-layer-split"):
        _y_labels_readable(drawn[figure]["labels"])
    # Epoch axes: whole epochs only (0 and 1), in 4a, 4b and 4c.
    for figure in ("fig-training", "fig-grid", "fig-modes"):
        assert set(_x_labels(drawn[figure]["labels"])) == {"0", "1"}, figure
    # 4b switched to a per-step quantity: plotly's own step ticks again, not one per step.
    steps = _x_labels(drawn["perStep"])
    assert "0" in steps and len(steps) < STEPS_PER_EPOCH  # of 40 steps


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary")
def test_a_single_epoch_is_drawn_at_0_not_on_minus_1_to_1(tmp_path):
    drawn = _drawn(tmp_path, _page(tmp_path, epochs=1), "one-epoch")
    for figure in ("fig-training", "fig-grid", "fig-modes"):
        assert set(_x_labels(drawn[figure]["labels"])) == {"0"}, figure  # not -1 … 1


def test_an_empty_training_panel_says_why():
    curve = fg.Curve("run", "#1f77b4", "solid", np.array([0]), np.array([np.nan]),
                     np.array([0.3]), np.array([np.nan]), np.array([2.0]))
    fig = fg.training_curves_figure([curve], "Training curves")
    notes = [a.text for a in fig.layout.annotations]
    assert notes.count(fg.EMPTY_TRAINING_PANEL[1]) == 2  # training accuracy and loss
    refs = {(a.xref, a.yref) for a in fig.layout.annotations
            if a.text == fg.EMPTY_TRAINING_PANEL[1]}
    assert refs == {("x domain", "y domain"), ("x3 domain", "y3 domain")}
    assert fig.layout.yaxis.showticklabels is False and fig.layout.yaxis2.showticklabels is None


def test_runs_of_one_pool_in_4c_differ_by_their_learning_rates_marker(tmp_path):
    """The dash of 4c says train or eval mode, so a pool's two learning rates (same colour)
    would look alike in its legend: their markers differ."""
    data, _ = figures(_page(tmp_path, epochs=2))["fig-modes"]
    symbols = {t["name"]: t["marker"].get("symbol") for t in data}
    assert symbols == {"VGG-A LR 0.05 seed 0": "circle", "VGG-A LR 0.1 seed 0": "square",
                       "VGG-A+BN LR 0.05 seed 0": "circle", "VGG-A+BN LR 0.1 seed 0": "square"}


def test_a_dashed_band_shows_its_dash_in_the_legend():
    band = Band(np.arange(3.0), np.ones(3), np.full(3, 2.0), np.full(3, 1))
    solid, dashed = (fg.band_traces(fg.BandSeries("λ", "#1f77b4", band, dash=d))
                     for d in ("solid", "dash"))
    in_legend = [[t for t in traces if t.showlegend is not False] for traces in (solid, dashed)]
    assert [t.fill for t in in_legend[0]] == ["toself"]  # a solid band: its fill
    [entry] = in_legend[1]
    assert entry.fill is None and entry.line.dash == "dash" and entry.name == "λ"
