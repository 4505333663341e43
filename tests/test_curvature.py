"""sharpness: closed forms on a quadratic, the dense Hessian of small networks, no trace."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from landscape.probes import SharpnessProbe, sharpness
from test_probes import Quadratic, assert_same_state, identity_loss, random_spd, snapshot


def quadratic(n=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    eigenvalues = torch.linspace(-2.0, 9.0, n, dtype=torch.float64)  # indefinite, as Hessians are
    A = Q @ torch.diag(eigenvalues) @ Q.T
    theta = torch.randn(n, generator=gen, dtype=torch.float64)
    return Quadratic(A, theta), A, eigenvalues, theta


@pytest.mark.parametrize("k", [1, 3])
def test_quadratic_closed_form(k):
    model, A, eigenvalues, theta = quadratic()
    rec = sharpness(model, identity_loss, torch.zeros(1), torch.zeros(1), k=k, tol=1e-12)
    np.testing.assert_allclose(rec.lambda_max, eigenvalues.flip(0)[:k].numpy(), rtol=1e-10)
    g = A @ theta
    unit = g / torch.linalg.norm(g)
    assert rec.gHg == pytest.approx(float(unit @ A @ unit), rel=1e-10)
    assert rec.grad_norm == pytest.approx(float(torch.linalg.norm(g)), rel=1e-12)
    assert math.isnan(rec.trace) and math.isnan(rec.trace_stderr)  # not asked for
    assert rec.iterations > 0 and (rec.residual < 1e-8).all()


def test_quadratic_trace_tends_to_the_trace_of_A():
    model, A, _, _ = quadratic()
    rec = sharpness(model, identity_loss, torch.zeros(1), torch.zeros(1), trace_samples=4000,
                    seed=1)
    # Rademacher: Var(v^T A v) = 2 sum_{i != j} A_ij^2, so the error shrinks like 1/sqrt(m).
    sigma = math.sqrt(2 * float((A ** 2).sum() - (torch.diagonal(A) ** 2).sum()))
    assert abs(rec.trace - float(torch.trace(A))) < 4 * sigma / math.sqrt(4000)
    assert rec.trace_stderr == pytest.approx(sigma / math.sqrt(4000), rel=0.1)


def test_diagonal_quadratic_trace_is_exact():
    """Rademacher vectors give v^T D v = tr D for diagonal D: zero variance."""
    D = torch.diag(torch.arange(1.0, 7.0, dtype=torch.float64))
    model = Quadratic(D, torch.ones(6, dtype=torch.float64))
    rec = sharpness(model, identity_loss, torch.zeros(1), torch.zeros(1), trace_samples=3)
    assert rec.trace == pytest.approx(21.0, rel=1e-14) and rec.trace_stderr == 0


class SmallNet(nn.Module):
    """conv -> (BN) -> ReLU -> linear -> (BN) -> ReLU -> linear: ~600 parameters."""

    def __init__(self, bn: bool):
        super().__init__()
        norm2d = nn.BatchNorm2d(4) if bn else nn.Identity()
        norm1d = nn.BatchNorm1d(8) if bn else nn.Identity()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), norm2d, nn.ReLU(),
                                      nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(4 * 4 * 4, 8), norm1d, nn.ReLU(),
                                        nn.Linear(8, 5))

    def forward(self, x):
        return self.classifier(self.features(x))


def small_problem(bn, seed=0):
    torch.manual_seed(seed)
    model = SmallNet(bn).double()
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(20, 3, 8, 8, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 5, (20,), generator=gen)
    return model, x, y


def flat_parameters(model):
    """The parameters as one flat vector, and ``unflat(theta)``: a vector back to a dict of
    named parameters for ``functional_call``."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return flat, lambda theta: {n: t.view(s) for n, t, s in zip(names, theta.split(sizes),
                                                                 shapes)}


def dense_hessian(model, x, y):
    """The full Hessian, by torch.autograd.functional.hessian on a deep copy (train mode)."""
    model = copy.deepcopy(model).train()
    flat, unflat = flat_parameters(model)

    def loss(theta):
        params = unflat(theta)
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        return F.cross_entropy(functional_call(model, (params, buffers), (x,)), y)

    H = torch.autograd.functional.hessian(loss, flat)
    g = torch.autograd.grad(loss(flat.requires_grad_(True)), flat)[0]
    return H, g


