"""Experiment files: every file parses, its light variant runs end to end; config errors."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import h5py
import pytest

from landscape import data as data_mod
from landscape.cli import main
from landscape.train.experiment import load_experiment, merge
from landscape.errors import LandscapeError
from landscape.models import COURSE_MODELS
from landscape.train import SweepConfig, run_sweep
import paper_util  # noqa: F401  (one torch thread)

EXPERIMENTS = sorted((Path(__file__).resolve().parent.parent / "experiments").glob("*.toml"))


def test_there_is_one_file_per_figure():
    names = {p.stem for p in EXPERIMENTS}
    assert {"fig1_accuracy", "fig2_noisy_bn", "fig3_ics_vgg", "fig3_ics_dln",
            "fig4_landscape_vgg", "fig5_lp", "dln_landscape", "seeds_grid",
            "course_bn_dropout", "course_batch_size"} <= names


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_every_experiment_parses_in_both_variants(path):
    for light in (False, True):
        values = load_experiment(path, light)
        assert values.pop("out").startswith("runs/")
        SweepConfig(**values).validate()
    paper, light = load_experiment(path), load_experiment(path, light=True)
    length = "steps" if "steps" in paper else "epochs"  # the course files count epochs
    assert paper[length] > light[length]
    if paper["dataset"] == "cifar10":
        assert light["dataset"] == "cifar10-mini"
        # VGG-A is cut to a quarter; the course's MLP and CNN are CPU-sized as they are.
        assert light.get("width", 1.0) < 1 or all(m in COURSE_MODELS for m in light["models"])
    for variant in _variants(path):
        config = SweepConfig(**{k: v for k, v in load_experiment(path, True, variant).items()
                                if k != "out"})
        config.validate()


@pytest.fixture(scope="module")
def small_images():
    full = data_mod.load_dataset("cifar10-mini")
    return data_mod.ImageData(full.name, full.x_train[:128], full.y_train[:128],
                              full.x_test[:64], full.y_test[:64], full.mean, full.std)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_light_variant_runs_a_few_steps_end_to_end(path, tmp_path, small_images):
    values = load_experiment(path, light=True)
    values.pop("out")
    values.update(steps=2, probe_every=1, lrs=values["lrs"][:1], device="cpu")
    for key in ("ics_every", "activations_every", "spectrum_every", "layer_curvature_every",
                "rank_every"):
        if values.get(key):
            values[key] = 1
    if values.get("spectrum_every"):  # small_images: 128 training images
        values.update(hessian_samples=16, spectrum_iterations=4)
    data = None
    if values["dataset"] != "gaussian-linear":
        values.update(width=0.0625, batch_size=16)
        data = small_images
    out = tmp_path / "light.h5"
    config = SweepConfig(**values)
    summaries = run_sweep(config, str(out), data=data)
    assert [s.status for s in summaries] == ["completed"] * len(summaries)
    with h5py.File(out) as f:
        assert len(f["runs"]) == config.run_count()
        for run in f["runs"].values():
            assert run["steps/step"].shape == (2,) and run["probe/step"].shape == (2,)
            for group, key in (("ics", "ics_every"), ("activations", "activations_every")):
                assert (group in run) == bool(values.get(key))
                if group in run:
                    assert run[f"{group}/step"].shape == (2,)


def _variants(path: Path) -> list[str]:
    with path.open("rb") as f:
        return list(tomllib.load(f).get("variant", {}))


def write(tmp_path, text: str, name: str = "exp") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, message", [
    ('[run]\nmodels = ["vgg_a"]\nstep = 3\n', "unknown key 'step'"),
    ('[run]\nsteps = "3"\n', "[run].steps must be"),
    ('[run]\nlrs = 0.1\n', "[run].lrs must be a list"),
    ('[run]\nlrs = [0.1, "x"]\n', "[run].lrs[1] must be float"),
    ('[run]\naugment = 1\n', "[run].augment must be bool"),
    ('[light]\nwidth = true\n', "[light].width must be float"),
    ('title = "x"\n', "unknown key 'title'"),
    ('run = 3\n', "run must be a table"),
    ('[run\n', "not valid TOML"),
])
def test_bad_files_are_clear_errors(tmp_path, text, message):
    with pytest.raises(LandscapeError) as info:
        load_experiment(write(tmp_path, text), light=True)
    assert message in str(info.value)


def test_cli_config_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "x.h5"
    cases = [(["--config", str(tmp_path / "missing.toml")], "no such file"),
             (["--config", str(write(tmp_path, "[run]\nwidht = 0.5\n", "a"))], "unknown key 'widht'"),
             (["--light"], "--light selects the light variant"),
             (["--config", str(write(tmp_path, "[run]\nsteps = 2\n", "b")), "--light"],
              "no [light] section")]
    for args, message in cases:
        assert main(["run", *args, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1
        assert not out.exists()


def test_command_line_overrides_the_file_which_overrides_defaults(tmp_path):
    out = tmp_path / "x.h5"
    path = write(tmp_path, f'[run]\nmodels = ["vgg_a"]\nsteps = 50\nwidth = 0.0625\n'
                           f'dataset = "cifar10-mini"\nprobe_every = 1\nout = "{tmp_path / "file.h5"}"\n'
                           '[light]\nprobe_every = 2\nbatch_size = 64\n')
    assert main(["run", "--config", str(path), "--light", "--steps", "2", "--lrs", "0.05",
                 "--out", str(out)]) == 0
    with h5py.File(out) as f:
        config = json.loads(f.attrs["config"])
        assert list(f["runs"]) == ["vgg_a-lr0.05-seed0"]
    assert (config["steps"], config["lrs"], config["probe_every"], config["batch_size"],
            config["width"], config["momentum"]) == (2, [0.05], 2, 64, 0.0625, 0.0)
    # --epochs on the command line wins over the file's steps.
    assert merge({"steps": 50}, {"epochs": 3, "steps": None}, {"epochs"})["steps"] is None


SLICED = ('[run]\nmodels = ["mlp", "mlp_bn"]\nlrs = [0.1]\nsteps = 6\nbatch_size = 32\n'
          'width = 0.125\ndataset = "cifar10-mini"\nprobe_every = 3\nsave_weights_every = 2\n'
          '[light]\nsteps = 4\n'
          '[[slice]]\nid = "plane"\ngrid = [3, 3]\nsamples = 64\n'
          '[[slice]]\nid = "pca"\ndirection = "pca"\nruns = ["mlp_bn-lr0.1-seed0"]\n'
          'grid = [3, 4]\nsamples = 64\n'
          '[slice_light]\ngrid = [2, 3]\n')


def test_slice_tables_run_after_training(tmp_path, capsys):
    """`landscape run --config` trains, then runs each [[slice]] on its runs (every run, or
    those named), [slice_light] applied with --light: real slices in the runs' files."""
    from landscape.store import read_sweep
    from landscape.store.slices import read_slices
    out = tmp_path / "sliced.h5"
    assert main(["run", "--config", str(write(tmp_path, SLICED)), "--light", "--device", "cpu",
                 "--out", str(out)]) == 0
    assert "plane: random slice of mlp-lr0.1-seed0 at step 4, grid 2x3" in capsys.readouterr().out
    found = {(s.run, s.id): s for s in read_slices(out)}
    assert set(found) == {("mlp-lr0.1-seed0", "plane"), ("mlp_bn-lr0.1-seed0", "plane"),
                          ("mlp_bn-lr0.1-seed0", "pca")}
    assert all(s.arrays["loss"].shape == (2, 3) and s.attrs["samples"] == 64
               for s in found.values())
    assert found["mlp_bn-lr0.1-seed0", "pca"].arrays["trajectory_coords"].shape == (3, 2)
    assert [len(r.steps.loss) for r in read_sweep(out).runs] == [4, 4]


