"""Where one training step's GPU time goes: the top kernels of eager steps, per precision.

    python benchmarks/profile_step.py [--model vgg_a_bn] [--steps 20]    # needs a CUDA GPU
"""

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from landscape.data import load_cifar10_mini
from landscape.models import build_model
from landscape.train.tasks import ClassificationTask
from landscape.train import training_precision


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="vgg_a_bn")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--precisions", default="tf32,bf16")
    args = parser.parse_args()
    device = torch.device("cuda")
    data = load_cifar10_mini().to(device)
    x, y = data.normalize(data.x_train[:128]), data.y_train[:128]
    task = ClassificationTask(data)
    for precision in args.precisions.split(","):
        torch.manual_seed(0)
        model = build_model(args.model).to(device).to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        with training_precision(precision, device) as autocast:
            def step():
                with autocast():
                    loss = task.loss_fn(model(x).float(), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            for _ in range(5):
                step()
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(args.steps):
                    step()
                torch.cuda.synchronize()
        events = [e for e in prof.key_averages() if e.device_time_total > 0]
        total = sum(e.self_device_time_total for e in events)
        print(f"\n## {args.model} {precision}: {total / args.steps / 1e3:.2f} ms of kernels a step\n")
        print("| kernel | calls a step | ms a step | share |\n|---|---|---|---|")
        for e in sorted(events, key=lambda e: -e.self_device_time_total)[:25]:
            print(f"| {e.key[:90]} | {e.count / args.steps:g} | "
                  f"{e.self_device_time_total / args.steps / 1e3:.3f} | "
                  f"{e.self_device_time_total / total:.1%} |")


if __name__ == "__main__":
    main()
