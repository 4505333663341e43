"""The report at cluster scale (issue 29): ``landscape plot`` on 1,000 runs of 15,000 steps.

Run through ``python benchmarks/bench.py --suite report``. The sweep is written through the
public writer API (``SweepStore``, ``store.run``, ``log.add_steps/add_probe/add_epoch``), run by
run: the shape of a paper-length sweep on a cluster, 2 models x 10 learning rates x 5 weight
decays (100 settings) x 10 seeds, each run 15,000 steps with a probe every 100 steps (4 step
sizes, 21 layers) and 40 epochs. The values are synthetic but shaped like training (a decaying
loss with noise and rare spikes, a β that settles), so decimation has spikes to keep.

Measured: the seconds of ``landscape plot`` (a fresh process: the CLI a user runs), the page's
size, and the seconds headless Chromium needs to reach the page's load event with every
figure drawn (``report_load_seconds``); for the 60-run page too, as a reference.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from landscape.store import SweepStore, runs_dir

ETAS_X = np.array([0.5, 1.0, 2.0, 4.0])  # the probe's step sizes, x LR
LAYERS = tuple(f"features.{i}" for i in range(21))  # VGG-A+BN's modules owning parameters
MODELS = ("vgg_a", "vgg_a_bn")
LRS = (0.01, 0.02, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.3, 0.5)
WEIGHT_DECAYS = (0.0, 1e-5, 1e-4, 5e-4, 1e-3)


STEPS = 15_000  # the paper's length


def settings(runs: int, seeds: int = 10) -> list[tuple[str, float, float, int]]:
    """``runs`` (model, lr, weight decay, seed) tuples, every setting with ``seeds`` seeds,
    both models at each learning rate first (60 runs: 2 models x 3 learning rates x 10 seeds)."""
    grid = itertools.product(WEIGHT_DECAYS, LRS, MODELS, range(seeds))
    return [(model, lr, wd, seed) for wd, lr, model, seed in itertools.islice(grid, runs)]


def run_attrs(model: str, lr: float, weight_decay: float, seed: int, steps: int,
              epochs: int) -> dict:
    """A finished run's attributes, as ``landscape run`` writes them."""
    return dict(model=model, norm="batch" if model.endswith("_bn") else "none", lr=lr, seed=seed,
                weight_decay=weight_decay, momentum=0.0, nesterov=False, optimizer="sgd",
                activation="relu", batch_size=128, dataset="cifar10", width=1.0, dropout=0.0,
                augment=False, precision="fp32", probe_dtype="float32", grid="sequential",
                grid_size=1, loss="cross_entropy", label_smoothing=0.0, lr_schedule="constant",
                steps_per_epoch=steps // epochs, steps_completed=steps, seconds=1.0)


def series(rng: np.random.Generator, steps: int, start: float, end: float,
           spikes: float = 1e-3) -> np.ndarray:
    """A decay from ``start`` to ``end`` with multiplicative noise and rare 3-10x spikes."""
    t = np.arange(steps) / max(steps - 1, 1)
    base = end + (start - end) * np.exp(-5 * t)
    noisy = base * np.exp(rng.normal(0, 0.15, steps))
    spike = rng.random(steps) < spikes
    noisy[spike] *= rng.uniform(3, 10, spike.sum())
    return noisy


def write_run(store: SweepStore, index: int, setting: tuple, steps: int, probe_every: int,
              epochs: int) -> None:
    model, lr, wd, seed = setting
    rng = np.random.default_rng(index)
    bn = model.endswith("_bn")
    log = store.run(f"{model}-lr{lr:g}-wd{wd:g}-seed{seed}", ETAS_X * lr,
                    **run_attrs(model, lr, wd, seed, steps, epochs))
    per_epoch = steps // epochs
    step = np.arange(steps)
    log.add_steps(step=step, epoch=np.minimum(step // per_epoch, epochs - 1),
                  loss=series(rng, steps, 2.3, 0.05 if bn else 0.3),
                  grad_norm=series(rng, steps, 1.0, 0.5),
                  grad_diff=series(rng, steps, 1.0, 0.4 if bn else 1.2),
                  beta_consecutive=series(rng, steps, 5.0, 2.0 if bn else 20.0))
    probed = step[::probe_every]
    for i, s in enumerate(probed):
        decay = np.exp(-5 * s / steps)
        loss = (0.3 + 2 * decay) * (1 + ETAS_X * (0.05 if bn else 0.4)) * rng.uniform(0.9, 1.1)
        log.add_probe(SimpleNamespace(  # what RunLog.add_probe reads of a LandscapeRecord
            step=int(s), eta=ETAS_X * lr, lr=lr, loss=loss,
            grad_diff=rng.random(4) * (1 + 3 * (not bn)),
            beta=float(rng.uniform(1, 3) * (1 if bn else 8)), grad_norm=float(decay + 0.5),
            loss_at_theta=float(loss[0] * 0.98), layer=LAYERS,
            grad_diff_layer=rng.random((4, len(LAYERS))), grad_norm_layer=rng.random(len(LAYERS))))
    for e in range(epochs):
        log.add_epoch(epoch=e, steps=per_epoch, train_loss=float(np.exp(-e / 10)),
                      train_acc=1 - 0.9 * np.exp(-e / 10), test_loss=float(np.exp(-e / 12)) + 0.3,
                      test_acc=0.8 - 0.7 * np.exp(-e / 10), seconds=10.0)
    log.set_attrs(status="completed")
    store.flush(log)
    store.release(log.name)


def write_big_sweep(path: Path, runs: int = 1000, steps: int = STEPS, probe_every: int = 100,
                    epochs: int = 40, seeds: int = 10) -> Path:
    """A finished sweep of ``runs`` runs at ``path``; returns it."""
    store = SweepStore(path, config={"bench": "report", "runs": runs, "steps": steps},
                       command="report_bench", overwrite=True)
    try:
        for index, setting in enumerate(settings(runs, seeds)):
            write_run(store, index, setting, steps, probe_every, epochs)
    finally:
        store.close()
    return path


# Injected at the end of <body>: at the load event, how long the page took (from navigation
# start) and whether every figure is drawn (plotly has made its SVG and traces), written into
# a <pre> that --dump-dom prints.
LOAD_PROBE = """<script>
window.addEventListener("load", () => {
  const loaded = performance.now();
  const divs = [...document.querySelectorAll(".plotly-graph-div")];
  const drawn = divs.filter(d => d.classList.contains("js-plotly-plot")
                              && d.querySelector("svg.main-svg")
                              && d.querySelectorAll("g.trace, g.heatmaplayer image").length);
  const out = document.createElement("pre");
  out.id = "load-check";
  out.textContent = JSON.stringify({loaded, figures: divs.length, drawn: drawn.length});
  document.body.appendChild(out);
});
</script>"""

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars")


def probe_page(page: Path, script: str, pre_id: str, chromium: str = "chromium"
               ) -> tuple[dict, float]:
    """Open ``page`` from disk in headless Chromium with ``script`` injected at the end of its
    <body>; the JSON the script writes into ``<pre id=pre_id>``, and the process's seconds."""
    with tempfile.TemporaryDirectory() as folder:
        probed = Path(folder) / page.name
        probed.write_text(page.read_text(encoding="utf-8").replace(
            "</body>", script + "</body>", 1), encoding="utf-8")
        started = time.perf_counter()
        done = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={folder}/profile",
                               "--dump-dom", probed.as_uri()],
                              capture_output=True, text=True, timeout=300)
        wall = time.perf_counter() - started
    found = re.search(f'<pre id="{pre_id}">(.*?)</pre>', done.stdout)
    if not found:
        raise RuntimeError(f"the page's probe did not run in {page}: {done.stderr[-500:]}")
    return json.loads(found.group(1).replace("&quot;", '"')), wall


