"""Images: CIFAR-10 (or the bundled real subset) as uint8 tensors that live on the device.

Following airbench, a dataset is one uint8 tensor on the training device; minibatches are
index gathers, normalization and augmentation are batched tensor math, and the order of the
minibatches comes from a seeded ``torch.Generator``. No ``DataLoader``, no workers.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..errors import LandscapeError

NUM_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)  # (C, H, W) of CIFAR: the image models' default
ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def default_data_root() -> Path:
    """Per-user cache directory for downloaded datasets."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "landscape" / "data"


def mini_path() -> Path:
    """Path of the bundled 6,102-image CIFAR-10 subset (package data)."""
    return Path(str(resources.files("landscape") / "data" / "cifar10-mini.npz"))


@dataclass
class ImageData:
    """A train/test split of images (N, C, H, W) uint8 and labels (N,) int64, on one device."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: torch.Tensor  # per-channel mean of the training images, 0-1 scale, shape (C,)
    std: torch.Tensor  # per-channel std of the training images, 0-1 scale, shape (C,)
    path: str = ""  # the array file it came from ("" for torchvision's datasets)
    sha256: str = ""  # of that file's bytes
    classes: int = NUM_CLASSES  # the label set 0..classes-1 (an array file's: from its labels)

    @property
    def num_classes(self) -> int:
        return self.classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image: what the models are built for."""
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device | str) -> "ImageData":
        move = lambda t: t.to(device)  # noqa: E731
        return ImageData(self.name, move(self.x_train), move(self.y_train), move(self.x_test),
                         move(self.y_test), move(self.mean), move(self.std), self.path, self.sha256,
                         self.classes)

    def normalize(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) -> float32, per-channel standardized with the train statistics."""
        x = images_uint8.float().div_(255.0)
        x = (x - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)
        if x.is_cuda:  # NHWC matches the channels-last models used on GPUs
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def _channel_stats(x_uint8: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(x_uint8).double().div_(255.0)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3))
    return mean.float(), std.float()


def _from_arrays(name, x_train, y_train, x_test, y_test, path="", sha256="",
                 classes=NUM_CLASSES) -> ImageData:
    mean, std = _channel_stats(x_train)
    as_images = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.uint8))  # noqa: E731
    as_labels = lambda a: torch.from_numpy(np.asarray(a, dtype=np.int64))  # noqa: E731
    return ImageData(name, as_images(x_train), as_labels(y_train), as_images(x_test),
                     as_labels(y_test), mean, std, path, sha256, classes)


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checked_arrays(path: Path, z) -> tuple[list[np.ndarray], int]:
    """The four arrays of an image file (grayscale (N, H, W) given a channel axis) and its
    number of classes (from the labels), or ``LandscapeError`` naming the first bad array."""
    missing = [a for a in ARRAYS if a not in z.files]
    if missing:
        raise LandscapeError(f"{path}: no array {missing[0]!r} (an image file holds "
                             f"{', '.join(ARRAYS)})")
    arrays = [z[a] for a in ARRAYS]
    for i in (0, 2):
        arrays[i] = _checked_images(path, ARRAYS[i], arrays[i])
    if arrays[2].shape[1:] != arrays[0].shape[1:]:
        raise LandscapeError(f"{path}: x_test images are {arrays[2].shape[1:]}, x_train's "
                             f"{arrays[0].shape[1:]}: give both one shape")
    for i, split in ((1, "train"), (3, "test")):
        _checked_labels(path, ARRAYS[i], arrays[i], len(arrays[i - 1]), split)
    classes = int(arrays[1].max()) + 1
    if classes < 2:
        raise LandscapeError(f"{path}: y_train has one class only (labels 0..{classes - 1})")
    unseen = sorted(set(np.unique(arrays[3]).tolist()) - set(np.unique(arrays[1]).tolist()))
    if unseen:
        raise LandscapeError(f"{path}: y_test has label {unseen[0]}, which no training image "
                             "has")
    return arrays, classes


def _checked_images(path: Path, name: str, a: np.ndarray) -> np.ndarray:
    """uint8 images (N, C, H, W), N > 0; (N, H, W) is grayscale, given its channel axis."""
    if a.dtype != np.uint8:
        raise LandscapeError(f"{path}: {name} must be uint8 images, got {a.dtype}")
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4 or 0 in a.shape:
        raise LandscapeError(f"{path}: {name} must have shape (N, C, H, W) or (N, H, W) with "
                             f"no axis of length 0, got {a.shape}")
    return a


def _checked_labels(path: Path, name: str, a: np.ndarray, images: int, split: str) -> None:
    if a.dtype.kind not in "iu":
        raise LandscapeError(f"{path}: {name} must hold integer labels, got {a.dtype}")
    if a.shape != (images,):
        raise LandscapeError(f"{path}: {name} must have shape ({images},), one label per "
                             f"{split} image, got {a.shape}")
    if a.min() < 0:
        raise LandscapeError(f"{path}: {name} has a negative label ({a.min()})")


def load_image_file(path: str | os.PathLike, name: str | None = None) -> ImageData:
    """An array file (.npz) with ``x_train`` (N, C, H, W) uint8 (or (N, H, W), grayscale),
    ``y_train`` (N,) integer labels 0..K-1 (K, the classes, from the labels), ``x_test`` and
    ``y_test`` likewise; normalized with its own training set's statistics.

    A missing file, a missing array, a wrong dtype or shape, test images of another shape, a
    negative label or a test label no training image has raises ``LandscapeError`` naming it.
    ``name`` defaults to the file's stem.
    """
    path = Path(path)
    if not path.is_file():
        raise LandscapeError(f"--dataset {path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays, classes = _checked_arrays(path, z)
    except (ValueError, OSError, EOFError) as exc:  # not an .npz, truncated, pickled objects
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LandscapeError(f"--dataset {path}: not a readable .npz array file ({reason})") from None
    return _from_arrays(name or path.stem, *arrays, path=str(path.resolve()),
                        sha256=file_sha256(path), classes=classes)


def load_cifar10_mini(path: str | os.PathLike | None = None) -> ImageData:
    """The bundled real CIFAR-10 subset: 5,085 train and 1,017 test images."""
    path = Path(path) if path is not None else mini_path()
    if not path.is_file():
        raise LandscapeError(f"cifar10-mini data file not found at {path}; reinstall the package")
    return load_image_file(path, "cifar10-mini")


# --dataset NAME read through torchvision: its class, how it is named in errors, its classes,
# and the folder it leaves under --data-root (what a user without a network copies there).
TORCHVISION = {"cifar10": ("CIFAR10", "CIFAR-10", 10, "cifar-10-batches-py"),
               "cifar100": ("CIFAR100", "CIFAR-100", 100, "cifar-100-python"),
               "mnist": ("MNIST", "MNIST", 10, "MNIST/raw"),
               "fashion-mnist": ("FashionMNIST", "Fashion-MNIST", 10, "FashionMNIST/raw")}


def load_cifar10(root: str | os.PathLike | None = None, download: bool = True) -> ImageData:
    """Full CIFAR-10 through torchvision, downloaded into ``root`` when it is absent."""
    return load_torchvision("cifar10", root, download)


def load_torchvision(name: str, root: str | os.PathLike | None = None,
                     download: bool = True) -> ImageData:
    """A ``TORCHVISION`` dataset, downloaded into ``root`` when it is absent (online only)."""
    cls_name, title, classes, folder = TORCHVISION[name]
    root = Path(root) if root is not None else default_data_root()
    import torchvision.datasets  # here: importing torchvision costs every command a second
    dataset = getattr(torchvision.datasets, cls_name)
    existed = set(root.rglob("*")) | {root} if root.exists() else set()
    try:
        # torchvision prints download progress; it raises when offline or the archive is bad.
        train = dataset(str(root), train=True, download=download)
        test = dataset(str(root), train=False, download=download)
    except Exception as exc:  # any failure here means: no usable copy at root
        _remove_new_empty_folders(root, existed)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LandscapeError(
            f"{title} not found under {root} and could not be downloaded ({reason}); "
            f"pass --data-root DIR holding {folder}, or --dataset cifar10-mini") from None
    return _from_arrays(name, _nchw(train.data), train.targets, _nchw(test.data), test.targets,
                        classes=classes)


def _remove_new_empty_folders(root: Path, existed: set[Path]) -> None:
    """Leave no empty folder behind from a failed download (``root`` and what it made)."""
    if not root.is_dir():
        return
    for folder in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True) + [root]:
        if folder not in existed and not any(folder.iterdir()):
            folder.rmdir()


def _nchw(images) -> np.ndarray:
    """torchvision's images as (N, C, H, W): CIFAR's (N, H, W, C) arrays, MNIST's (N, H, W)
    tensors."""
    images = np.asarray(images)
    return images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)


def augment(images: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop (zero padding ``pad``) and horizontal flip, batched, on any dtype.

    The same ``generator`` draws the crop offsets and flips, so augmentation is reproducible.
    """
    n, c, h, w = images.shape
    dev = images.device
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=generator.device).to(dev)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=generator.device).to(dev)
    flip = torch.rand(n, generator=generator, device=generator.device).to(dev) < 0.5
    # Gather crops with one advanced-indexing op: rows (n, h, 1) and columns (n, 1, w).
    rows = (dy.view(n, 1) + torch.arange(h, device=dev).view(1, h)).view(n, 1, h, 1)
    cols = torch.arange(w, device=dev).view(1, w)
    cols = torch.where(flip.view(n, 1), (w - 1) - cols, cols)  # flip = reversed column order
    cols = (dx.view(n, 1) + cols).view(n, 1, 1, w)
    batch = torch.arange(n, device=dev).view(n, 1, 1, 1)
    chan = torch.arange(c, device=dev).view(1, c, 1, 1)
    return padded[batch, chan, rows, cols]


