"""The landscape probe's gradient difference split by layer, against a direct computation."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from landscape.models import vgg_a
from landscape.probes import along_gradient, parameter_layers
from test_probes import small_batch


def direct_by_layer(model, x, y, eta):
    """||grad_l L(theta - eta g) - g_l|| and ||g_l|| per module, by deep copies in float64."""
    base = copy.deepcopy(model).double().train()
    F.cross_entropy(base(x.double()), y).backward()
    moved = copy.deepcopy(base)
    with torch.no_grad():
        for p, q in zip(moved.parameters(), base.parameters()):
            p -= eta * q.grad
    moved.zero_grad()
    F.cross_entropy(moved(x.double()), y).backward()
    diff, norm = {}, {}
    for (name, p), q in zip(moved.named_parameters(), base.parameters()):
        owner = name.rpartition(".")[0]
        diff[owner] = diff.get(owner, 0.0) + float(((p.grad - q.grad) ** 2).sum())
        norm[owner] = norm.get(owner, 0.0) + float((q.grad ** 2).sum())
    return ({k: v ** 0.5 for k, v in diff.items()}, {k: v ** 0.5 for k, v in norm.items()})


@pytest.mark.parametrize("norm", ["none", "batch"])
@pytest.mark.parametrize("points", ["sequential", "vmap"])
def test_layer_split_matches_direct_computation_and_sums_to_the_total(norm, points):
    torch.manual_seed(0)
    model = vgg_a(width=0.0625, norm=norm).double()
    x, y = small_batch()
    etas = [0.05, 0.2]
    rec = along_gradient(model, F.cross_entropy, x.double(), y, etas, points=points)
    expected_layers = [n for n, m in model.named_modules()
                       if any(True for _ in m.parameters(recurse=False))]
    assert list(rec.layer) == expected_layers  # conv, BN and linear modules, forward order
    assert rec.grad_diff_layer.shape == (2, len(expected_layers))
    # The split is exact: squares over layers add up to grad_diff^2 and ||g||^2.
    np.testing.assert_allclose((rec.grad_diff_layer ** 2).sum(1), rec.grad_diff ** 2, rtol=1e-12)
    assert (rec.grad_norm_layer ** 2).sum() == pytest.approx(rec.grad_norm ** 2, rel=1e-12)
    for i, eta in enumerate(etas):
        diff, g_norm = direct_by_layer(model, x, y, eta)
        np.testing.assert_allclose(rec.grad_diff_layer[i], [diff[n] for n in rec.layer],
                                   rtol=1e-7, atol=1e-14)
        np.testing.assert_allclose(rec.grad_norm_layer, [g_norm[n] for n in rec.layer],
                                   rtol=1e-9, atol=1e-14)


def test_parameter_layers_groups_by_owning_module():
    layers, index = parameter_layers(["a.0.weight", "a.0.bias", "a.1.weight", "theta"])
    assert layers == ["a.0", "a.1", "theta"] and index.tolist() == [0, 0, 1, 2]
