"""spectrum: SLQ against closed-form spectra, the dense Hessian of small networks, no trace."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from landscape.probes import (SpectrumSettings, hessian_batches, lanczos, slq, spectrum)
from test_curvature import flat_parameters, small_problem
from test_probes import assert_same_state, snapshot

OUTLIERS = (10.0, 25.0, 60.0)


def chosen_spectrum(n=600, seed=0):
    """A symmetric matrix with a bulk in [-0.5, 1.5] and three outliers, and its eigenpairs."""
    gen = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    bulk = torch.rand(n - len(OUTLIERS), generator=gen, dtype=torch.float64) * 2 - 0.5
    eigenvalues = torch.cat([bulk, torch.tensor(OUTLIERS, dtype=torch.float64)])
    return Q @ torch.diag(eigenvalues) @ Q.T, Q, eigenvalues


def test_quadrature_is_exact_for_polynomials_of_degree_below_2m():
    """sum_i tau_i theta_i^k = v^T A^k v / v^T v for k <= 2m - 1 (Gauss quadrature)."""
    A, _, _ = chosen_spectrum()
    v = torch.randn(len(A), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    run = lanczos(lambda x: A @ x, v, iterations=8)
    unit = v / torch.linalg.norm(v)
    for k in range(1, 16):
        exact = float(unit @ torch.linalg.matrix_power(A, k) @ unit)
        assert float(run.weights @ run.values ** k) == pytest.approx(exact, rel=1e-9)
    assert run.weights.sum() == pytest.approx(1.0, rel=1e-12)


def test_density_moments_equal_trace_moments_within_their_error():
    A, _, eigenvalues = chosen_spectrum()
    n, vectors = len(A), 40
    rec = slq(lambda x: A @ x, n, SpectrumSettings(iterations=30, vectors=vectors),
              torch.Generator().manual_seed(1))
    for k in (1, 2, 3):
        per_run = np.nansum(rec.ritz_weights * rec.ritz_values ** k, axis=1)
        stderr = per_run.std(ddof=1) / math.sqrt(vectors)
        exact = float((eigenvalues ** k).mean())
        assert abs(per_run.mean() - exact) < 4 * stderr, k
    assert rec.trace == pytest.approx(n * np.nansum(rec.ritz_weights * rec.ritz_values) / vectors)
    assert abs(rec.trace - float(eigenvalues.sum())) < 4 * rec.trace_stderr
    # the drawn density: integrates to 1 on its grid, sigma as PyHessian's or one grid step
    step = rec.grid[1] - rec.grid[0]
    assert rec.density.sum() * step == pytest.approx(1.0)
    width = np.nanmax(rec.ritz_values) - np.nanmin(rec.ritz_values)
    assert rec.sigma == pytest.approx(max(math.sqrt(1e-5 * width), step))


@pytest.mark.parametrize("reorthogonalize", [True, False])
def test_top_ritz_values_outliers_and_gradient_share(reorthogonalize):
    A, Q, eigenvalues = chosen_spectrum()
    g = 3 * Q[:, -1] + Q[:, -2] + 2 * Q[:, 0]  # 9/14 on lambda=60, 1/14 on 25, 4/14 in the bulk
    settings = SpectrumSettings(vectors=2, reorthogonalize=reorthogonalize)
    rec = slq(lambda x: A @ x, len(A), settings, torch.Generator().manual_seed(0), gradient=g)
    exact = eigenvalues.sort(descending=True).values.numpy()
    np.testing.assert_allclose(rec.top[:3], exact[:3], rtol=1e-10)
    assert rec.top[3] == pytest.approx(exact[3], rel=1e-3)  # the bulk's edge converges slower
    assert rec.outliers == 3 and list(rec.outlier_counts) == [3, 3]
    assert rec.bulk_edge == pytest.approx(exact[3], rel=1e-3)
    if reorthogonalize:
        np.testing.assert_allclose(rec.grad_fraction[:3], [9 / 14, 10 / 14, 10 / 14], rtol=1e-8)
        assert rec.grad_in_outliers == pytest.approx(10 / 14, rel=1e-8)
        assert rec.basis_bytes == 100 * len(A) * 8
    else:  # bounded memory: three vectors, no Ritz vectors
        assert np.isnan(rec.grad_fraction).all() and rec.basis_bytes == 3 * len(A) * 8


def test_no_outliers_in_a_continuous_bulk():
    A, Q, _ = chosen_spectrum()
    bulk = torch.rand(len(A), generator=torch.Generator().manual_seed(5),
                      dtype=torch.float64) ** 3 * 5
    B = Q @ torch.diag(bulk) @ Q.T
    rec = slq(lambda x: B @ x, len(B), SpectrumSettings(vectors=3),
              torch.Generator().manual_seed(2))
    assert list(rec.outlier_counts) == [0, 0, 0] and rec.grad_in_outliers == 0


def test_lanczos_stops_when_the_krylov_space_closes():
    A = torch.diag(torch.tensor([1.0, 2.0, 2.0, 5.0], dtype=torch.float64))
    rec = slq(lambda x: A @ x, 4, SpectrumSettings(iterations=100, top_k=4),
              torch.Generator().manual_seed(0))
    found = rec.ritz_values[0][np.isfinite(rec.ritz_values[0])]
    np.testing.assert_allclose(found, [1.0, 2.0, 5.0], rtol=1e-12)  # 2 twice: one Ritz value
    assert rec.hvps == 3 and rec.trace == pytest.approx(10.0)  # Rademacher: v^T D v = tr D


def dense_set_hessian(model, batches):
    """The dense Hessian of the mean of the set's batch losses, each batch in its modes."""
    model = copy.deepcopy(model)
    flat, unflat = flat_parameters(model)

    def loss(theta):
        params = unflat(theta)
        total = 0
        for b in batches.parts:
            modules = list(model.modules())
            for m, flag in zip(modules, b.inputs.training or [True] * len(modules)):
                m.training = flag
            buffers = {n: t.clone() for n, t in model.named_buffers()}
            out = functional_call(model, (params, buffers), b.inputs.args)
            total = total + b.weight * F.cross_entropy(out, b.targets)
        return total

    return torch.autograd.functional.hessian(loss, flat)


