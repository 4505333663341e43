"""``--dataset PATH.npz``: any array file of 3x32x32 uint8 images trains like the bundled subset."""

import hashlib
import json

import h5py
import numpy as np
import pytest

from landscape.cli import main
from landscape.data import load_dataset
from landscape.data.images import load_image_file, mini_path


def image_file(path, n_train=40, n_test=20, **replace):
    """A small real-looking array file: random uint8 images, labels 0..9; ``replace`` swaps
    (or, with None, drops) one array."""
    rng = np.random.default_rng(0)
    arrays = dict(x_train=rng.integers(0, 256, (n_train, 3, 32, 32), dtype=np.uint8),
                  y_train=rng.integers(0, 10, n_train), x_test=rng.integers(0, 256, (n_test, 3, 32, 32),
                                                                           dtype=np.uint8),
                  y_test=rng.integers(0, 10, n_test))
    arrays.update(replace)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def test_array_file_loads_with_its_own_normalization(tmp_path):
    path = image_file(tmp_path / "tiny.npz")
    data = load_dataset(str(path))
    with np.load(path) as z:
        x = z["x_train"].astype(np.float64) / 255
        assert np.array_equal(data.x_train.numpy(), z["x_train"])
        assert np.array_equal(data.y_test.numpy(), z["y_test"])
    np.testing.assert_allclose(data.mean.numpy(), x.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(data.std.numpy(), x.std(axis=(0, 2, 3), ddof=1), rtol=1e-6)
    assert data.name == "tiny"
    assert data.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_bundled_subset_is_an_array_file_like_any_other():
    by_name, by_path = load_dataset("cifar10-mini"), load_image_file(mini_path())
    assert by_name.name == "cifar10-mini" and by_name.sha256 == by_path.sha256
    assert np.array_equal(by_name.x_train.numpy(), by_path.x_train.numpy())


def test_run_on_an_array_file_records_name_path_and_sha256(tmp_path):
    path = image_file(tmp_path / "tiny.npz")
    out = tmp_path / "run.h5"
    assert main(["run", "--dataset", str(path), "--models", "vgg_a_bn", "--width", "0.125",
                 "--steps", "2", "--batch-size", "16", "--probe-every", "1", "--device", "cpu",
                 "--out", str(out)]) == 0
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with h5py.File(out, "r") as f:
        config = json.loads(f.attrs["config"])
        (run,) = f["runs"].values()
        assert run.attrs["dataset"] == "tiny"
        assert run.attrs["dataset_path"] == str(path.resolve())
        assert run.attrs["dataset_sha256"] == digest
        assert run.attrs["steps_per_epoch"] == 40 // 16
    assert (config["dataset"], config["dataset_name"]) == (str(path), "tiny")
    assert (config["dataset_path"], config["dataset_sha256"]) == (str(path.resolve()), digest)


BAD_FILES = [
    (dict(y_test=None), "no array 'y_test'"),
    (dict(x_train=np.zeros((40, 3, 32, 32), np.float32)), "x_train must be uint8"),
    (dict(x_test=np.zeros((20, 32, 32, 3), np.uint8)),
     "x_test images are (32, 32, 3), x_train's (3, 32, 32)"),
    (dict(x_train=np.zeros((40, 1, 3, 32, 32), np.uint8)), "x_train must have shape (N, C, H, W)"),
    (dict(x_train=np.zeros((40, 3, 0, 32), np.uint8)), "no axis of length 0"),
    (dict(y_test=np.arange(20) % 11), "y_test has label 10, which no training image has"),
    (dict(y_test=-np.ones(20, np.int64)), "y_test has a negative label"),
    (dict(y_train=np.zeros(40, np.int64)), "y_train has one class only"),
    (dict(y_train=np.zeros(39, np.int64)), "y_train must have shape (40,)"),
    (dict(y_test=np.zeros(20, np.float32)), "y_test must hold integer labels"),
]


@pytest.mark.parametrize("replace, named", BAD_FILES)
def test_bad_array_file_is_one_line_exit_2_and_writes_nothing(replace, named, tmp_path, capsys):
    path = image_file(tmp_path / "bad.npz", **replace)
    out = tmp_path / "run.h5"
    assert main(["run", "--dataset", str(path), "--models", "vgg_a", "--width", "0.125",
                 "--steps", "1", "--device", "cpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and named in err and str(path) in err
    assert not out.exists()


@pytest.mark.parametrize("content, named", [(None, "no such file"), (b"not a zip", "not a readable")])
def test_missing_or_unreadable_array_file_is_one_line(content, named, tmp_path, capsys):
    path = tmp_path / "data.npz"
    if content is not None:
        path.write_bytes(content)
    out = tmp_path / "run.h5"
    assert main(["run", "--dataset", str(path), "--models", "vgg_a", "--steps", "1",
                 "--device", "cpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and named in err and not out.exists()


def test_unknown_dataset_name_mentions_array_files(tmp_path, capsys):
    assert main(["run", "--dataset", "imagenet", "--out", str(tmp_path / "x.h5")]) == 2
    assert ".npz array file" in capsys.readouterr().err
