"""Scale invariance of the weights before a normalization, and WeightStats against direct math."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from landscape.models import NORMALIZATION_TYPES, normalized_layers, vgg_a, weight_layers
from landscape.probes import WeightStats, update_angle
from test_probes import small_batch


def loss_of(model, x, y):
    return F.cross_entropy(model.train()(x), y)


def loss_value(model, x, y):
    """The loss as a float, without a graph (float() of a grad-requiring tensor warns)."""
    with torch.no_grad():
        return float(loss_of(model, x, y))


@pytest.mark.parametrize("norm", ["batch", "noisy_batch", "layer", "group", "l1", "linf"])
def test_weights_before_a_normalization_are_scale_invariant(norm):
    torch.manual_seed(0)
    model = vgg_a(width=0.125, norm=norm).double()
    for m in model.modules():  # exact invariance: the eps added to the scale statistic ~ off
        if isinstance(m, NORMALIZATION_TYPES):
            m.eps = 1e-30
    x, y = small_batch(16)
    x = x.double()
    chosen = normalized_layers(model)
    assert chosen == weight_layers(model)[:-1]  # every hidden layer; not the classifier
    pristine = copy.deepcopy(model)  # noisy BN's draw counter is a buffer: same noise each pass
    loss = loss_of(model, x, y)
    modules = dict(model.named_modules())
    weights = [modules[n].weight for n in chosen]
    grads = [g.detach() for g in torch.autograd.grad(loss, list(model.parameters()))]
    loss = float(loss.detach())
    scale = float(torch.sqrt(sum((g ** 2).sum() for g in grads)))  # ||grad L||, all parameters
    by_param = dict(zip([p for p in model.parameters()], grads))
    for name, w in zip(chosen, weights):
        # <grad_w L, w> = 0 and L(3 w) = L(w), up to float64 rounding.
        g = by_param[w]
        assert abs(float((g * w.detach()).sum())) < 1e-10 * scale * float(w.detach().norm()), name
        scaled = copy.deepcopy(pristine)
        with torch.no_grad():
            dict(scaled.named_modules())[name].weight.mul_(3.0)
        assert loss_value(scaled, x, y) == pytest.approx(loss, rel=1e-12), name
    # The classifier's weight is not: scaling it changes the loss.
    with torch.no_grad():
        dict(pristine.named_modules())[weight_layers(model)[-1]].weight.mul_(3.0)
    assert abs(loss_value(pristine, x, y) - loss) > 1e-3


def test_no_normalization_no_scale_invariant_weights():
    assert normalized_layers(vgg_a(width=0.0625, norm="none")) == []
    assert normalized_layers(vgg_a(width=0.0625, norm="noise")) == []


def test_weight_stats_match_direct_computation():
    torch.manual_seed(0)
    model = vgg_a(width=0.0625, norm="batch")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    stats = WeightStats(model).attach(opt)
    assert stats.scale_invariant.tolist() == [True] * 10 + [False]
    expected = {f: [] for f in ("norm", "effective_lr", "effective_grad_norm", "angular_update")}
    for step in range(3):
        x, y = small_batch(8, seed=step)
        opt.zero_grad()
        loss_of(model, x, y).backward()
        before = [m.weight.detach().double().clone() for m in model.modules()
                  if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        grads = [m.weight.grad.double() for m in model.modules()
                 if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        opt.step()
        after = [m.weight.detach().double() for m in model.modules()
                 if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        norms = [float(w.norm()) for w in before]
        expected["norm"].append(norms)
        expected["effective_lr"].append([0.05 / n ** 2 for n in norms])
        expected["effective_grad_norm"].append([n * float(g.norm()) for n, g in zip(norms, grads)])
        expected["angular_update"].append([
            math.acos(min(1.0, float((a * b).sum() / (a.norm() * b.norm()))))
            for a, b in zip(before, after)])
    got = stats.pop()
    for field, rows in expected.items():
        assert got[field].shape == (3, 11)
        np.testing.assert_allclose(got[field], np.asarray(rows), rtol=2e-4, err_msg=field)
    assert (got["angular_update"] > 0).all()
    assert stats.pop()["norm"].shape == (0, 11)
    stats.detach()
    opt.step()
    assert stats.pop()["norm"].shape == (0, 11)  # detached: nothing recorded


@pytest.mark.parametrize("angle", [1e-6, 1e-4, 1e-2, 0.5, 2.0])
@pytest.mark.parametrize("growth", [0.0, 1e-3])
def test_update_angle_from_float32_norms(angle, growth):
    """Exact in exact arithmetic; from float32 norms the perpendicular part is a difference,
    so the absolute error is about 1e-3 ||d|| / ||w|| rad (tiny next to a step's angle unless
    the step is almost purely radial)."""
    w = torch.tensor([3.0, 0.0, 0.0])
    new = 3.0 * (1 + growth) * torch.tensor([math.cos(angle), math.sin(angle), 0.0])
    d = float(torch.tensor([3.0 * (1 + growth) * math.cos(angle) - 3.0,
                            3.0 * (1 + growth) * math.sin(angle), 0.0]).norm())
    got = update_angle(w.norm().view(1), new.norm().view(1), (new - w).norm().view(1))
    assert abs(float(got) - angle) <= 1e-3 * d / 3.0 + 1e-6 * angle
