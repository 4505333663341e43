"""``--models module:callable``: a model of the user's own, from a package on disk, trained,
recorded (BatchNorm and random draws found by inspection), resumed bit for bit; bad paths
refused in one line with nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import one_cpu_thread
from landscape.cli import main
from landscape.data import load_dataset
from landscape.errors import LandscapeError
from landscape.models import MODELS
from landscape.read import read_sweep
from landscape.train import (SweepConfig, SweepInterrupted, load_experiment, plan_sweep,
                             run_sweep)
from model_path_util import NETS, PACKAGE
from resume_util import assert_same_sweep, write_tiny_npz
from test_resume import interrupt_at

REPO = Path(__file__).resolve().parents[1]
PLAIN, BN, DROPOUT, FIXED = (f"{NETS}:{name}" for name in ("Plain", "WithBN", "WithDropout",
                                                           "Fixed"))


def landscape(args: list[str], package_root: Path, **kwargs) -> subprocess.CompletedProcess:
    """``python -m landscape ARGS`` in a fresh process that finds the package through
    PYTHONPATH, as a user's shell would; torch on one thread (as the in-process references)."""
    path = os.pathsep.join([str(REPO), str(package_root), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "landscape", *args], env=env,
                          capture_output=True, text=True, timeout=600, **kwargs)


def test_models_by_path_train_record_and_read_back(user_models, tmp_path):
    """Three models of the package in one CLI sweep (a batched grid asked): each trains; the
    file says which has BatchNorm and which draws (the dropout one trains alone, run by run);
    ``landscape info`` and ``read_sweep`` read it."""
    out = tmp_path / "sweep.h5"
    done = landscape(["run", "--models", f"{PLAIN},{BN},{DROPOUT}", "--model-kwargs",
                      '{"hidden": 16}', "--dataset", "cifar10-mini", "--lrs", "0.05,0.1",
                      "--steps", "8", "--batch-size", "32", "--probe-every", "4",
                      "--grid", "batched", "--device", "cpu", "--out", str(out)], user_models)
    assert done.returncode == 0, done.stderr
    sweep = read_sweep(out)
    runs = {run.name: run.attrs for run in sweep.runs}
    assert sorted(runs) == [f"{label}-lr{lr}-seed0" for label in ("Plain", "WithBN",
                                                                    "WithDropout")
                            for lr in ("0.05", "0.1")]
    for run in sweep.runs:
        assert run.attrs["status"] == "completed" and len(run.steps.loss) == 8
        assert np.isfinite(run.steps.loss).all() and len(run.probe.step) == 2
        assert json.loads(run.attrs["model_kwargs"]) == {"hidden": 16}
    kinds = {runs[f"{label}-lr0.1-seed0"]["model"]: (runs[f"{label}-lr0.1-seed0"]["norm"],
                                                     bool(runs[f"{label}-lr0.1-seed0"]
                                                          ["draws_random"]),
                                                     runs[f"{label}-lr0.1-seed0"]["grid"])
             for label in ("Plain", "WithBN", "WithDropout")}
    assert kinds == {PLAIN: ("none", False, "batched"), BN: ("batch", False, "batched"),
                     DROPOUT: ("none", True, "sequential")}
    assert sweep.config["models"] == [PLAIN, BN, DROPOUT]
    assert sweep.config["model_kwargs"] == {"hidden": 16}
    info = landscape(["info", str(out)], user_models)
    assert info.returncode == 0, info.stderr
    assert all(name in info.stdout for name in runs) and PLAIN in info.stdout


def test_built_for_the_data_classes_with_its_arguments(user_models, tmp_path):
    """The callable gets ``model_kwargs`` and the data's class count where it takes
    ``num_classes`` (by name or ``**kwargs``), nothing where it does not; a run's model is the
    callable's own, built after the run's seed (the same weights as a direct call)."""
    tiny = write_tiny_npz(tmp_path / "tiny.npz")
    with np.load(tiny) as arrays:  # three classes
        np.savez(tmp_path / "three.npz", **{k: arrays[k] % 3 if k.startswith("y") else arrays[k]
                                            for k in arrays.files})
    data = load_dataset(str(tmp_path / "three.npz"))
    config = SweepConfig(models=(PLAIN, DROPOUT, FIXED), model_kwargs={"hidden": 8})
    config.validate(on_gpu=False)
    images = data.x_train[:2].float()
    for name, classes in ((PLAIN, 3), (DROPOUT, 3), (FIXED, 10)):
        torch.manual_seed(0)
        model = config.model(name, data)
        assert model(images).shape == (2, classes), name
    torch.manual_seed(0)
    built = config.model(PLAIN, data)
    from landscape_usernets.nets import Plain
    torch.manual_seed(0)
    direct = Plain(num_classes=3, hidden=8)
    assert all(torch.equal(a, b) for a, b in zip(built.state_dict().values(),
                                                 direct.state_dict().values()))
    assert built[1].out_features == 8


def test_a_model_the_meta_device_cannot_build_is_inspected_on_the_cpu(user_models):
    config = SweepConfig(models=(f"{NETS}:NeedsValues",), model_kwargs={"hidden": 8})
    config.validate(on_gpu=False)
    assert (MODELS[config.models[0]].norm, MODELS[config.models[0]].random) == ("group", False)


