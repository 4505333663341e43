"""Graphed training steps with and without torch.compile, K runs on K streams (experiment).

    python benchmarks/compile_steps.py     # needs a CUDA GPU

Timings only, of a step whose gradients are wrong: on the H100 (torch 2.11) the compiled
step's gradient was 4% off the eager step's at the same weights
(``test_recorded_compiled_step_computes_the_eager_step``; benchmarks/RESULTS.md, Round 4), and
sweeps refuse ``--compile`` on GPUs. These rows are no speed-up of the sweep.
"""

import time

import torch

from landscape.data import load_cifar10_mini
from landscape.train.streams import WARMUP, CapturedStep
from landscape.models import build_model
from landscape.train.tasks import ClassificationTask
from landscape.train import training_precision


def main():
    device = torch.device("cuda")
    data = load_cifar10_mini().to(device)
    x, y = data.normalize(data.x_train[:128]).clone(), data.y_train[:128].clone()
    task = ClassificationTask(data)
    k = 5
    print("| model | precision | compiled | rounds | first rounds s | ms per run-step |")
    print("|---|---|---|---|---|---|")
    for precision in ("tf32", "bf16"):
        for name in ("vgg_a", "vgg_a_bn"):
            for compiled in (False, True):
                with training_precision(precision, device) as autocast:
                    steps = []
                    for i in range(k):
                        torch.manual_seed(0)
                        m = build_model(name).to(device).to(memory_format=torch.channels_last)
                        opt = torch.optim.SGD(m.parameters(), lr=0.02 * (i + 1))
                        forward = torch.compile(m) if compiled else m
                        steps.append(CapturedStep(m, opt, task, x, y, autocast, forward))

                    def round_(join):
                        for s in steps:
                            s.launch()
                        if join:
                            return [s.join() for s in steps]

                    started = time.perf_counter()
                    for _ in range(WARMUP + 2):
                        round_(True)
                    torch.cuda.synchronize()
                    setup = time.perf_counter() - started
                    for join in (True, False):
                        started = time.perf_counter()
                        for _ in range(100):
                            round_(join)
                        for s in steps:
                            s.join()
                        torch.cuda.synchronize()
                        t = (time.perf_counter() - started) / 100 * 1e3
                        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
                        print(f"| {name} | {precision} | {compiled} ({graphs} graphs so far) | "
                              f"{'lockstep' if join else 'free'} | {setup:.1f} | {t / k:.3f} |",
                              flush=True)


if __name__ == "__main__":
    main()
