"""GPU correctness: the probe on CUDA against a float64 CPU reference; graphed sweeps vs eager.

    python benchmarks/gpu_check.py        # needs a CUDA GPU; prints relative errors

1. Full-width VGG-A with and without BatchNorm on a real cifar10-mini batch of 128; the probe
   on the GPU measures in float32 (TF32 and autocast off) even while training settings enable
   TF32, and must leave parameters, BN buffers and the CUDA RNG state bit-identical.
2. ``run_sweep`` with ``--grid streams`` (CUDA graphs on concurrent streams) against
   ``--grid sequential`` (eager runs), full width, float32 training: every stored number.
"""

import copy
import os
import tempfile

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from landscape.data import load_cifar10_mini
from landscape.models import build_model
from landscape.probes import along_gradient
from landscape.train import SweepConfig, run_sweep


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
        for points in ("vmap", "streams", "sequential"):
            rec = along_gradient(gpu, F.cross_entropy, xg, yg, etas, points=points)
            print(f"{name:9s} points={points:10s} loss rel err {rel(rec.loss, ref.loss):.2e}  "
                  f"grad_diff rel err {rel(rec.grad_diff, ref.grad_diff):.2e}  "
                  f"beta {rec.beta:.4f} vs float64 {ref.beta:.4f}")
        after = list(gpu.parameters()) + list(gpu.buffers())
        untouched = all(torch.equal(a, b) for a, b in zip(before, after))
        untouched &= torch.equal(rng, torch.cuda.get_rng_state(dev))
        print(f"{name:9s} parameters, buffers and CUDA RNG unchanged: {untouched}")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    compare_streams_with_eager(data)


def compare_streams_with_eager(data, steps: int = 60):
    """Largest relative difference over every stored dataset: streams vs sequential (eager),
    and sequential vs itself (the noise floor), with cuDNN's default and deterministic kernels."""
    for deterministic in (True, False):
        torch.backends.cudnn.deterministic = deterministic
        with tempfile.TemporaryDirectory() as tmp:
            files = {}
            for label, grid in (("streams", "streams"), ("eager", "sequential"),
                                ("eager again", "sequential")):
                files[label] = os.path.join(tmp, f"{label}.h5")
                config = SweepConfig(models=("vgg_a", "vgg_a_bn"), lrs=(0.05, 0.1, 0.15),
                                     steps=steps, probe_every=10, dataset="cifar10-mini",
                                     device="cuda", precision="fp32", grid=grid)
                run_sweep(config, files[label], data=data)
            for other in ("streams", "eager again"):
                worst = largest_difference(files[other], files["eager"])
                print(f"cudnn.deterministic={deterministic!s:5s} {other:11s} vs eager, {steps} "
                      f"full-width fp32 steps, 6 runs: largest rel diff {worst[0]:.1e} ({worst[1]})")
    torch.backends.cudnn.deterministic = False


def largest_difference(path_a, path_b):
    worst = (0.0, "-")
    with h5py.File(path_a, "r") as a, h5py.File(path_b, "r") as b:
        for name in b["runs"]:
            for path in ("steps/loss", "steps/grad_norm", "steps/grad_diff", "probe/loss",
                         "probe/grad_diff", "probe/beta", "epochs/test_loss"):
                x, y = a["runs"][name][path][()], b["runs"][name][path][()]
                ok = np.isfinite(y) & (y != 0)
                d = float(np.max(np.abs(x[ok] - y[ok]) / np.abs(y[ok]))) if ok.any() else 0.0
                worst = max(worst, (d, f"{name} {path}"))
    return worst


if __name__ == "__main__":
    main()
