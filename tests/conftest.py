"""Shared fixtures: small sweep files, real (trained) and synthetic (hand-made values); a
package of the user's own models on disk (``user_models``)."""

from __future__ import annotations

import contextlib
from pathlib import Path
import warnings
from types import SimpleNamespace

import numpy as np
import pytest

from landscape.store import SweepStore
from model_path_util import forget_imported_models, write_package

TINY_LRS = (0.05, 0.1)
TINY_STEPS = 8
TINY_PROBE_EVERY = 4


def run_tiny_sweep(out: Path, command: str, **config) -> Path:
    """Train ``SweepConfig(**config)`` on a slice of cifar10-mini at width 1/8, on the CPU.

    One thread: on a busy 2-core machine torch's spinning worker threads made these tiny
    steps ~70x slower (1.4 s instead of 0.02 s each).
    """
    from landscape import data as data_mod
    from landscape.train import SweepConfig, run_sweep

    full = data_mod.load_dataset("cifar10-mini")
    data = data_mod.ImageData(full.name, full.x_train[:256], full.y_train[:256],
                              full.x_test[:128], full.y_test[:128], full.mean, full.std)
    with one_cpu_thread():
        run_sweep(SweepConfig(models=("vgg_a", "vgg_a_bn"), batch_size=16, dataset="cifar10-mini",
                              width=0.125, device="cpu", **config),
                  str(out), command=command, data=data)
    return out