class BatchStream:
    """Seeded epoch-wise minibatches over a device-resident ``ImageData`` training split.

    Every stream built with the same ``seed`` yields the same batches in the same order
    (and, with ``augment``, the same crops and flips), so runs of a sweep differ only by
    their learning rate. Incomplete last batches are dropped (constant BatchNorm batch size).

    ``state_dict()`` between two batches says where the stream stands (the order generator as
    it was before this epoch's permutation, the augmentation generator now, the batches of
    this epoch already given); after ``load_state_dict`` the next ``epoch()`` gives the rest of
    that epoch, the very batches the interrupted stream would have given.
    """

    def __init__(self, data: ImageData, batch_size: int, seed: int, augment: bool = False):
        if batch_size > len(data.y_train):
            raise LandscapeError(
                f"--batch-size {batch_size} is larger than the {len(data.y_train)} training images")
        self.data = data
        self.batch_size = batch_size
        self.augment = augment
        # CPU generators: the permutation is tiny, and CPU draws are identical on every device.
        self._order_gen = torch.Generator().manual_seed(seed)
        self._aug_gen = torch.Generator().manual_seed(seed + 1_000_003)
        self._epoch_order: torch.Tensor | None = None  # order state before this epoch's draw
        self.position = 0  # batches of the epoch under way given so far
        self._resume_at = 0  # batches the next epoch() skips (load_state_dict)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.data.y_train) // self.batch_size

    def epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One pass: yields (normalized float32 images, int64 labels) on the data's device."""
        n = len(self.data.y_train)
        self._epoch_order = self._order_gen.get_state()
        order = torch.randperm(n, generator=self._order_gen).to(self.data.x_train.device)
        start, self._resume_at = self._resume_at, 0
        for k in range(start, self.steps_per_epoch):
            idx = order[k * self.batch_size:(k + 1) * self.batch_size]
            images = self.data.x_train[idx]
            if self.augment:
                images = augment(images, self._aug_gen)
            self.position = k + 1
            yield self.data.normalize(images), self.data.y_train[idx]
        self._epoch_order, self.position = None, 0  # the epoch is over

    def state_dict(self) -> dict:
        """Where the stream stands between two batches (see the class docstring)."""
        in_epoch = self._epoch_order is not None
        return {"order": (self._epoch_order if in_epoch else self._order_gen.get_state()).clone(),
                "augment": self._aug_gen.get_state().clone(),
                "position": self.position if in_epoch else 0}

    def load_state_dict(self, state: dict) -> None:
        self._order_gen.set_state(state["order"])
        self._aug_gen.set_state(state["augment"])
        self._epoch_order, self.position, self._resume_at = None, 0, int(state["position"])


def eval_batches(data: ImageData, batch_size: int = 1000) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, len(data.y_test), batch_size):
        yield (data.normalize(data.x_test[start:start + batch_size]),
               data.y_test[start:start + batch_size])