@pytest.mark.parametrize("text, message", [
    ('[[slice]]\ndirection = "up"\n', "[[slice]] 1: --direction must be one of"),
    ('[[slice]]\ngrid = [3, "x"]\n', "[[slice]] 1.grid[1] must be int"),
    ('[[slice]]\nrange = [1]\n', "[[slice]] 1.range must be"),
    ('[[slice]]\ncolour = 1\n', "[[slice]] 1: unknown key 'colour'"),
    ('slice = 3\n', "slice must be a list of tables"),
    ('[slice_light]\nsamples = "x"\n', "[slice_light].samples must be int"),
])
def test_bad_slice_tables_are_clear_errors(tmp_path, text, message):
    from landscape.train.experiment import load_slices
    path = write(tmp_path, text + '[run]\nsteps = 2\n')
    with pytest.raises(LandscapeError) as info:
        load_experiment(path)
        load_slices(path, light=True)
    assert message in str(info.value)


def test_slices_without_saved_weights_are_refused_before_training(tmp_path, capsys):
    path = write(tmp_path, SLICED.replace("save_weights_every = 2\n", ""))
    out = tmp_path / "x.h5"
    assert main(["run", "--config", str(path), "--device", "cpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "set save_weights_every or save_weights_at" in err and err.count("\n") == 1
    assert not out.exists()
