"""The sharpness and weight-statistics instruments in a sweep: stored, read back, validated."""

import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import TINY_LRS, TINY_STEPS, add_synthetic_run, run_tiny_sweep
from landscape.cli import main
from landscape.errors import LandscapeError
from landscape.train import SweepConfig
from landscape.train.experiment import load_experiment
from landscape.read import read_sweep
from landscape.store import SweepStore
from test_report_cli import figure_divs


@pytest.fixture(scope="module")
def sweep_file(tmp_path_factory):
    # No weight_stats: the sharpness probe brings the weight statistics with it by default.
    out = tmp_path_factory.mktemp("curvature") / "c.h5"
    return run_tiny_sweep(out, "test", lrs=TINY_LRS, steps=TINY_STEPS, probe_every=4,
                          sharpness_every=4, sharpness_k=2, trace_samples=2)


@pytest.mark.parametrize("settings, records", [
    ({}, False), ({"sharpness_every": 20}, True),
    ({"sharpness_every": 20, "weight_stats": False}, False), ({"weight_stats": True}, True)])
def test_weight_statistics_come_with_the_sharpness_probe_unless_turned_off(settings, records):
    config = SweepConfig(**settings)
    config.validate()
    assert config.records_weights() is records
    assert config.uses_hooks() is (records or "sharpness_every" in settings)


def test_cli_no_weight_stats_turns_them_off_beside_the_sharpness_probe(tmp_path, capsys):
    out = tmp_path / "n.h5"
    assert main(["run", "--dataset", "cifar10-mini", "--models", "vgg_a_bn", "--lrs", "0.1",
                 "--width", "0.125", "--steps", "2", "--probe-every", "2",
                 "--sharpness-every", "2", "--no-weight-stats", "--device", "cpu",
                 "--out", str(out)]) == 0, capsys.readouterr().err
    with h5py.File(out, "r") as f:
        run = f["runs"][next(iter(f["runs"]))]
        assert "curvature" in run and "weights" not in run


@pytest.fixture(scope="module")
def sweep(sweep_file):
    return read_sweep(sweep_file)


def test_curvature_group_is_stored_and_read_back(sweep):
    for run in sweep.runs:
        c = run.curvature
        assert c.step.tolist() == [0, 4]
        assert c.lambda_max.shape == (2, 2) and (np.diff(c.lambda_max, axis=1) <= 0).all()
        assert np.isfinite(c.trace).all() and np.isfinite(c.gHg).all()
        assert (c.iterations > 0).all()
        # gHg is a Rayleigh quotient: never above the largest eigenvalue (tolerance 1e-3).
        assert (c.gHg <= c.lambda_max[:, 0] * (1 + 1e-3) + 1e-9).all()


def test_weight_statistics_every_step(sweep):
    for run in sweep.runs:
        w = run.weights
        assert w.step.tolist() == list(range(TINY_STEPS))
        assert w.norm.shape == (TINY_STEPS, 11) and len(w.layer) == 11
        np.testing.assert_allclose(w.effective_lr, run.lr / w.norm ** 2)
        assert (w.angular_update > 0).all() and (w.angular_update < math.pi / 2).all()
        expected = [True] * 10 + [False] if run.model == "vgg_a_bn" else [False] * 11
        assert w.scale_invariant.tolist() == expected


def test_probe_split_by_layer_is_stored_and_sums_to_grad_diff(sweep):
    for run in sweep.runs:
        p = run.probe
        n_layers = 21 if run.model == "vgg_a_bn" else 11  # + 10 BatchNorm modules
        assert len(p.layer) == n_layers and p.grad_diff_layer.shape == (2, 4, n_layers)
        # float32 runs: the total is summed on the device in float32, the split on the host.
        np.testing.assert_allclose((p.grad_diff_layer ** 2).sum(-1), p.grad_diff ** 2, rtol=1e-6)
        np.testing.assert_allclose((p.grad_norm_layer ** 2).sum(-1), p.grad_norm ** 2, rtol=1e-6)