def report_load_seconds(page: Path, chromium: str = "chromium") -> dict:
    """Headless Chromium opening ``page`` from disk: seconds to its load event (every figure
    drawn by then, or the dict says how many were), and the whole process's wall seconds."""
    check, wall = probe_page(page, LOAD_PROBE, "load-check", chromium)
    return {"load_seconds": check["loaded"] / 1e3, "figures": check["figures"],
            "drawn": check["drawn"], "process_seconds": wall}


def plot_seconds(sweep: Path, page: Path, *args: str) -> float:
    """Wall seconds of ``landscape plot`` in a fresh process (imports included: what a user
    waits for)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "landscape", "plot", str(sweep), "-o", str(page),
                    "--overwrite", *args], check=True, capture_output=True)
    return time.perf_counter() - started


# Injected at the end of <body>: a click sorts the run table by its "test loss" column, then
# its filter box keeps the rows of one setting, each timed in the page.
TABLE_PROBE = """<script>
window.addEventListener("load", () => {
  const table = document.querySelector("#runs table.sortable");
  const th = [...table.querySelectorAll("thead th")].find(h => h.textContent === "test loss");
  let started = performance.now();
  th.click();
  const sortMs = performance.now() - started;
  const filter = document.querySelector("#runs input.table-filter");
  filter.value = "vgg_a_bn-lr0.1-wd0-";
  started = performance.now();
  filter.applyFilter();
  const filterMs = performance.now() - started;
  const out = document.createElement("pre");
  out.id = "table-check";
  out.textContent = JSON.stringify({sortMs, filterMs, rows: table.tBodies[0].rows.length,
    shown: [...table.tBodies[0].rows].filter(r => !r.hidden).length});
  document.body.appendChild(out);
});
</script>"""


def table_milliseconds(page: Path, chromium: str = "chromium") -> dict:
    """Milliseconds a click takes to sort the page's run table, and a filter to apply."""
    return probe_page(page, TABLE_PROBE, "table-check", chromium)[0]


