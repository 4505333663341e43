"""Milliseconds of one graphed training step and one probe (eager and graphed), per precision.

    python benchmarks/graph_timings.py     # needs a CUDA GPU

Full-width VGG-A+BN, a real cifar10-mini batch of 128, the classes ``--grid streams`` uses
(``landscape.graphs.CapturedStep`` and ``CapturedProbe``). The probe measures in float32
whatever the training precision, so its time is the same in every row.
"""

import torch
import torch.nn.functional as F

from landscape.data import load_cifar10_mini
from landscape.train.streams import CapturedProbe, CapturedStep
from landscape.models import build_model
from landscape.probes import along_gradient
from landscape.train.tasks import ClassificationTask
from landscape.train import training_precision

from gpu_timing import ms_per_call  # this folder (scripts here run as benchmarks/NAME.py)

ETAS = (0.05, 0.1, 0.2, 0.4)


def main():
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    device = torch.device("cuda")
    data = load_cifar10_mini().to(device)
    x, y = data.normalize(data.x_train[:128]), data.y_train[:128]
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}\n")
    print("| training precision | graphed step | eager probe | graphed probe | graphed probe / graphed step |")
    print("|---|---|---|---|---|")
    for precision in ("fp32", "tf32", "bf16"):
        torch.manual_seed(0)
        model = build_model("vgg_a_bn").to(device).to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        with training_precision(precision, device) as autocast:
            step = CapturedStep(model, optimizer, ClassificationTask(data), x.clone(), y.clone(),
                                autocast)
            probe = CapturedProbe(model, F.cross_entropy, step.x, step.y, ETAS, step.stream)

            def graphed_step():
                step.launch()
                step.join()

            def graphed_probe():
                probe.launch()
                torch.cuda.current_stream().wait_stream(step.stream)

            t_step = ms_per_call(graphed_step, 50)
            t_eager = ms_per_call(lambda: along_gradient(model, F.cross_entropy, x, y, ETAS,
                                                         points="sequential"), 10)
            t_probe = ms_per_call(graphed_probe, 10)
        print(f"| {precision} | {t_step:.2f} ms | {t_eager:.1f} ms | {t_probe:.1f} ms | "
              f"{t_probe / t_step:.1f} |")


if __name__ == "__main__":
    main()
