"""Shared by the resume and kill tests: a tiny real sweep, and file comparison."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from conftest import STORE_ATTRS, sweep_datasets

TIMING = ("seconds", "peak_memory_mib")  # wall-clock numbers: differ between any two runs


def tiny_data():
    """cifar10-mini cut to 256 training and 128 test images: 16 steps an epoch at batch 16."""
    from landscape import data as data_mod

    full = data_mod.load_dataset("cifar10-mini")
    return data_mod.ImageData(full.name, full.x_train[:256], full.y_train[:256],
                              full.x_test[:128], full.y_test[:128], full.mean, full.std)


def write_tiny_npz(path: Path) -> Path:
    """The same images as ``tiny_data`` in an array file, for ``--dataset PATH.npz``."""
    from landscape import data as data_mod

    full = data_mod.load_dataset("cifar10-mini")
    np.savez(path, x_train=full.x_train[:256].numpy(), y_train=full.y_train[:256].numpy(),
             x_test=full.x_test[:128].numpy(), y_test=full.y_test[:128].numpy())
    return path


def file_contents(path: Path) -> tuple[dict, dict]:
    """Every dataset (but the ``seconds`` columns) and every run attribute (but timings)."""
    datasets, attrs = {}, {}
    with h5py.File(path, "r", locking=False) as f:
        datasets = sweep_datasets(f, skip=lambda name: name.rsplit("/", 1)[-1] in TIMING)
        for name, run in f["runs"].items():
            attrs[name] = {k: (v.tolist() if isinstance(v, np.ndarray) else v)
                           for k, v in run.attrs.items() if k not in TIMING + STORE_ATTRS}
    return datasets, attrs


def assert_same_sweep(resumed: Path, reference: Path) -> None:
    """Bit for bit the same numbers in every dataset, the same run attributes."""
    got, got_attrs = file_contents(resumed)
    want, want_attrs = file_contents(reference)
    assert got.keys() == want.keys(), sorted(set(got) ^ set(want))
    for name, value in want.items():
        other = got[name]
        assert other.shape == value.shape and other.dtype == value.dtype, name
        if value.dtype.kind in "OSU":
            assert (other == value).all(), name
        else:
            assert np.array_equal(other, value, equal_nan=True), name
    assert got_attrs == want_attrs


def assert_whole(path: Path) -> dict[str, int]:
    """The file opens with h5py and no group has a torn row: every row dataset of a group has
    the same length, steps are 0..n-1, epochs 0..m-1. Returns each run's step rows."""
    rows = {}
    with h5py.File(path, "r", locking=False) as f:
        for name, run in f["runs"].items():
            for group_name, group in run.items():
                lengths = {ds.name: ds.shape[0] for ds in group.values()
                           if isinstance(ds, h5py.Dataset) and ds.maxshape[:1] == (None,)}
                assert len(set(lengths.values())) <= 1, lengths
            steps = run["steps/step"][:]
            assert np.array_equal(steps, np.arange(len(steps))), (name, steps)
            assert np.array_equal(run["epochs/epoch"][:], np.arange(len(run["epochs/epoch"])))
            rows[name] = len(steps)
    return rows