@pytest.mark.parametrize("bn", [False, True])
def test_small_network_matches_the_dense_hessian(bn):
    model, x, y = small_problem(bn)
    H, g = dense_hessian(model, x, y)
    exact = torch.linalg.eigvalsh(H).flip(0)
    rec = sharpness(model, F.cross_entropy, x, y, k=3, tol=1e-10, trace_samples=64, seed=3)
    np.testing.assert_allclose(rec.lambda_max, exact[:3].numpy(), rtol=1e-6)
    unit = g / torch.linalg.norm(g)
    assert rec.gHg == pytest.approx(float(unit @ H @ unit), rel=1e-8)
    # Hutchinson within its statistical error: 4 standard errors (the exact one, not estimated).
    off = H - torch.diag(torch.diagonal(H))
    sigma = math.sqrt(2 * float((off ** 2).sum()))
    assert abs(rec.trace - float(torch.trace(H))) < 4 * sigma / math.sqrt(64)


def test_batchnorm_uses_batch_statistics_in_eval_mode():
    """The Hessian is that of the train-mode loss whatever mode the model is in."""
    model, x, y = small_problem(bn=True)
    train = sharpness(model, F.cross_entropy, x, y, tol=1e-10)
    model.eval()
    assert sharpness(model, F.cross_entropy, x, y, tol=1e-10).lambda_max == \
        pytest.approx(train.lambda_max, rel=1e-9)


def test_float32_model_agrees_with_float64():
    model, x, y = small_problem(bn=True)
    exact = sharpness(model, F.cross_entropy, x, y, tol=1e-10)
    rec = sharpness(copy.deepcopy(model).float(), F.cross_entropy, x.float(), y, tol=1e-6)
    assert rec.lambda_max[0] == pytest.approx(exact.lambda_max[0], rel=1e-4)


def test_warm_start_converges_in_fewer_products():
    model, x, y = small_problem(bn=True)
    cold = sharpness(model, F.cross_entropy, x, y, tol=1e-6, keep_vectors=True)
    warm = sharpness(model, F.cross_entropy, x, y, tol=1e-6, v0=cold.eigenvectors[:, 0])
    assert warm.lambda_max[0] == pytest.approx(cold.lambda_max[0], rel=1e-6)
    assert warm.iterations < cold.iterations


def test_leaves_no_trace():
    model, x, y = small_problem(bn=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):  # momentum buffers and BN running statistics are non-trivial
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    opt.zero_grad(set_to_none=False)
    F.cross_entropy(model(x), y).backward()
    model.eval()  # the flags come back as they were
    before = snapshot(model, opt)
    rec = sharpness(model, F.cross_entropy, x, y, k=2, trace_samples=3)
    assert np.isfinite(rec.lambda_max).all() and np.isfinite(rec.trace)
    assert_same_state(before, snapshot(model, opt))


def test_tiny_model_and_bad_arguments():
    A, _, eigenvalues = random_spd(2, seed=0)
    model = Quadratic(A, torch.ones(2, dtype=torch.float64))
    rec = sharpness(model, identity_loss, torch.zeros(1), torch.zeros(1), k=2)  # dense path
    np.testing.assert_allclose(rec.lambda_max, eigenvalues.flip(0).numpy(), rtol=1e-12)
    for bad in ({"k": 0}, {"k": 3}, {"trace_samples": -1}, {"tol": 1.5}):
        with pytest.raises(ValueError, match="sharpness"):
            sharpness(model, identity_loss, torch.zeros(1), torch.zeros(1), **bad)


def test_sharpness_probe_in_a_loop_records_what_a_direct_call_gives():
    model, x, y = small_problem(bn=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    probe = SharpnessProbe(every=2, trace_samples=2, tol=1e-10)
    loss_fn = probe.attach(model, opt, F.cross_entropy)
    expected = []
    for step in range(4):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        if step % 2 == 0:  # what the hook sees: theta_t, this batch, before the update
            expected.append(sharpness(copy.deepcopy(model), F.cross_entropy, x, y, tol=1e-10,
                                      trace_samples=2, seed=step))
        opt.step()
    assert [r.step for r in probe.records] == [0, 2]
    for got, want in zip(probe.records, expected):
        assert got.lambda_max == pytest.approx(want.lambda_max, rel=1e-8)
        assert got.trace == pytest.approx(want.trace, rel=1e-10)  # same Rademacher draws
        assert got.eigenvectors is None  # the warm start is kept by the probe, not the record
    probe.detach()
