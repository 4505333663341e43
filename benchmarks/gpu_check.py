"""GPU correctness: the probe on CUDA (batched and sequential) against a float64 CPU reference.

    python benchmarks/gpu_check.py        # needs a CUDA GPU; prints relative errors

Full-width VGG-A with and without BatchNorm on a real cifar10-mini batch of 128; the probe
on the GPU measures in float32 (TF32 and autocast off) even while training settings enable
TF32, and must leave parameters, BN buffers and the CUDA RNG state bit-identical.
"""

import copy

import numpy as np
import torch
import torch.nn.functional as F

from landscape.data import load_cifar10_mini
from landscape.models import build_model
from landscape.probes import along_gradient


def rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b)) / np.abs(np.asarray(b))))


def main():
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    dev = torch.device("cuda")
    data = load_cifar10_mini()
    x, y = data.normalize(data.x_train[:128]), data.y_train[:128]
    etas = [0.05, 0.1, 0.2, 0.4]
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # as training
    for name in ("vgg_a", "vgg_a_bn"):
        torch.manual_seed(0)
        model = build_model(name)
        ref = along_gradient(copy.deepcopy(model).double(), F.cross_entropy, x.double(), y, etas)
        gpu = model.to(dev).to(memory_format=torch.channels_last)
        xg, yg = x.to(dev).contiguous(memory_format=torch.channels_last), y.to(dev)
        before = [t.clone() for t in list(gpu.parameters()) + list(gpu.buffers())]
        rng = torch.cuda.get_rng_state(dev)
        for batched in (True, False):
            rec = along_gradient(gpu, F.cross_entropy, xg, yg, etas, batched=batched)
            print(f"{name:9s} batched={batched!s:5s} loss rel err {rel(rec.loss, ref.loss):.2e}  "
                  f"grad_diff rel err {rel(rec.grad_diff, ref.grad_diff):.2e}  "
                  f"beta {rec.beta:.4f} vs float64 {ref.beta:.4f}")
        after = list(gpu.parameters()) + list(gpu.buffers())
        untouched = all(torch.equal(a, b) for a, b in zip(before, after))
        untouched &= torch.equal(rng, torch.cuda.get_rng_state(dev))
        print(f"{name:9s} parameters, buffers and CUDA RNG unchanged: {untouched}")


if __name__ == "__main__":
    main()
