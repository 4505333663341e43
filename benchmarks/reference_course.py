"""The reference: a learning-rate sweep written the way course reproductions write it.

torchvision-style ``Dataset`` with per-image transforms (PIL image -> ToTensor -> Normalize)
behind a ``DataLoader``; one sequential run per learning rate; each epoch a full extra pass over
the training set for the training accuracy, then the test set. It records the per-step loss
and consecutive-step gradient distance of the last layer, and no landscape probe: it computes
less than ``landscape run`` does.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from landscape.models import build_model


class ArrayCIFAR(Dataset):
    """Images stored as (N, 32, 32, 3) uint8, served one PIL image at a time like CIFAR10."""

    def __init__(self, images_nchw: np.ndarray, labels: np.ndarray, transform):
        self.images = images_nchw.transpose(0, 2, 3, 1).copy()
        self.labels = labels.astype(np.int64)
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def course_sweep(npz_path: str, models, lrs, epochs: int, width: float, batch_size: int = 128,
                 device: str = "cpu", num_workers: int = 0) -> dict:
    with np.load(npz_path) as z:
        x_train, y_train, x_test, y_test = z["x_train"], z["y_train"], z["x_test"], z["y_test"]
    mean = (x_train / 255.0).mean(axis=(0, 2, 3))
    std = (x_train / 255.0).std(axis=(0, 2, 3))
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
    train_set = ArrayCIFAR(x_train, y_train, transform)
    test_set = ArrayCIFAR(x_test, y_test, transform)
    steps = 0
    started = time.perf_counter()
    for model_name in models:
        for lr in lrs:
            torch.manual_seed(0)
            model = build_model(model_name, width=width).to(device)
            opt = torch.optim.SGD(model.parameters(), lr=lr)
            train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True,
                                      drop_last=True, num_workers=num_workers)
            losses, grad_dists, accuracies, prev = [], [], [], None
            for _ in range(epochs):
                model.train()
                for x, y in train_loader:
                    x, y = x.to(device), y.to(device)
                    loss = F.cross_entropy(model(x), y)
                    opt.zero_grad()
                    loss.backward()
                    last = model.classifier[-1].weight.grad.detach().clone()
                    if prev is not None:
                        grad_dists.append((last - prev).norm().item())
                    prev = last
                    losses.append(loss.item())
                    opt.step()
                    steps += 1
                model.eval()
                with torch.no_grad():
                    for loader in (DataLoader(train_set, batch_size=500),
                                   DataLoader(test_set, batch_size=500)):
                        correct = sum((model(x.to(device)).argmax(1) == y.to(device)).sum().item()
                                      for x, y in loader)
                        accuracies.append(correct / len(loader.dataset))
    return {"seconds": time.perf_counter() - started, "steps": steps}
