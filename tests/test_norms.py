"""Noisy BatchNorm (Algorithm 1), lp batch normalization, layer and group norm."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from landscape.models import MODELS, build_model, is_stochastic
from landscape.models.norms import (NOISE_DEFAULTS, LpBatchNorm, NoiseInjection, draw_noise, group_count,
                             seed_noise)
from landscape.probes import along_gradient
from paper_util import assert_no_trace, snapshot

P = NOISE_DEFAULTS


def test_noise_has_the_stated_means_and_spreads():
    g = torch.Generator().manual_seed(0)
    n, c, h, w = 64, 16, 8, 8
    m, s, mu, sigma = draw_noise((n, c, h, w), g, P)
    assert m.shape == s.shape == (n, c, h, w)
    assert float(mu.min()) >= -P.n_mu and float(mu.max()) <= P.n_mu
    assert float(sigma.min()) >= 1.0 and float(sigma.max()) <= P.n_sigma
    # Per unit, over samples and positions (height and width are batch dimensions):
    per_unit = lambda t: t.transpose(0, 1).reshape(c, -1)  # noqa: E731
    torch.testing.assert_close(per_unit(m).mean(1), mu, atol=0.005, rtol=0)
    torch.testing.assert_close(per_unit(m).std(1), torch.full((c,), P.r_mu / math.sqrt(3)),
                               atol=0.003, rtol=0)
    assert float((per_unit(m) - mu[:, None]).abs().max()) <= P.r_mu + 1e-6
    torch.testing.assert_close(per_unit(s).mean(1), sigma, atol=0.005, rtol=0)
    torch.testing.assert_close(per_unit(s).std(1), torch.full((c,), P.r_sigma), atol=0.005, rtol=0)
    assert float(m[:, 0].std(dim=(1, 2)).min()) > 0  # varies over positions too
    # Across units and draws: mu ~ U(-0.5, 0.5), sigma ~ U(1, 1.25).
    mus, sigmas = zip(*[draw_noise((2, 500), g, P)[2:] for _ in range(20)])
    mus, sigmas = torch.cat(mus), torch.cat(sigmas)
    assert float(mus.mean()) == pytest.approx(0.0, abs=0.02)
    assert float(mus.std()) == pytest.approx(P.n_mu / math.sqrt(3), abs=0.01)
    assert float(sigmas.mean()) == pytest.approx((1 + P.n_sigma) / 2, abs=0.005)
    assert float(sigmas.std()) == pytest.approx((P.n_sigma - 1) / math.sqrt(12), abs=0.005)


def test_noise_module_applies_s_a_plus_m_in_training_only():
    layer = NoiseInjection(4)
    layer.noise_key.copy_(torch.tensor([7, 3]))
    a = torch.randn(32, 4)
    out_zero = layer(torch.zeros_like(a))  # = m
    layer.noise_key[1] -= 1  # replay the same draw
    out_one = layer(torch.ones_like(a))  # = s + m
    layer.noise_key[1] -= 1
    out = layer(a)
    torch.testing.assert_close(out, (out_one - out_zero) * a + out_zero)
    assert int(layer.noise_key[1]) == 4  # one draw per training forward
    layer.eval()
    assert layer(a) is a and int(layer.noise_key[1]) == 4  # eval: nothing injected, no draw


def test_noisy_models_are_reproducible_and_start_like_their_clean_twins():
    def build(name):
        torch.manual_seed(3)
        return build_model(name, width=0.0625)

    x = torch.randn(4, 3, 32, 32)
    a, b = build("vgg_a_noisy_bn"), build("vgg_a_noisy_bn")
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)  # same seed, same noise
    assert not torch.equal(a(x), b.eval()(x))  # the noise is there in training
    clean = build("vgg_a_bn")
    noisy_w = [p for n, p in a.named_parameters() if n.endswith("weight") and p.ndim > 1]
    clean_w = [p for n, p in clean.named_parameters() if n.endswith("weight") and p.ndim > 1]
    assert all(torch.equal(p, q) for p, q in zip(noisy_w, clean_w))  # noise draws no global RNG
    keys = [m.noise_key[0].item() for m in a.modules() if isinstance(m, NoiseInjection)]
    assert len(set(keys)) == len(keys) == 10  # 8 conv + 2 hidden linear layers, own streams
    assert isinstance(build("vgg_a_noise").features[1], NoiseInjection)


def test_landscape_probe_leaves_the_noise_stream_alone():
    torch.manual_seed(0)
    model = build_model("vgg_a_noisy_bn", width=0.0625)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    before = snapshot(model)
    along_gradient(model, F.cross_entropy, x, y, [0.05, 0.1])
    assert_no_trace(before, snapshot(model))


def test_noisy_model_is_probed_with_one_noise_draw():
    """The noise is keyed by a buffer every probe pass reads from the same clone: g and each
    eta point see one draw, so grad_diff is ~ eta ||H g|| (linear in eta), not noise."""
    torch.manual_seed(0)
    model = build_model("vgg_a_noisy_bn", width=0.0625).double()
    x, y = torch.randn(8, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (8,))
    rec = along_gradient(model, F.cross_entropy, x, y, [1e-7, 1e-6])
    assert rec.grad_diff[0] <= 1e-3 * rec.grad_norm
    assert rec.grad_diff[1] / rec.grad_diff[0] == pytest.approx(10.0, rel=1e-2)


@pytest.mark.parametrize("random_module", [nn.Dropout(0.5), nn.Dropout1d(0.2), nn.Dropout2d(0.1),
                                           nn.AlphaDropout(0.2), nn.FeatureAlphaDropout(0.1),
                                           nn.RReLU(), NoiseInjection(4)],
                         ids=lambda m: type(m).__name__)
def test_is_stochastic_knows_the_modules_that_draw_random_numbers(random_module):
    assert is_stochastic(nn.Sequential(nn.Linear(4, 4), random_module))
    assert not is_stochastic(nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.0), nn.ReLU()))
    assert is_stochastic(build_model("vgg_a_noisy_bn", width=0.0625))
    assert not is_stochastic(build_model("vgg_a_bn", width=0.0625))


def lp_direct(x: np.ndarray, p: float, eps: float = 1e-5) -> np.ndarray:
    """The documented formula, unit by unit, in float64 loops."""
    out = np.empty_like(x)
    for c in range(x.shape[1]):
        v = x[:, c]
        scale = np.abs(v).max() + eps if math.isinf(p) else (np.mean(np.abs(v) ** p) + eps) ** (1 / p)
        out[:, c] = (v - v.mean()) / scale
    return out


@pytest.mark.parametrize("p", [1, 2, math.inf])
@pytest.mark.parametrize("shape", [(16, 5), (8, 3, 4, 4)])
def test_lp_batchnorm_matches_the_direct_formula(p, shape):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64) * 3 + 1
    layer = LpBatchNorm(shape[1], p).double()
    with torch.no_grad():
        layer.weight.copy_(torch.linspace(0.5, 2, shape[1]))
        layer.bias.copy_(torch.linspace(-1, 1, shape[1]))
    out = layer(x).detach().numpy()
    expected = lp_direct(x.numpy(), p)
    gamma, beta = layer.weight.detach().numpy(), layer.bias.detach().numpy()
    per_unit = (1, -1) + (1,) * (len(shape) - 2)
    np.testing.assert_allclose(out, expected * gamma.reshape(per_unit) + beta.reshape(per_unit),
                               rtol=1e-10, atol=1e-12)
    # Eval mode uses the running averages (momentum 0.1 from mean 0, scale 1).
    layer.eval()
    dims = tuple(i for i in range(len(shape)) if i != 1)
    mean = 0.1 * x.mean(dims)
    xt = x.transpose(0, 1).reshape(shape[1], -1)
    scale = (xt.abs().amax(1) + 1e-5) if math.isinf(p) else (xt.abs().pow(p).mean(1) + 1e-5) ** (1 / p)
    torch.testing.assert_close(layer.running_mean, mean)
    torch.testing.assert_close(layer.running_scale, 0.9 + 0.1 * scale)


def test_l2_on_zero_mean_input_scales_like_batchnorm():
    torch.manual_seed(0)
    x = torch.randn(32, 6, 5, 5)
    x = x - x.mean(dim=(0, 2, 3), keepdim=True)  # zero batch mean per channel
    bn, l2 = nn.BatchNorm2d(6), LpBatchNorm(6, 2)
    torch.testing.assert_close(l2(x), bn(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["vgg_a_l1", "vgg_a_l2", "vgg_a_linf", "vgg_a_ln", "vgg_a_gn",
                                  "vgg_a_noise"])
def test_every_new_model_builds_trains_and_evaluates(name):
    torch.manual_seed(0)
    model = build_model(name, width=0.0625)
    assert MODELS[name].norm in ("l1", "l2", "linf", "layer", "group", "noise")
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    F.cross_entropy(model(x), y).backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    assert torch.isfinite(model(x)).all()


def test_group_count():
    assert [group_count(c) for c in (16, 64, 128, 512, 3)] == [8, 32, 32, 32, 1]


def test_seed_noise_accepts_any_64_bit_seed():
    model = seed_noise(nn.Sequential(NoiseInjection(2)), 2 ** 63 - 1)
    assert model(torch.zeros(2, 2)).shape == (2, 2)
