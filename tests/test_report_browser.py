"""Render a real report in headless Chromium: every figure draws, no JavaScript error.

`.ci/run` installs Debian's `chromium` when it is missing; only without it is this skipped.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from landscape.cli import main

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
FIGURES = 11  # 1a, 1b, 2a, 2b, 2c, 3, 4, 4b (the grid by setting), 4c (train vs eval mode), and 6 (ICS) and 7 (activations) of the instrumented sweep

# Injected first in <head>: records every error, before plotly.js even loads.
ERROR_TRAP = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message || e)));
window.addEventListener("unhandledrejection", e => window.__errors.push("rejection: " + e.reason));
const __consoleError = console.error;
console.error = (...a) => { window.__errors.push("console: " + a.join(" ")); __consoleError(...a); };
</script>"""

# Injected last in <body>: after the figures drew, clicks the first learning-rate button (it opens on
# the one closest to 0.1)
# of the Fig. 4a selector, then writes what it saw into a <pre> that --dump-dom shows.
PROBE = """<script>
window.addEventListener("load", () => setTimeout(() => {
  const figures = [...document.querySelectorAll(".plotly-graph-div")].map(div => ({
    id: div.id,
    drawn: div.classList.contains("js-plotly-plot"),
    main_svg: div.querySelectorAll("svg.main-svg").length,
    plots: div.querySelectorAll("g.scatterlayer").length,
    traces: div.querySelectorAll("g.trace").length,
    paths: [...div.querySelectorAll("g.trace path")].filter(p => (p.getAttribute("d") || "").length > 2).length,
    heatmaps: div.querySelectorAll("g.heatmaplayer image").length,
  }));
  const probe = document.getElementById("fig-loss-probe");
  const before = probe.data.map(t => t.visible !== false);
  const buttons = probe.querySelectorAll("g.updatemenu-button");
  if (buttons.length > 1) buttons[0].dispatchEvent(new MouseEvent("click", {bubbles: true}));
  setTimeout(() => {
    const after = probe.data.map(t => t.visible !== false);
    const out = document.createElement("pre");
    out.id = "report-check";
    out.textContent = JSON.stringify({figures, errors: window.__errors, before, after,
                                      buttons: buttons.length});
    document.body.appendChild(out);
  }, 500);
}, 500));
</script>"""


def chromium(*args: str, user_data: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--hide-scrollbars", f"--user-data-dir={user_data}", *args],
        capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary; .ci/run installs Debian's "
                                             "`chromium` (apt-get install -y chromium)")
def test_report_draws_every_figure_in_chromium(tiny_sweep, diverged_sweep, instrumented_sweep,
                                               tmp_path):
    report = tmp_path / "report.html"
    assert main(["plot", str(tiny_sweep), str(diverged_sweep), str(instrumented_sweep),
                 "-o", str(report)]) == 0
    page = report.read_text(encoding="utf-8")
    instrumented = tmp_path / "instrumented.html"
    instrumented.write_text(page.replace("<head>", "<head>" + ERROR_TRAP, 1)
                            .replace("</body>", PROBE + "</body>", 1), encoding="utf-8")

    dom = chromium("--virtual-time-budget=10000", "--dump-dom", instrumented.as_uri(),
                   user_data=tmp_path / "profile-dom")
    found = re.search(r'<pre id="report-check">(.*?)</pre>', dom.stdout, re.S)
    assert found, f"the check script did not run; chromium said: {dom.stderr[-2000:]}"
    check = json.loads(html.unescape(found.group(1)))

    assert check["errors"] == []
    assert len(check["figures"]) == FIGURES
    for figure in check["figures"]:
        assert figure["drawn"] and figure["main_svg"] >= 1, figure
        if figure["id"] == "fig-layer-split":  # a heat map only: the selected run's
            assert figure["heatmaps"] == 1, figure
            continue
        assert figure["plots"] >= 1 and figure["traces"] >= 1 and figure["paths"] >= 1, figure
    training = next(f for f in check["figures"] if f["id"] == "fig-training")
    assert training["plots"] == 4  # train/test accuracy and loss
    ics = next(f for f in check["figures"] if f["id"] == "fig-ics")
    assert ics["plots"] == 2 and ics["heatmaps"] == 0  # ||G - G'|| and cos(G, G')
    activations = next(f for f in check["figures"] if f["id"] == "fig-activations")
    assert activations["plots"] == 2 and activations["heatmaps"] == 1  # the selected run x layer
    # The learning-rate selector really switches what is shown.
    assert check["buttons"] >= 2 and check["before"] != check["after"] and any(check["after"])

    screenshot = tmp_path / "report.png"
    chromium("--window-size=1400,4200", f"--screenshot={screenshot}", "--virtual-time-budget=5000",
             report.as_uri(), user_data=tmp_path / "profile-shot")
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot.stat().st_size > 50_000  # drawn figures, not a blank page
