"""Datasets by name: what ``--dataset`` accepts."""

from __future__ import annotations

import os

from ..errors import LandscapeError
from .gaussian import DATASET as GAUSSIAN_LINEAR, GaussianLinearData, load_gaussian_linear
from .images import TORCHVISION, ImageData, load_cifar10_mini, load_image_file, load_torchvision

DATASETS = ("cifar10", "cifar10-mini", "cifar100", "mnist", "fashion-mnist", GAUSSIAN_LINEAR)
ARRAY_FILE_SUFFIX = ".npz"  # any other --dataset is a path to an array file of images


def is_array_file(name: str) -> bool:
    return name not in DATASETS and name.lower().endswith(ARRAY_FILE_SUFFIX)


def load_dataset(name: str, root: str | os.PathLike | None = None) -> ImageData | GaussianLinearData:
    if name == GAUSSIAN_LINEAR:  # the deep linear network's data (not images)
        return load_gaussian_linear()
    if name in TORCHVISION:
        return load_torchvision(name, root)
    if name == "cifar10-mini":
        return load_cifar10_mini()
    if is_array_file(name):
        return load_image_file(name)
    raise LandscapeError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)} "
                         f"or give a path to a {ARRAY_FILE_SUFFIX} array file")
