"""`landscape run` and run_sweep: the HDF5 schema, reproducibility, divergence, bad inputs."""

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from landscape.cli import main
from landscape.errors import LandscapeError

from conftest import sweep_datasets
from landscape.read import read_sweep
from landscape.train import SweepConfig, run_sweep

STEP_FIELDS = ["step", "epoch", "loss", "grad_norm", "grad_diff", "beta_consecutive"]
EPOCH_FIELDS = ["epoch", "steps", "train_loss", "train_acc", "test_loss", "test_acc", "seconds"]


def test_cli_sweep_end_to_end_on_cifar10_mini(tmp_path):
    out = tmp_path / "sweep.h5"
    cmd = [sys.executable, "-m", "landscape", "run", "--dataset", "cifar10-mini", "--width", "0.125",
           "--epochs", "2", "--lrs", "0.05,0.1", "--probe-every", "10", "--models", "vgg_a,vgg_a_bn",
           "--device", "cpu", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    assert "median beta" in done.stdout and "completed" in done.stdout

    with h5py.File(out, "r") as f:
        assert {"landscape_version", "created", "command", "config"} <= set(f.attrs)
        config = json.loads(f.attrs["config"])
        assert config["lrs"] == [0.05, 0.1] and config["width"] == 0.125
        assert "--probe-every 10" in f.attrs["command"]
        names = sorted(f["runs"])
        assert names == ["vgg_a-lr0.05-seed0", "vgg_a-lr0.1-seed0",
                         "vgg_a_bn-lr0.05-seed0", "vgg_a_bn-lr0.1-seed0"]
        steps_per_epoch = 5085 // 128
        for name in names:
            run = f["runs"][name]
            assert run.attrs["status"] == "completed"
            assert run.attrs["norm"] == ("batch" if "_bn" in name else "none")
            assert {"model", "lr", "seed", "batch_size", "optimizer"} <= set(run.attrs)
            n = 2 * steps_per_epoch
            for field in STEP_FIELDS:
                assert run["steps"][field].shape == (n,), field
            np.testing.assert_array_equal(run["steps/step"][:], np.arange(n))
            assert np.isfinite(run["steps/loss"][:]).all()
            probe = run["probe"]
            probed = np.arange(0, n, 10)
            np.testing.assert_array_equal(probe["step"][:], probed)
            np.testing.assert_allclose(probe["eta"][:], run.attrs["lr"] * np.array([0.5, 1, 2, 4]))
            assert probe["loss"].shape == probe["grad_diff"].shape == (len(probed), 4)
            assert probe["beta"].shape == (len(probed),)
            # beta is max over eta of grad_diff / (eta ||g||), as stored.
            expected = (probe["grad_diff"][:] / (probe["eta"][:] * probe["grad_norm"][:][:, None])).max(1)
            np.testing.assert_allclose(probe["beta"][:], expected, rtol=1e-6)
            for field in EPOCH_FIELDS:
                assert run["epochs"][field].shape == (2,), field
            assert (run["epochs/test_acc"][:] > 0.1).all()  # better than chance after an epoch


def read_all(path):
    with h5py.File(path, "r") as f:
        return sweep_datasets(f, skip=lambda name: name.endswith("epochs/seconds"))


def test_same_seed_gives_identical_numbers(tmp_path):
    config = SweepConfig(models=("vgg_a_bn",), lrs=(0.1,), steps=6, probe_every=2,
                         dataset="cifar10-mini", width=0.125, device="cpu", augment=True)
    run_sweep(config, tmp_path / "a.h5")
    run_sweep(config, tmp_path / "b.h5")
    a, b = read_all(tmp_path / "a.h5"), read_all(tmp_path / "b.h5")
    assert a.keys() == b.keys() and len(a) > 15
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_runs_of_a_model_share_init_and_batches(tmp_path):
    """Two learning rates: identical first-step loss and gradient (same weights, same batch)."""
    config = SweepConfig(models=("vgg_a",), lrs=(0.01, 0.2), steps=3, probe_every=100,
                         dataset="cifar10-mini", width=0.125, device="cpu")
    run_sweep(config, tmp_path / "s.h5")
    with h5py.File(tmp_path / "s.h5", "r") as f:
        slow, fast = f["runs/vgg_a-lr0.01-seed0/steps"], f["runs/vgg_a-lr0.2-seed0/steps"]
        assert slow["loss"][0] == fast["loss"][0] and slow["grad_norm"][0] == fast["grad_norm"][0]
        assert slow["loss"][2] != fast["loss"][2]


def test_divergence_is_recorded_and_the_sweep_goes_on(tmp_path):
    config = SweepConfig(models=("vgg_a",), lrs=(1e6, 0.05), steps=8, probe_every=4,
                         dataset="cifar10-mini", width=0.125, device="cpu")
    summaries = run_sweep(config, tmp_path / "d.h5")
    assert [s.status for s in summaries] == ["diverged", "completed"]
    with h5py.File(tmp_path / "d.h5", "r") as f:
        run = f["runs"][summaries[0].name]
        assert run.attrs["status"] == "diverged"
        step = int(run.attrs["diverged_step"])
        losses = run["steps/loss"][:]
        assert len(losses) == step + 1 and not np.isfinite(losses[-1])
        assert np.isfinite(losses[:-1]).all()
        assert f["runs/vgg_a-lr0.05-seed0"].attrs["status"] == "completed"


BAD_INPUTS = [
    (["--lrs", "0.1,abc"], "'abc'"),
    (["--lrs", "0.1,-0.2"], "'-0.2'"),
    (["--lrs", "0"], "'0'"),
    (["--lrs", "nan"], "'nan'"),
    (["--lrs", "inf"], "'inf'"),
    (["--lrs", ""], "--lrs"),
    (["--lrs", ","], "--lrs"),
    (["--models", "vgg_z"], "'vgg_z'"),
    (["--models", ""], "--models"),
    (["--dataset", "imagenet"], "'imagenet'"),
    (["--probe-every", "0"], "--probe-every"),
    (["--probe-every", "-5"], "--probe-every"),
    (["--width", "0"], "--width"),
    (["--width", "-0.5"], "--width"),
    (["--epochs", "0"], "--epochs"),
    (["--steps", "-1"], "--steps"),
    (["--batch-size", "0"], "--batch-size"),
    (["--epochs", "two"], "'two'"),
    (["--etas", "1,x"], "'x'"),
    (["--device", "tpu"], "'tpu'"),
    (["--momentum", "1.5"], "--momentum"),
    (["--momentum", "-0.1"], "--momentum"),
    (["--weight-decay", "nan"], "--weight-decay"),
    (["--seed", "-1"], "--seed"),
    (["--seed", str(2 ** 32)], "--seed"),
    # Judged against the data: refused before the file exists (no run left `running`).
    (["--batch-size", "100000"], "--batch-size 100000"),
]


@pytest.mark.parametrize("args,named", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(args, named, tmp_path, capsys):
    out = tmp_path / "never.h5"
    code = main(["run", "--dataset", "cifar10-mini", "--out", str(out)] + args
                if "--dataset" not in args else ["run", "--out", str(out)] + args)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert named in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_gpu_is_refused(tmp_path, capsys):
    out = tmp_path / "never.h5"
    assert main(["run", "--dataset", "cifar10-mini", "--device", "cuda", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "cuda" in err and err.count("\n") == 1 and not out.exists()


def test_existing_out_is_never_overwritten_unless_asked(tmp_path, capsys):
    out = tmp_path / "keep.h5"
    out.write_bytes(b"precious")
    args = ["run", "--dataset", "cifar10-mini", "--models", "vgg_a", "--width", "0.125",
            "--steps", "2", "--device", "cpu", "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--overwrite" in err and err.count("\n") == 1
    assert out.read_bytes() == b"precious"
    assert main(args + ["--overwrite"]) == 0
    with h5py.File(out, "r") as f:
        assert f["runs/vgg_a-lr0.1-seed0"].attrs["status"] == "completed"


def test_python_api_names_its_own_overwrite_switch(tmp_path):
    out = tmp_path / "keep.h5"
    out.write_bytes(b"precious")
    with pytest.raises(LandscapeError, match="overwrite=True"):
        run_sweep(SweepConfig(models=("vgg_a",), dataset="cifar10-mini", width=0.125, steps=1,
                              device="cpu"), str(out))
    assert out.read_bytes() == b"precious"


@pytest.mark.parametrize("where", ["read-only folder", "/proc"])
def test_unwritable_out_is_one_line_exit_2(where, request, tmp_path, capsys):
    folder = request.getfixturevalue("read_only_dir") if where != "/proc" else None
    out = folder / "x.h5" if folder else "/proc/landscape-test.h5"
    assert main(["run", "--dataset", "cifar10-mini", "--models", "vgg_a", "--width", "0.125",
                 "--steps", "1", "--device", "cpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write {out}: ") and err.count("\n") == 1, err
    if folder:
        assert sorted(p.name for p in folder.iterdir()) == ["inside.txt"]


def test_precision_records_the_arithmetic_the_run_used(tmp_path):
    out = tmp_path / "p.h5"
    run_sweep(SweepConfig(models=("vgg_a",), dataset="cifar10-mini", width=0.125, steps=1,
                          device="cpu", precision="bf16", probe_every=1), str(out))
    with h5py.File(out, "r") as f:
        run = f["runs/vgg_a-lr0.1-seed0"]
        assert run.attrs["precision"] == "fp32"  # TF32 and bf16 autocast act on CUDA only
        assert json.loads(f.attrs["config"])["precision"] == "bf16"  # what was asked


def test_partial_last_epoch_is_marked(tmp_path):
    """--steps 40 at 39 steps an epoch: the second epoch has one step, and says so."""
    out = tmp_path / "partial.h5"
    assert main(["run", "--dataset", "cifar10-mini", "--models", "vgg_a", "--width", "0.125",
                 "--steps", "40", "--device", "cpu", "--out", str(out)]) == 0
    with h5py.File(out, "r") as f:
        run = f["runs/vgg_a-lr0.1-seed0"]
        assert run.attrs["steps_per_epoch"] == 39
        assert run["epochs/steps"][:].tolist() == [39, 1]
    epochs = read_sweep(out).runs[0].epochs
    assert epochs.partial.tolist() == [False, True]
    assert epochs.steps.tolist() == [39, 1]


def test_missing_cifar10_exits_2_without_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "landscape", "run", "--data-root",
                           str(tmp_path / "cifar"), "--out", str(tmp_path / "x.h5")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.startswith("error: CIFAR-10 not found under")
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1
    assert not (tmp_path / "x.h5").exists()


def test_compiled_step_computes_the_eager_step(one_cpu_thread):
    """--compile (sequential runs): at each step, the compiled training step's loss and
    gradient equal the eager module's at the same weights, on the same batch.

    Checked step by step rather than along a whole run: at batch 16 two float32 runs whose
    kernels round differently (inductor fuses the pointwise ops) drift apart chaotically, by
    about 1% in the loss by the 4th step (measured), so only the step itself can be compared.
    """
    import copy

    import torch.nn.functional as F

    from landscape import data as data_mod
    from landscape.train import SequentialRun, TrainerContext, plan_sweep

    full = data_mod.load_dataset("cifar10-mini")
    data = data_mod.ImageData(full.name, full.x_train[:256], full.y_train[:256],
                              full.x_test[:64], full.y_test[:64], full.mean, full.std)
    config = SweepConfig(models=("vgg_a_bn",), lrs=(0.05,), batch_size=16, width=0.125,
                         device="cpu", compile=True, probe=False)
    (group,) = plan_sweep(config)
    run = SequentialRun(group, data, TrainerContext(torch.device("cpu")))
    batches = data_mod.BatchStream(data, 16, seed=0).epoch()
    for step, (x, y) in zip(range(4), batches):
        eager = copy.deepcopy(run.model)  # same weights and BN buffers, not compiled
        eager_loss = F.cross_entropy(eager(x), y)
        eager_loss.backward()
        loss, _ = run.step(x, y, step)
        assert float(loss) == pytest.approx(eager_loss.item(), rel=1e-5)
        g = torch.cat([p.grad.reshape(-1) for p in run.model.parameters()])
        g_eager = torch.cat([p.grad.reshape(-1) for p in eager.parameters()])
        assert float((g - g_eager).norm() / g_eager.norm()) < 1e-5, step
    run.close()


def test_compile_is_refused_on_a_gpu(monkeypatch, tmp_path, capsys):
    """On a GPU --compile's gradients were measured wrong (benchmarks/RESULTS.md, Round 4):
    one line, exit 2, nothing written. A GPU is pretended: validation is all that runs."""
    from landscape.train import config

    monkeypatch.setattr(config, "resolve_device", lambda name: torch.device("cuda"))
    out = tmp_path / "never.h5"
    assert main(["run", "--dataset", "cifar10-mini", "--compile", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--compile is CPU-only" in err and err.count("\n") == 1
    assert not out.exists()


def test_without_ray_installed_ray_is_one_line_naming_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError: uninstalled
    assert main(["run", "--ray", "--dataset", "cifar10-mini",
                 "--out", str(tmp_path / "never.h5")]) == 2
    err = capsys.readouterr().err
    assert err == ('error: --ray needs the ray package: pip install "batchnorm-landscape[ray]" '
                   '(or pip install ray)\n')
    assert list(tmp_path.iterdir()) == []
