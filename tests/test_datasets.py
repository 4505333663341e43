"""Data beyond CIFAR-10: any image shape and number of classes in an array file, and MNIST and
Fashion-MNIST read through torchvision (from files in its own format, written here: no network).
"""

from __future__ import annotations

import struct

import h5py
import numpy as np
import pytest
import torch

from landscape.cli import main
from landscape.data import load_dataset
from landscape.errors import LandscapeError
from landscape.models import MODELS, ModelSpec, build_model
from landscape.models.registry import register_model
from landscape.store import read_sweep


def array_file(path, shape, classes, n_train=48, n_test=16, seed=0):
    """Random uint8 images of ``shape`` ((H, W) for grayscale without a channel axis) and
    labels 0..classes-1, every class in the training set."""
    rng = np.random.default_rng(seed)
    y_train = np.arange(n_train) % classes
    np.savez(path, x_train=rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
             y_train=y_train, x_test=rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
             y_test=rng.integers(0, classes, n_test))
    return path


def test_a_grayscale_file_gets_its_channel_axis_and_its_classes_from_the_labels(tmp_path):
    data = load_dataset(str(array_file(tmp_path / "digits.npz", (28, 28), 10)))
    assert data.image_shape == (1, 28, 28) and data.num_classes == 10
    assert data.mean.shape == (1,) and data.normalize(data.x_train[:2]).shape == (2, 1, 28, 28)
    data = load_dataset(str(array_file(tmp_path / "five.npz", (3, 16, 16), 5)))
    assert data.image_shape == (3, 16, 16) and data.num_classes == 5


@pytest.mark.parametrize("model", ["mlp", "mlp_bn", "cnn_bn", "vgg_a_bn", "resnet20"])
def test_every_image_model_trains_on_mnist_shaped_data(model, tmp_path):
    """The course MLP (and the CNN, VGG-A, a ResNet) on 1x28x28 images with 10 classes, and
    on 3x16x16 with 5: the sweep's probes measure them as on CIFAR-10."""
    for shape, classes in (((28, 28), 10), ((3, 16, 16), 5)):
        path = array_file(tmp_path / f"{classes}.npz", shape, classes)
        out = tmp_path / f"{model}-{classes}.h5"
        assert main(["run", "--dataset", str(path), "--models", model, "--width", "0.125",
                     "--steps", "4", "--batch-size", "16", "--probe-every", "2",
                     "--device", "cpu", "--out", str(out)]) == 0
        (run,) = read_sweep(out).runs
        assert run.status == "completed" and len(run.steps.step) == 4
        assert np.isfinite(run.probe.loss).all() and len(run.probe.step) == 2
        data = load_dataset(str(path))
        built = build_model(model, width=0.125, num_classes=classes, image_shape=data.image_shape)
        assert built(data.normalize(data.x_train[:2])).shape == (2, classes)


def test_cifar_models_are_the_models_of_before(tmp_path):
    """32x32 inputs build the very modules of before (no ceil-mode pooling, no extra input
    features): the numbers of every CIFAR sweep stay bit-identical (checked on the quick-start
    sweep, README)."""
    vgg = build_model("vgg_a_bn", width=0.125)
    assert all(not m.ceil_mode for m in vgg.modules() if isinstance(m, torch.nn.MaxPool2d))
    assert vgg.classifier[1].in_features == 64  # 512 x 0.125 channels x 1 x 1
    grayscale = build_model("vgg_a_bn", width=0.125, image_shape=(1, 28, 28))
    assert grayscale.features[0].in_channels == 1
    assert any(m.ceil_mode for m in grayscale.modules() if isinstance(m, torch.nn.MaxPool2d))


@pytest.fixture
def fixed_cifar_net():
    """A model registered as a script would, for 3x32x32 images only; gone after the test
    (the registry is global: tests that list every model must not see it)."""
    register_model("fixed_cifar_net", ModelSpec(
        lambda width=1.0, num_classes=10: torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, num_classes)), "none",
        random=False))
    yield "fixed_cifar_net"
    MODELS.pop("fixed_cifar_net")


def test_a_model_that_takes_no_image_shape_refuses_other_images(fixed_cifar_net, tmp_path,
                                                               capsys):
    with pytest.raises(LandscapeError, match="takes 3x32x32 images, the data's are 1x28x28"):
        build_model("fixed_cifar_net", image_shape=(1, 28, 28))
    path = array_file(tmp_path / "digits.npz", (28, 28), 10)
    out = tmp_path / "s.h5"
    assert main(["run", "--dataset", str(path), "--models", "fixed_cifar_net", "--steps", "2",
                 "--batch-size", "16", "--device", "cpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "takes 3x32x32 images" in err
    assert not out.exists()  # refused before the file


def write_idx(folder, train: bool, images: np.ndarray, labels: np.ndarray) -> None:
    """MNIST's own file format (big-endian idx), as torchvision reads it from ROOT/NAME/raw."""
    part = "train" if train else "t10k"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{part}-images-idx3-ubyte").write_bytes(
        struct.pack(">IIII", 2051, *images.shape) + images.tobytes())
    (folder / f"{part}-labels-idx1-ubyte").write_bytes(
        struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes())


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_and_fashion_mnist_through_torchvision(name, folder, tmp_path):
    rng = np.random.default_rng(1)
    for train, n in ((True, 40), (False, 12)):
        write_idx(tmp_path / folder / "raw", train, rng.integers(0, 256, (n, 28, 28),
                                                                 dtype=np.uint8),
                  np.arange(n) % 10)
    data = load_dataset(name, tmp_path)
    assert data.name == name and data.image_shape == (1, 28, 28) and data.num_classes == 10
    assert len(data.x_train) == 40 and len(data.x_test) == 12
    out = tmp_path / "s.h5"
    assert main(["run", "--dataset", name, "--data-root", str(tmp_path), "--models", "mlp",
                 "--steps", "3", "--batch-size", "8", "--probe-every", "3", "--device", "cpu",
                 "--out", str(out)]) == 0
    with h5py.File(out, "r") as f:
        assert f[f"runs/mlp-lr0.1-seed0"].attrs["dataset"] == name


@pytest.mark.parametrize("name, title", [("mnist", "MNIST"), ("cifar100", "CIFAR-100"),
                                         ("fashion-mnist", "Fashion-MNIST")])
def test_a_torchvision_dataset_missing_offline_is_one_line_and_leaves_no_folder(
        name, title, tmp_path, capsys, monkeypatch):
    """No copy under --data-root and no network (the download is made to fail, whether or
    not this machine is online): one line naming the dataset and where to put it."""
    monkeypatch.setattr("urllib.request.urlopen", _offline)
    root, out = tmp_path / "data", tmp_path / "s.h5"
    assert main(["run", "--dataset", name, "--data-root", str(root), "--steps", "1",
                 "--device", "cpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{title} not found under {root}" in err
    assert not root.exists() and not out.exists()


def _offline(*args, **kwargs):
    raise OSError("network unreachable (test)")
