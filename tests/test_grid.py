"""The batched learning-rate grid equals separate torch.optim.SGD runs."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from landscape.data import BatchStream, load_cifar10_mini
from landscape.train.batched import BatchedGrid, supports_batched
from landscape.models import vgg_a


def relative_error(actual, expected):
    """||actual - expected|| / ||expected|| (0 when both are zero)."""
    expected = expected.detach().double()
    diff = float(torch.linalg.vector_norm(actual.detach().double() - expected))
    return diff / max(float(torch.linalg.vector_norm(expected)), 1e-300) if diff else 0.0


# float64 over 20 steps: the grid is the same arithmetic as separate runs, to rounding.
# float32 only over the first steps: SGD on these networks amplifies rounding differences
# chaotically (the same sequential run in channels-last vs NCHW layout differs by ~5% in loss
# after 5 steps at LR 0.05, measured), so no two float32 implementations agree over 20 steps.
CASES = [("batch", 0.9, 5e-4, torch.float64, 20, 1e-9),
         ("none", 0.0, 0.0, torch.float64, 20, 1e-9),
         ("batch", 0.9, 5e-4, torch.float32, 2, 1e-5),
         ("none", 0.0, 0.0, torch.float32, 2, 1e-5)]


@pytest.mark.parametrize("norm,momentum,weight_decay,dtype,steps,rtol", CASES)
def test_grid_equals_separate_runs(norm, momentum, weight_decay, dtype, steps, rtol):
    lrs = (0.02, 0.05, 0.1)
    torch.manual_seed(0)
    model = vgg_a(width=0.0625, norm=norm).to(dtype)
    data = load_cifar10_mini()
    batches = [(x.to(dtype), y) for _, (x, y) in zip(range(4), BatchStream(data, 16, seed=0).epoch())]

    grid = BatchedGrid(lambda: copy.deepcopy(model), lrs, momentum, weight_decay)
    singles = [copy.deepcopy(model) for _ in lrs]
    opts = [torch.optim.SGD(m.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
            for m, lr in zip(singles, lrs)]
    for step in range(steps):
        x, y = batches[step % len(batches)]
        grid_losses, grid_correct, _ = grid.step(x, y)
        for k, (m, opt) in enumerate(zip(singles, opts)):
            out = m(x)
            loss = F.cross_entropy(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            assert float(grid_losses[k]) == pytest.approx(float(loss.detach()), rel=rtol), (step, k)
    for k, m in enumerate(singles):
        mine = grid.model_at(k)
        flat = lambda ts: torch.cat([t.detach().double().flatten() for t in ts])  # noqa: E731
        assert relative_error(flat(mine.parameters()), flat(m.parameters())) <= rtol
        if norm == "batch":
            assert relative_error(flat(mine.buffers()), flat(m.buffers())) <= rtol
    test_x, test_y = batches[0]
    losses, accs = grid.evaluate([(test_x, test_y)])
    for k, m in enumerate(singles):
        with torch.no_grad():
            out = m.eval()(test_x)
        assert losses[k] == pytest.approx(float(F.cross_entropy(out, test_y)), rel=rtol)
        assert accs[k] == pytest.approx(float((out.argmax(1) == test_y).float().mean()))


def test_a_diverged_model_does_not_touch_the_others():
    torch.manual_seed(0)
    model = vgg_a(width=0.125, norm="batch")
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    grid = BatchedGrid(lambda: copy.deepcopy(model), (0.05, 0.05))
    with torch.no_grad():
        for p in grid.params.values():
            p[0].fill_(float("nan"))
    grid.alive[0] = False
    losses, _, _ = grid.step(x, y)
    assert torch.isnan(losses[0]) and torch.isfinite(losses[1])
    ref = copy.deepcopy(model)
    opt = torch.optim.SGD(ref.parameters(), lr=0.05)
    F.cross_entropy(ref(x), y).backward()
    opt.step()
    for a, b in zip(ref.parameters(), grid.model_at(1).parameters()):
        torch.testing.assert_close(b, a.detach(), rtol=1e-4, atol=1e-6)


def test_supports_batched():
    assert supports_batched(vgg_a(width=0.125, norm="batch"), torch.randn(4, 3, 32, 32))

    class DataDependent(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.lin(x) if float(self.lin.weight.sum()) > 0 else -self.lin(x)

    assert not supports_batched(DataDependent(), torch.randn(4, 4))


def test_sweep_with_batched_grid_writes_what_sequential_runs_write(tmp_path):
    """Through run_sweep: same schema, same first-step numbers (same init, same batch)."""
    import h5py

    from landscape.train import SweepConfig, run_sweep

    files = {}
    for mode in ("batched", "sequential"):
        files[mode] = tmp_path / f"{mode}.h5"
        run_sweep(SweepConfig(models=("vgg_a_bn",), lrs=(0.02, 0.05), steps=4, probe_every=2,
                              dataset="cifar10-mini", width=0.125, device="cpu", grid=mode),
                  files[mode])
    with h5py.File(files["batched"], "r") as b, h5py.File(files["sequential"], "r") as s:
        assert sorted(b["runs"]) == sorted(s["runs"])
        for name in s["runs"]:
            rb, rs = b["runs"][name], s["runs"][name]
            assert rb.attrs["status"] == rs.attrs["status"] == "completed"
            for path in ("steps/step", "probe/step", "probe/eta", "epochs/epoch"):
                assert (rb[path][()] == rs[path][()]).all(), path
            for path in ("steps/loss", "steps/grad_norm", "probe/beta", "probe/grad_norm"):
                assert rb[path][0] == pytest.approx(rs[path][0], rel=1e-5), path
            assert rb["probe/loss"].shape == rs["probe/loss"].shape == (2, 4)


def _short_of_memory_beyond(monkeypatch, k_max):
    """GridRuns steps of more than k_max runs raise what CUDA raises when memory is short."""
    from landscape import train

    real_step = train.GridRuns.step

    def step(self, *args, **kwargs):
        if self.k > k_max:
            raise torch.OutOfMemoryError(f"CUDA out of memory (test: grid of {self.k} runs)")
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(train.GridRuns, "step", step)


def test_grid_that_does_not_fit_is_split(tmp_path, monkeypatch):
    """5 learning rates, room for 2 at once: grids of 2, 2 and 1, with the numbers unchanged."""
    import h5py

    from landscape.train import SweepConfig, run_sweep

    lrs = (0.01, 0.02, 0.03, 0.04, 0.05)
    config = dict(models=("vgg_a",), lrs=lrs, steps=3, probe_every=2, dataset="cifar10-mini",
                  width=0.0625, device="cpu")
    run_sweep(SweepConfig(**config, grid="sequential"), tmp_path / "seq.h5")
    _short_of_memory_beyond(monkeypatch, 2)
    run_sweep(SweepConfig(**config, grid="batched"), tmp_path / "split.h5")
    with h5py.File(tmp_path / "split.h5", "r") as f, h5py.File(tmp_path / "seq.h5", "r") as s:
        shared = [int(f["runs"][f"vgg_a-lr{lr:g}-seed0"].attrs["grid_size"]) for lr in lrs]
        assert shared == [2, 2, 2, 2, 1]
        assert [f["runs"][f"vgg_a-lr{lr:g}-seed0"].attrs["grid"] for lr in lrs] == \
            ["batched"] * 4 + ["sequential"]
        for name in s["runs"]:
            assert f["runs"][name].attrs["status"] == "completed"
            np.testing.assert_allclose(f["runs"][name]["steps/loss"][()],
                                       s["runs"][name]["steps/loss"][()], rtol=1e-4)
            np.testing.assert_allclose(f["runs"][name]["probe/beta"][()],
                                       s["runs"][name]["probe/beta"][()], rtol=1e-3)


def test_out_of_memory_mid_sweep_is_one_line_and_keeps_the_file(tmp_path, monkeypatch, capsys):
    import h5py

    from landscape import train
    from landscape.cli import main

    real_step = train.SequentialRun.step

    def step(self, x, y, step):
        if step == 2:
            raise torch.OutOfMemoryError("CUDA out of memory (test)")
        return real_step(self, x, y, step)

    monkeypatch.setattr(train.SequentialRun, "step", step)
    out = tmp_path / "oom.h5"
    assert main(["run", "--dataset", "cifar10-mini", "--models", "vgg_a", "--width", "0.0625",
                 "--steps", "4", "--device", "cpu", "--out", str(out)]) == 2
    last = capsys.readouterr().err.splitlines()[-1]  # after the progress line: one error line
    assert last.startswith("error: out of cpu memory") and str(out) in last
    with h5py.File(out, "r") as f:
        run = f["runs/vgg_a-lr0.1-seed0"]
        assert run.attrs["status"] == "failed" and len(run["steps/step"]) == 2


def test_compiled_grid_step_computes_the_eager_step(one_cpu_thread):
    """``--grid batched --compile``: at each step, from the same weights and BN buffers, the
    compiled vmapped step's losses and gradients equal the eager grid's (float32, 1e-5).
    Step by step: whole float32 runs drift apart chaotically (see CASES above)."""
    def build():
        torch.manual_seed(0)
        return vgg_a(width=0.125, norm="batch")

    data = load_cifar10_mini()
    compiled, eager = BatchedGrid(build, (0.05, 0.1), compile=True), BatchedGrid(build, (0.05, 0.1))
    for step, (x, y) in zip(range(3), BatchStream(data, 16, seed=0).epoch()):
        with torch.no_grad():  # the eager grid to the compiled one's weights and buffers
            for name, p in compiled.params.items():
                eager.params[name].copy_(p)
            for name, b in compiled.buffers.items():
                eager.buffers[name].copy_(b)
        losses, _, grads = compiled.step(x, y)
        eager_losses, _, eager_grads = eager.step(x, y)
        assert relative_error(losses, eager_losses) < 1e-5, step
        assert relative_error(compiled.flat(grads), eager.flat(eager_grads)) < 1e-5, step
