"""Where a GPU has room left: batch scaling, concurrent runs, concurrent probe points.

    python benchmarks/gpu_scaling.py     # needs a CUDA GPU

Full-width VGG-A+BN on a real cifar10-mini batch. Prints three tables:
1. one float32 forward+backward (the probe's unit of work) at batch 128, 256, 512, graphed:
   if 512 costs less than 4 x 128, one 128-batch pass leaves the GPU partly idle;
2. K graphed training steps on K streams (``CapturedStep``), K = 1, 3, 5, 10: milliseconds
   per run-step, per training precision;
3. one probe (4 eta points, float32), eager and graphed, with its points evaluated one after
   another, as one vmapped pass, and on 4 concurrent streams; with g recomputed and reused.
"""

import torch
import torch.nn.functional as F

from landscape.data import load_cifar10_mini
from landscape.train.streams import CapturedStep
from landscape.models import build_model
from landscape.probes import loss_and_grad, no_trace, probe_tensors, trainable_parameters
from landscape.train.tasks import ClassificationTask
from landscape.train import training_precision

from gpu_timing import ms_per_call  # this folder (scripts here run as benchmarks/NAME.py)

ETAS = (0.05, 0.1, 0.2, 0.4)


def graphed(body):
    """Warm ``body`` up eagerly on a side stream, record it as a graph; the replay function."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            body()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()
    return graph.replay


def fresh_model(device, name="vgg_a_bn"):
    torch.manual_seed(0)
    return build_model(name).to(device).to(memory_format=torch.channels_last)


def stream_round(k, task, x, y, autocast, device, name="vgg_a_bn"):
    """K runs' ``CapturedStep``s and a function that steps them all once on K streams."""
    steps = []
    for i in range(k):
        m = fresh_model(device, name)
        steps.append(CapturedStep(m, torch.optim.SGD(m.parameters(), lr=0.01 * (i + 1)), task,
                                  x, y, autocast))

    def round_():
        for s in steps:
            s.launch()
        for s in steps:
            s.join()

    return steps, round_


def main():
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    device = torch.device("cuda")
    data = load_cifar10_mini().to(device)
    x_all, y_all = data.normalize(data.x_train[:512]), data.y_train[:512]
    x, y = x_all[:128].clone(), y_all[:128].clone()
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}\n")

    print("## 1. one float32 forward+backward, graphed\n")
    print("| batch | ms | ms per 128 images |\n|---|---|---|")
    model = fresh_model(device)
    for batch in (128, 256, 512):
        xb, yb = x_all[:batch].clone(), y_all[:batch].clone()
        params = trainable_parameters(model)
        with no_trace(model, device):
            replay = graphed(lambda: loss_and_grad(model, F.cross_entropy, xb, yb, params))
            t = ms_per_call(replay, 20)
        print(f"| {batch} | {t:.2f} | {t * 128 / batch:.2f} |")

    print("\n## 2. K graphed training steps on K streams\n")
    print("| precision | K | ms per round | ms per run-step |\n|---|---|---|---|")
    task = ClassificationTask(data)
    for precision in ("tf32", "bf16"):
        with training_precision(precision, device) as autocast:
            for k in (1, 3, 5, 10):
                _, round_ = stream_round(k, task, x, y, autocast, device)
                t = ms_per_call(round_, 30)
                print(f"| {precision} | {k} | {t:.2f} | {t / k:.2f} |")

    print("\n## 3. one probe (4 eta points, float32)\n")
    print("| points | g | eager ms | graphed ms |\n|---|---|---|---|")
    model = fresh_model(device)
    etas = torch.tensor(ETAS, device=device)
    with no_trace(model, device):
        loss0, g = loss_and_grad(model, F.cross_entropy, x, y, trainable_parameters(model))
        for points in ("sequential", "vmap", "streams"):
            for at_theta, label in ((None, "recomputed"), ((loss0, g), "reused")):
                def body(points=points, at_theta=at_theta):
                    return probe_tensors(model, F.cross_entropy, x, y, etas, points, at_theta)
                eager = ms_per_call(body, 10)
                t = ms_per_call(graphed(body), 10)
                print(f"| {points} | {label} | {eager:.1f} | {t:.1f} |")


if __name__ == "__main__":
    main()