@pytest.mark.parametrize("args, message", [
    (["--sharpness-every", "0"], "--sharpness-every must be a positive integer"),
    (["--sharpness-every", "5", "--sharpness-k", "0"], "--sharpness-k must be a positive integer"),
    (["--sharpness-every", "5", "--trace-samples", "-1"], "--trace-samples must be an integer >= 0"),
    (["--trace-samples", "4"], "the sharpness probe is off"),
])
def test_bad_sharpness_options_exit_2_with_one_line(tmp_path, capsys, args, message):
    out = tmp_path / "x.h5"
    code = main(["run", "--dataset", "cifar10-mini", "--steps", "2", "--width", "0.125",
                 "--device", "cpu", "--out", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not out.exists()


def figure_shows(page: str, text: str) -> bool:
    """Whether ``text`` is in a figure's JSON as plotly writes it with either of its engines.

    Both escape "/", "<" and ">"; the standard ``json`` engine also writes non-ASCII as
    ``\\uXXXX``, while ``orjson`` (used whenever it is installed) keeps it as UTF-8.
    """
    def escaped(s: str) -> str:
        return s.replace("/", "\\u002f").replace("<", "\\u003c").replace(">", "\\u003e")
    return (escaped(json.dumps(text)[1:-1]) in page
            or escaped(json.dumps(text, ensure_ascii=False)[1:-1]) in page)


def test_plot_draws_sharpness_layers_and_weights(sweep_file, tmp_path, capsys):
    report = tmp_path / "c.html"
    assert main(["plot", str(sweep_file), "-o", str(report)]) == 0, capsys.readouterr().err
    page = report.read_text(encoding="utf-8")
    divs = figure_divs(page)
    assert divs.index("fig-layer-split") == divs.index("fig-grad-probe") + 1  # 2c after 2b
    assert divs[-2:] == ["fig-sharpness", "fig-weights"]
    assert "Sharpness and the edge of stability" in page
    for text in ("λ<sub>max</sub>", "2/LR = 20", "2/LR = 40", "(scale-invariant)", "LR / ‖w‖²",
                 "share"):
        assert figure_shows(page, text), text


def synthetic_with_curvature(store, lr, **settings):
    log = add_synthetic_run(store, "vgg_a_bn", lr, 20, flush=False, **settings)
    log.declare("curvature", {"step": (np.int64, ()), "lambda_max": (np.float64, (1,)),
                              "residual": (np.float64, (1,)), "trace": (np.float64, ()),
                              "gHg": (np.float64, ()), "iterations": (np.int64, ())},
                {"eigenvalue": np.arange(1, 2)})
    for step in range(0, 20, 5):
        log.append("curvature", step=step, lambda_max=[30.0 + step], residual=[1e-4],
                   trace=math.nan, gHg=10.0, iterations=12)
    store.flush(log)


@pytest.mark.parametrize("settings, line, caption", [
    ({"momentum": 0.9}, "(2 + 2μ)/LR = 38", None),
    ({"optimizer": "Adam"}, None, "No line for Adam: an adaptive optimizer"),
])
def test_sharpness_stability_line_follows_the_optimizer(tmp_path, capsys, settings, line, caption):
    path = tmp_path / "s.h5"
    synthetic_with_curvature(SweepStore(path, config={}, command="synthetic"), 0.1, **settings)
    assert read_sweep(path).runs[0].curvature.lambda_max[:, 0].tolist() == [30, 35, 40, 45]
    assert main(["plot", str(path), "-o", str(tmp_path / "s.html")]) == 0
    page = (tmp_path / "s.html").read_text(encoding="utf-8")
    sharpness = page[page.index('id="sharpness"'):]
    assert not figure_shows(sharpness, "2/LR = 20")
    if line:
        assert figure_shows(sharpness, line)
    if caption:
        assert caption in sharpness and not figure_shows(sharpness, "(2 + 2μ)/LR =")


FIG4 = Path(__file__).resolve().parents[1] / "experiments" / "fig4_landscape_vgg.toml"


def test_fig4_curvature_variant_adds_the_instruments_and_runs(tmp_path):
    values = load_experiment(FIG4, light=True, variant="curvature")
    assert values.pop("out") == "runs/fig4_landscape_vgg-light-curvature.h5"
    assert values["sharpness_every"] and values["trace_samples"] > 0 and values["weight_stats"]
    assert values["dataset"] == "cifar10-mini" and values["steps"] <= 200
    SweepConfig(**values).validate()
    values.update(steps=3, probe_every=2, sharpness_every=2, lrs=values["lrs"][:1])
    out = run_tiny_sweep(tmp_path / "v.h5", "test", **{k: v for k, v in values.items()
                                                        if k not in ("models", "dataset",
                                                                     "width", "batch_size")})
    for run in read_sweep(out).runs:
        assert run.curvature.step.tolist() == [0, 2] and len(run.weights.step) == 3
        assert np.isfinite(run.curvature.trace).all()


def test_variant_errors_are_one_line(tmp_path, capsys):
    code = main(["run", "--config", str(FIG4), "--variant", "nope", "--out",
                 str(tmp_path / "x.h5")])
    err = capsys.readouterr().err
    assert code == 2 and "has no [variant.nope] section (variants: curvature)" in err
    assert err.count("\n") == 1 and not (tmp_path / "x.h5").exists()
    assert main(["run", "--variant", "curvature"]) == 2
    assert "give --config FILE" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text('[run]\nsteps = 5\n[variant.fast]\nsharpness_every = "x"\n')
    with pytest.raises(LandscapeError, match=r"\[variant.fast\].sharpness_every"):
        load_experiment(bad, variant="fast")