def report_tables(run_counts=(60, 1000), steps: int = STEPS) -> list[str]:
    """Per sweep size: plot seconds, page size, Chromium's load and the run table's sort and
    filter; then a selected page (one setting's 10 seeds, every point)."""
    rows = ["| runs | sweep on disk | `landscape plot` (s) | page | load event, every figure drawn "
            "(s) | Chromium process (s) | sort / filter the run table (ms) |",
            "|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        for runs in run_counts:
            sweep = write_big_sweep(folder / f"s{runs}.h5", runs=runs, steps=steps)
            disk = sweep.stat().st_size + sum(p.stat().st_size for p in runs_dir(sweep).iterdir())
            page = folder / f"s{runs}.html"
            seconds = plot_seconds(sweep, page)
            load, table = report_load_seconds(page), table_milliseconds(page)
            rows.append(f"| {runs:,} | {disk / 2**20:,.0f} MiB | {seconds:.1f} | "
                        f"{page.stat().st_size / 2**20:.1f} MiB | {load['load_seconds']:.1f} "
                        f"({load['drawn']}/{load['figures']}) | {load['process_seconds']:.1f} | "
                        f"{table['sortMs']:.0f} / {table['filterMs']:.0f} |")
            print(rows[-1], flush=True)
        detail = folder / "detail.html"
        seconds = plot_seconds(sweep, detail, "--where", "model=vgg_a_bn,lr=0.1,weight_decay=0",
                               "--points", "all")
        load = report_load_seconds(detail)
        rows += ["", f"`landscape plot s{run_counts[-1]}.h5 --where model=vgg_a_bn,lr=0.1,"
                     f"weight_decay=0 --points all` (10 runs, every step): {seconds:.1f} s, "
                     f"{detail.stat().st_size / 2**20:.1f} MiB, load event "
                     f"{load['load_seconds']:.1f} s ({load['drawn']}/{load['figures']} drawn)"]
    return rows


if __name__ == "__main__":
    started = time.perf_counter()
    write_big_sweep(Path(sys.argv[1]), runs=int(sys.argv[2]) if len(sys.argv) > 2 else 1000)
    print(f"{time.perf_counter() - started:.1f} s")
