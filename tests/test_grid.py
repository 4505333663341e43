"""The batched learning-rate grid equals separate torch.optim.SGD runs."""

import copy

import pytest
import torch
import torch.nn.functional as F

from landscape.data import BatchStream, load_cifar10_mini
from landscape.grid import BatchedGrid, supports_batched
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
