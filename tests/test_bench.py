"""benchmarks/bench.py: its command line, and the Fig. 4 suite's phase timer on a real sweep."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import landscape.train.sweep as sweep_module
from landscape.store import SweepStore
from landscape.train import GridRuns, SequentialRun, StreamRuns

from conftest import TINY_LRS, run_tiny_sweep

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"
spec = importlib.util.spec_from_file_location("bench", BENCH)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_help_names_every_suite(capsys):
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert all(f"--suite {suite}" in out for suite in bench.SUITES)


@pytest.mark.parametrize("argv, message", [
    (["--suite", "cpu", "--epochs", "1"], "--epochs must be at least 2"),
    (["--suite", "cpu", "--no-probe"], "--no-probe does not apply to --suite cpu"),
    (["--suite", "cpu", "--device", "cuda"], "--device does not apply to --suite cpu"),
    (["--suite", "gpucheck", "--width", "0.5"], "--width does not apply to --suite gpucheck"),
    (["--suite", "cpu", "--width", "0"], "--width must be positive"),
    (["--suite", "experiments", "--steps", "0"], "--steps must be at least 1"),
    (["--suite", "cpu", "some.toml"], "experiment files do not apply"),
    (["--suite", "experiments", "no/such/file.toml"], "no experiment file no/such/file.toml"),
    (["--suite", "nope"], "invalid choice: 'nope'"),
])
def test_a_bad_setting_is_one_error_line_and_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        bench.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message is for machines without CUDA")
@pytest.mark.parametrize("suite", ["gpu", "fig4", "gpucheck"])
def test_a_gpu_suite_without_cuda_is_one_error_line_and_exit_2(capsys, suite):
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--suite", suite])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err == f"error: --suite {suite} needs a CUDA GPU and none is available here " \
                  f"(--suite cpu measures the CPU)\n"


def test_phase_timer_times_the_phases_of_a_real_sweep_and_restores_the_sweep(tmp_path):
    """The Fig. 4 suite's account of where a sweep's time goes: each phase the sweep really
    passes through (a batched grid here: memory trial, building, evaluations, HDF5) gets its
    seconds, and the sweep's functions are the original ones afterwards."""
    def sweep_functions():
        return (sweep_module.fit, sweep_module.build_trainer, SweepStore.flush,
                SequentialRun.evaluate, GridRuns.evaluate, StreamRuns.evaluate)

    originals = sweep_functions()
    with bench.phase_timer(torch.device("cpu")) as phases:
        run_tiny_sweep(tmp_path / "phases.h5", "", lrs=TINY_LRS, steps=4, probe_every=2,
                       grid="batched")
    assert set(phases) == {"memory trial (fit)", "building the runs", "test evaluations",
                           "HDF5 flushes"}
    assert all(seconds > 0 for seconds in phases.values())
    assert sweep_functions() == originals
