"""cuDNN's heuristic convolution algorithms vs autotuned ones (``cudnn.benchmark``), side by side.

    python benchmarks/cudnn_autotune.py     # needs a CUDA GPU

Full-width models on a real cifar10-mini batch of 128. For each setting, off then on:
one float32 forward+backward (the probe's unit), one graphed probe (4 eta points on streams,
g recomputed, as under TF32/bf16 training), K = 5 graphed training steps on 5 streams, and
a 10,000-image test evaluation (batches of 1,000) with and without bf16 autocast.
"""

import torch
import torch.nn.functional as F

from landscape.data import load_cifar10_mini
from landscape.probes import loss_and_grad, no_trace, probe_tensors, trainable_parameters
from landscape.train.tasks import ClassificationTask
from landscape.train import evaluate, training_precision

# This folder's scripts (they run as benchmarks/NAME.py):
from fig4_grid import tiled
from gpu_scaling import ETAS, fresh_model, graphed, stream_round
from gpu_timing import ms_per_call


def rows(name, data, x, y, device, benchmark):
    """(what, ms) pairs for one model with ``cudnn.benchmark = benchmark``."""
    out = []
    torch.backends.cudnn.benchmark = benchmark
    with training_precision("fp32", device):
        model = fresh_model(device, name)
        params = trainable_parameters(model)
        etas = torch.tensor(ETAS, device=device)
        with no_trace(model, device):
            out.append(("float32 forward+backward, graphed",
                        ms_per_call(graphed(lambda: loss_and_grad(model, F.cross_entropy, x, y,
                                                                  params)), 20)))
            out.append(("probe, 4 eta on streams, graphed",
                        ms_per_call(graphed(lambda: probe_tensors(model, F.cross_entropy, x, y,
                                                                  etas, "streams")), 10)))
    task = ClassificationTask(data)
    for precision in ("tf32", "bf16"):
        with training_precision(precision, device) as autocast:
            steps, round_ = stream_round(5, task, x, y, autocast, device, name)
            out.append((f"{precision} step, K = 5 streams (per run-step)",
                        ms_per_call(round_, 30) / 5))
            out.append((f"test evaluation (10,000 images), {precision}",
                        ms_per_call(lambda: evaluate(steps[0].model, data), 3)))
            if precision == "bf16":
                def bf16_eval():
                    with autocast():
                        evaluate(steps[0].model, data)
                out.append(("test evaluation (10,000 images), bf16 autocast",
                            ms_per_call(bf16_eval, 3)))
    return out


def main():
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    device = torch.device("cuda")
    mini = load_cifar10_mini()
    data = tiled(mini, len(mini.y_train), 10_000).to(device)  # CIFAR-10's 10,000 test images
    x, y = data.normalize(data.x_train[:128]).clone(), data.y_train[:128].clone()
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}\n")
    print("| model | what | heuristic ms | autotuned ms | ratio |\n|---|---|---|---|---|")
    for name in ("vgg_a", "vgg_a_bn"):
        off = rows(name, data, x, y, device, False)
        on = rows(name, data, x, y, device, True)
        for (what, a), (_, b) in zip(off, on):
            print(f"| {name} | {what} | {a:.2f} | {b:.2f} | {a / b:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