def test_the_plan_trains_a_model_that_draws_run_by_run(user_models):
    """``draws_random`` of an imported model is what its modules say: the dropout model's
    learning rates train one by one even where a grid is asked for, the others together."""
    config = SweepConfig(models=(PLAIN, DROPOUT), lrs=(0.05, 0.1), grid="batched",
                         dataset="cifar10-mini", device="cpu")
    config.validate()
    modes = [(group.model, group.mode, len(group.runs)) for group in plan_sweep(config)]
    assert modes == [(PLAIN, "batched", 2), (DROPOUT, "sequential", 1),
                     (DROPOUT, "sequential", 1)]


def test_an_interrupted_sweep_resumes_bit_identically_from_the_command_line(user_models,
                                                                           tmp_path):
    """Interrupted (SIGINT) inside the dropout model's first epoch; ``landscape run --resume``
    in a fresh process (which imports the package again, from the file's settings) completes
    it: every number equals the uninterrupted sweep's."""
    npz = write_tiny_npz(tmp_path / "tiny.npz")
    config = SweepConfig(models=(DROPOUT, BN), model_kwargs={"hidden": 16},
                         lrs=(0.05,), steps=24, batch_size=16, probe_every=5, momentum=0.9,
                         augment=True, dataset=str(npz), device="cpu")
    reference = tmp_path / "reference.h5"
    with one_cpu_thread():
        run_sweep(config, str(reference))
    out = tmp_path / "sweep.h5"
    with one_cpu_thread(), pytest.raises(SweepInterrupted):
        run_sweep(config, str(out), on_progress=interrupt_at([(0, 7)]))
    assert {run.attrs["status"] for run in read_sweep(out).runs} == {"interrupted"}
    done = landscape(["run", "--resume", str(out)], user_models)
    assert done.returncode == 0, done.stderr
    assert_same_sweep(out, reference)
    statuses = {run.name: run.attrs["status"] for run in read_sweep(out).runs}
    assert statuses == {"WithDropout-lr0.05-seed0": "completed", "WithBN-lr0.05-seed0": "completed"}


BAD_MODELS = [
    ("nosuch_pkg.nets:Net", "no module named 'nosuch_pkg'"),
    (f"{PACKAGE}.nosuch:Net", f"no module named '{PACKAGE}.nosuch'"),
    (f"{NETS}:Missing", f"{NETS} has no attribute 'Missing'"),
    (f"{NETS}:NOT_CALLABLE", "not callable (a int)"),
    (f"{NETS}:not_a_module", "returned a str, not a torch.nn.Module"),
    (f"{NETS}:", "an import path is module:callable"),
    (f"{NETS}:Plain,{PACKAGE}.other:Plain", "would both name their runs Plain-"),
]
BAD_KWARGS = [
    ('{"num_classes": 3}', "num_classes is given from the data's classes"),
    ("[1]", "--model-kwargs must be a JSON object"),
    ("{hidden: 1}", "--model-kwargs: not JSON"),
    ('{"nope": 1}', "unexpected keyword argument 'nope'"),
]


@pytest.mark.parametrize("extra, message",
                         [(["--models", m], text) for m, text in BAD_MODELS]
                         + [(["--models", PLAIN, "--model-kwargs", k], text)
                            for k, text in BAD_KWARGS]
                         + [(["--models", "mlp", "--model-kwargs", '{"hidden": 1}'],
                             "arguments of models given as module:"),
                            (["--models", PLAIN, "--dropout", "0.2"],
                             "is given by import path (its own arguments: --model-kwargs)")])
def test_a_bad_path_or_model_is_one_line_exit_2_and_nothing_written(user_models, tmp_path,
                                                                   capsys, extra, message):
    out = tmp_path / "runs" / "never.h5"
    args = ["run", "--dataset", "cifar10-mini", "--steps", "2", "--device", "cpu",
            "--out", str(out)]
    assert main(args + extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "runs").exists()


def test_a_bad_path_from_a_fresh_process_is_one_line(user_models, tmp_path):
    """The same through the installed command's process (no traceback on stderr)."""
    done = landscape(["run", "--models", f"{NETS}:not_a_module", "--dataset", "cifar10-mini",
                      "--out", str(tmp_path / "never.h5")], user_models)
    assert done.returncode == 2
    assert done.stderr == (f"error: --models {NETS}:not_a_module: returned a str, not a "
                           "torch.nn.Module\n")
    assert not (tmp_path / "never.h5").exists()


def test_an_experiment_file_gives_the_arguments_as_a_table(user_models, tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(f'[run]\nmodels = ["{BN}"]\nmodel_kwargs = {{ hidden = 8 }}\n'
                    '[light]\nmodel_kwargs = { hidden = 4, p = 0.1 }\n')
    assert load_experiment(path)["model_kwargs"] == {"hidden": 8}
    assert load_experiment(path, light=True)["model_kwargs"] == {"hidden": 4, "p": 0.1}
    path.write_text(f'[run]\nmodels = ["{BN}"]\nmodel_kwargs = 8\n')
    with pytest.raises(LandscapeError, match=r"\[run\]\.model_kwargs must be dict.*, got 8"):
        load_experiment(path)