@pytest.mark.parametrize("bn,mode", [(False, "batch"), (True, "batch"), (True, "running")])
def test_small_network_set_matches_the_dense_hessian(bn, mode):
    model, x, y = small_problem(bn)
    model.train()
    with torch.no_grad():  # running statistics that differ from any batch's
        model(x * 2 + 1)
    batches = hessian_batches(model, x, y, batch_size=7, bn=mode)  # 7 + 7 + 6 samples
    assert len(batches.parts) == 3
    exact = torch.linalg.eigvalsh(dense_set_hessian(model, batches)).flip(0).numpy()
    rec = spectrum(model, F.cross_entropy, batches, None,
                   SpectrumSettings(iterations=120, vectors=2, top_k=5), seed=4)
    np.testing.assert_allclose(rec.top, exact[:5], rtol=1e-7)
    assert rec.lambda_min == pytest.approx(exact[-1], rel=1e-6)
    assert rec.samples == 20 and rec.bn == mode and rec.parameters == len(exact)
    assert rec.hvps == 240


def test_running_statistics_change_the_hessian_with_bn_only():
    for bn in (False, True):
        model, x, y = small_problem(bn)
        with torch.no_grad():
            model(x * 2 + 1)
        tops = [spectrum(model, F.cross_entropy, hessian_batches(model, x, y, 10, mode), None,
                         SpectrumSettings(iterations=60, top_k=1)).top[0]
                for mode in ("batch", "running")]
        assert (tops[0] == pytest.approx(tops[1], rel=1e-9)) == (not bn)


def trained_small_problem():
    """The BN network after two momentum steps (non-trivial momentum buffers and running
    statistics), in eval mode, and its snapshot: what a probe must leave as it was."""
    model, x, y = small_problem(bn=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    return model, x, y, opt, snapshot(model, opt)


def test_spectrum_leaves_no_trace():
    model, x, y, opt, before = trained_small_problem()
    rec = spectrum(model, F.cross_entropy, hessian_batches(model, x, y, 10, "running"), None,
                   SpectrumSettings(iterations=20))
    assert np.isfinite(rec.top).all() and math.isfinite(rec.loss)
    assert_same_state(before, snapshot(model, opt))


def test_bad_settings():
    model, x, y = small_problem(bn=False)
    for bad in ({"iterations": 0}, {"vectors": 1.5}, {"bulk_mass": 1.0}, {"sigma2": 0}):
        with pytest.raises(ValueError, match="spectrum"):
            spectrum(model, F.cross_entropy, x, y, SpectrumSettings(**bad))
    with pytest.raises(ValueError, match="bn must be"):
        hessian_batches(model, x, y, 10, "eval")
