"""Data: datasets as tensors on the training device, and the minibatch streams over them.

``images``: CIFAR-10 and the bundled real subset (``cifar10-mini.npz``, package data in this
folder), seeded ``BatchStream`` minibatches, batched augmentation. ``gaussian``: the deep
linear network's synthetic regression data and its full-batch stream. ``datasets``: by name.
"""

from .datasets import DATASETS, load_dataset
from .gaussian import FullBatchStream, GaussianLinearData, load_gaussian_linear
from .images import (NUM_CLASSES, BatchStream, ImageData, augment, default_data_root,
                     eval_batches, load_cifar10, load_cifar10_mini, mini_path)

__all__ = ["DATASETS", "load_dataset", "ImageData", "BatchStream", "augment", "eval_batches",
           "load_cifar10", "load_cifar10_mini", "mini_path", "default_data_root", "NUM_CLASSES",
           "GaussianLinearData", "load_gaussian_linear", "FullBatchStream"]