@contextlib.contextmanager
def one_cpu_thread():
    """torch on one CPU thread, restored after (tiny steps; see ``run_tiny_sweep``)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def read_only_dir(tmp_path):
    """A real folder nobody can create files in, root included (immutable under root, where
    permissions do not bind; mode 0555 otherwise). Skips where neither can be had."""
    import os
    import subprocess

    folder = tmp_path / "read-only"
    folder.mkdir()
    (folder / "inside.txt").write_text("kept")
    immutable = os.geteuid() == 0
    if immutable:
        made = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
    else:
        folder.chmod(0o555)
        made = True
    try:
        (folder / "probe").touch()
        writable = True
    except OSError:
        writable = False
    if not made or writable:
        pytest.skip("no way to make a read-only folder here")
    yield folder
    if immutable:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        folder.chmod(0o755)


@pytest.fixture(name="one_cpu_thread")
def one_cpu_thread_fixture():
    with one_cpu_thread():
        yield


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory) -> Path:
    """A real sweep file: VGG-A and VGG-A+BN, two learning rates, 8 steps, probes every 4.

    Trained on a slice of cifar10-mini at width 1/8 so the whole session pays a few
    seconds once. Tests must not modify it (copy it first).
    """
    return run_tiny_sweep(tmp_path_factory.mktemp("tiny") / "tiny-sweep.h5", "pytest tiny_sweep",
                          lrs=TINY_LRS, steps=TINY_STEPS, probe_every=TINY_PROBE_EVERY)


@pytest.fixture(scope="session")
def instrumented_sweep(tmp_path_factory) -> Path:
    """A real sweep with the ICS and activation instruments: both models at LR 0.1, 6 steps,
    landscape, ICS (default layers #5 and #10) and activations (all 11 layers) every 3 steps."""
    return run_tiny_sweep(tmp_path_factory.mktemp("instrumented") / "instrumented-sweep.h5",
                          "pytest instrumented_sweep", lrs=(0.1,), steps=6, probe_every=3,
                          ics_every=3, activations_every=3)


@pytest.fixture
def no_runtime_warnings():
    """Turns RuntimeWarning into an error: all-NaN slices must be handled, not warned about."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        yield


def probe_record(step: int, eta: np.ndarray, loss: np.ndarray, grad_diff: np.ndarray,
                 beta: float) -> SimpleNamespace:
    """What ``RunLog.add_probe`` reads from a ``probes.LandscapeRecord``."""
    return SimpleNamespace(step=step, eta=eta, loss=np.asarray(loss, float),
                           grad_diff=np.asarray(grad_diff, float), beta=beta, grad_norm=1.0,
                           loss_at_theta=float(np.asarray(loss)[0]))


def add_synthetic_run(store: SweepStore, model: str, lr: float, steps: int,
                      diverge_at: int | None = None, seed: int = 0, flush: bool = True,
                      **settings):
    """A run with smooth made-up values; ``diverge_at`` makes its loss inf there and stops it.
    ``settings``: more run attributes (momentum=0.9, ...), or replacements of the defaults."""
    eta = np.array([0.5, 1.0, 2.0, 4.0]) * lr
    attrs = dict(model=model, norm="batch" if model.endswith("_bn") else "none", lr=lr,
                 seed=seed, batch_size=32, optimizer="sgd")
    log = store.run(f"{model}-lr{lr:g}-seed{seed}", eta=eta, **{**attrs, **settings})
    last = steps if diverge_at is None else diverge_at + 1
    step = np.arange(last)
    loss = 2.3 * np.exp(-step / 50.0) + 0.1
    grad_diff = np.where(step == 0, np.nan, 1.0 + 0.1 * step)  # no previous gradient at step 0
    if diverge_at is not None:
        loss[-1], grad_diff[-1] = np.inf, np.nan
    log.add_steps(step=step, epoch=step // 10, loss=loss, grad_norm=np.ones(last),
                  grad_diff=grad_diff, beta_consecutive=np.full(last, 2 / lr))
    for s in range(0, last, 5):
        probe_loss = loss[s] * np.array([1.0, 1.1, 1.3, 2.0])
        if diverge_at is not None and s + 5 >= last:
            probe_loss[-1] = np.inf  # the largest eta blows up just before the run does
        log.add_probe(probe_record(s, eta, probe_loss, np.array([1.0, 2.0, 3.0, 4.0]), 2 / lr))
    for e in range(int(step[-1]) // 10):
        log.add_epoch(epoch=e, steps=10, train_loss=2.0 - 0.1 * e, train_acc=0.2 + 0.05 * e,
                      test_loss=2.1 - 0.1 * e, test_acc=0.18 + 0.05 * e, seconds=1.0)
    if diverge_at is None:
        log.set_attrs(status="completed", steps_completed=last, seconds=3.0)
    else:
        log.set_attrs(status="diverged", diverged_step=diverge_at, steps_completed=last,
                      seconds=2.0)
    if flush:
        store.flush(log)
    return log


@pytest.fixture
def diverged_sweep(tmp_path) -> Path:
    """A synthetic file: both models at LR 0.1 (40 steps) and VGG-A at 0.5 diverging at 23."""
    path = tmp_path / "diverged.h5"
    store = SweepStore(path, config={"lrs": [0.1, 0.5]}, command="synthetic")
    add_synthetic_run(store, "vgg_a", 0.1, 40)
    add_synthetic_run(store, "vgg_a_bn", 0.1, 40)
    add_synthetic_run(store, "vgg_a", 0.5, 40, diverge_at=23)
    add_synthetic_run(store, "vgg_a_bn", 0.5, 40)
    return path


# Attributes of a run's file that are the store's bookkeeping (which journal goes with it),
# not the run's: they differ between a resumed sweep and an uninterrupted one.
STORE_ATTRS = ("journal_generation",)


def sweep_datasets(f, skip=lambda name: False) -> dict:
    """Every dataset of an open sweep file as ``{"runs/<run>/<group>/<field>": values}``,
    through the runs' external links (``visititems`` does not follow them), but ``skip``ped
    names."""
    import h5py

    found = {}
    for run_name, run in f["runs"].items():
        def visit(name, node, prefix=f"runs/{run_name}/"):
            if isinstance(node, h5py.Dataset) and not skip(prefix + name):
                found[prefix + name] = node[()]
        run.visititems(visit)
    return found


def copy_sweep(source, target) -> "Path":
    """A copy of a sweep as a user makes one: its file under another name and its run files'
    folder beside it (under the name the file's links give: both copies read alike)."""
    import shutil
    from pathlib import Path

    from landscape.store import runs_dir

    source, target = Path(source), Path(target)
    shutil.copy(source, target)
    folder = target.parent / runs_dir(source).name
    if runs_dir(source).is_dir() and not folder.exists():
        shutil.copytree(runs_dir(source), folder)
    return target


def assert_refused_in_one_line(args: list[str], named: str, tmp_path, capsys) -> None:
    """``landscape run ARGS`` (on cifar10-mini unless ARGS name a dataset) is refused: exit 2,
    one ``error:`` line naming ``named``, nothing written into ``tmp_path``."""
    from landscape.cli import main

    out = tmp_path / "never.h5"
    base = ["run", "--out", str(out)] + ([] if "--dataset" in args else
                                         ["--dataset", "cifar10-mini"])
    assert main(base + args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert named in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def user_models(tmp_path, monkeypatch) -> Path:
    """A package of the user's own models (``model_path_util``) under ``tmp_path/pkg``,
    importable in this process (and in subprocesses given it on PYTHONPATH); forgotten after
    the test."""
    root = write_package(tmp_path / "pkg")
    monkeypatch.syspath_prepend(str(root))
    yield root
    forget_imported_models()
