"""Per-layer Hessian blocks against the dense Hessian, ranks against torch.linalg.matrix_rank,
gradient norms against autograd, and no trace."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from landscape.models import build_model
from landscape.probes import layer_curvature, layer_ranks, representation_ranks
from test_curvature import dense_hessian, small_problem
from test_probes import assert_same_state, snapshot
from test_spectrum import trained_small_problem


@pytest.mark.parametrize("bn", [False, True])
def test_blocks_equal_the_dense_hessian_blocks(bn):
    model, x, y = small_problem(bn)
    H, _ = dense_hessian(model, x, y)
    offsets, start = {}, 0
    for name, p in model.named_parameters():
        offsets[name] = (start, start + p.numel())
        start += p.numel()
    rec = layer_curvature(model, F.cross_entropy, x, y, trace_samples=200, tol=1e-10, seed=1)
    assert rec.layer == ("features.0", "classifier.1", "classifier.4")
    for i, layer in enumerate(rec.layer):
        lo, hi = offsets[f"{layer}.weight"][0], offsets[f"{layer}.bias"][1]
        block = H[lo:hi, lo:hi]
        assert rec.lambda_max[i] == pytest.approx(float(torch.linalg.eigvalsh(block)[-1]),
                                                  rel=1e-7)
        # Hutchinson within 4 of its exact standard errors: Var = 2 sum_{i != j} B_ij^2 / m
        off = block - torch.diag(torch.diagonal(block))
        sigma = math.sqrt(2 * float((off ** 2).sum()) / 200)
        assert abs(rec.trace[i] - float(torch.trace(block))) < 4 * sigma + 1e-9
        w = dict(model.named_parameters())[f"{layer}.weight"]
        assert rec.weight_norm_sq[i] == pytest.approx(float((w.detach() ** 2).sum()))
    assert rec.scale_invariant.tolist() == [bn, bn, False]
    np.testing.assert_allclose(rec.scaled_lambda, rec.lambda_max * rec.weight_norm_sq)


def test_ranks_and_gradient_norms_against_direct_computation():
    torch.manual_seed(0)
    model = build_model("mlp_bn", width=0.125, depth=3).double()
    x = torch.randn(24, 3, 32, 32, dtype=torch.float64)
    y = torch.randint(0, 10, (24,))
    reps = {}
    names = ["layers.1", "layers.5", "layers.9", "layers.13"]
    modules = dict(model.named_modules())
    hooks = [modules[n].register_forward_pre_hook(
        lambda m, a, n=n: reps.__setitem__(n, a[0].detach())) for n in names[1:]]
    model.train()
    loss = F.cross_entropy(model(x), y)
    for h in hooks:
        h.remove()
    reps["logits"] = model(x).detach()
    grads = torch.autograd.grad(loss, [modules[n].weight for n in names])
    rec = layer_ranks(model, F.cross_entropy, x, y)
    order = names[1:] + ["logits"]  # layer l's output is layer l+1's input; the last: logits
    for i, key in enumerate(order):
        matrix = reps[key].reshape(24, -1)
        assert rec.rank[i] == int(torch.linalg.matrix_rank(matrix))
        assert rec.grad_norm[i] == pytest.approx(float(torch.linalg.vector_norm(grads[i])),
                                                 rel=1e-10)
    assert rec.size.tolist() == [24, 24, 24, 10]  # min(batch, 64 hidden units; 10 logits)


def test_effective_rank_closed_forms():
    eye = torch.eye(6, dtype=torch.float64)
    assert representation_ranks(eye) == (6, pytest.approx(6.0))
    low = torch.ones(5, 1, dtype=torch.float64) @ torch.randn(1, 8, dtype=torch.float64)
    assert representation_ranks(low) == (1, pytest.approx(1.0))
    two = torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64))
    p = np.array([0.75, 0.25])
    assert representation_ranks(two)[1] == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    assert representation_ranks(torch.zeros(3, 4)) == (0, 0.0)


def test_collapsed_representations_without_bn_at_depth():
    """A deep plain MLP at Glorot init: later layers' effective rank falls below BN's."""
    x = torch.randn(64, 3, 32, 32)
    y = torch.randint(0, 10, (64,))
    deep = {}
    for name in ("mlp", "mlp_bn"):
        torch.manual_seed(0)
        deep[name] = layer_ranks(build_model(name, width=0.25, depth=12), F.cross_entropy, x, y)
    assert deep["mlp"].effective_rank[-2] < deep["mlp_bn"].effective_rank[-2]


def test_layer_probes_leave_no_trace():
    model, x, y, opt, before = trained_small_problem()
    layer_curvature(model, F.cross_entropy, x, y, trace_samples=2)
    layer_ranks(model, F.cross_entropy, x, y)
    assert_same_state(before, snapshot(model, opt))
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
