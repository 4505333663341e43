"""The course experiments' models (mlp, mlp_bn, cnn, cnn_bn), dropout in them and in VGG-A,
and the probes' rule for random draws on them."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from landscape.errors import LandscapeError
from landscape.models import MODELS, build_model, is_stochastic, weight_layers
from landscape.probes import LandscapeProbe, along_gradient

from paper_util import assert_no_trace, snapshot  # noqa: F401  (sets one torch thread)

COURSE = ("mlp", "mlp_bn", "cnn", "cnn_bn")
# Parameter counts at width 1, as the README and models/course.py state them.
PARAMETERS = {"mlp": 1_841_162, "mlp_bn": 1_843_210, "cnn": 60_362, "cnn_bn": 60_554}


def images(n=8, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 3, 32, 32, generator=gen).to(dtype),
            torch.randint(0, 10, (n,), generator=gen))


def seeded(name, **kwargs):
    torch.manual_seed(0)
    return build_model(name, **kwargs)


@pytest.mark.parametrize("name", COURSE)
def test_course_model_shapes_and_sizes(name):
    model = build_model(name)
    assert sum(p.numel() for p in model.parameters()) == PARAMETERS[name]
    assert model(images()[0]).shape == (8, 10)
    assert MODELS[name].norm == ("batch" if name.endswith("_bn") else "none")
    bn = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    assert len(bn) == (2 if name.endswith("_bn") else 0)


def test_width_scales_hidden_sizes_and_channels():
    mlp, cnn = build_model("mlp", width=0.25), build_model("cnn_bn", width=0.5)
    assert [m.out_features for m in mlp.modules() if isinstance(m, nn.Linear)] == [128, 128, 10]
    assert [m.out_channels for m in cnn.modules() if isinstance(m, nn.Conv2d)] == [16, 32]
    assert cnn.classifier[1].in_features == 32 * 8 * 8
    assert cnn(images(2)[0]).shape == (2, 10)


@pytest.mark.parametrize("name", COURSE)
def test_dropout_and_bn_keep_the_layer_names_and_the_initial_weights(name):
    plain = seeded(name.removesuffix("_bn"))
    dropped = seeded(name, dropout=0.5)
    assert weight_layers(plain) == weight_layers(dropped)
    assert [n for n, _ in seeded(name).named_parameters()] == \
        [n for n, _ in dropped.named_parameters()]
    assert all(torch.equal(a, b) for a, b in zip(seeded(name).parameters(), dropped.parameters()))
    kind = nn.Dropout2d if name.startswith("cnn") else nn.Dropout
    assert sum(isinstance(m, kind) for m in dropped.modules()) == 2
    assert is_stochastic(dropped) and not is_stochastic(seeded(name))


@pytest.mark.parametrize("name", ["mlp_bn", "cnn", "vgg_a_bn"])
def test_dropout_is_off_in_eval_mode(name):
    """Eval mode: the dropout model computes what the same weights without dropout compute,
    every call; train mode: two calls draw two masks."""
    width = dict(width=0.125) if name.startswith("vgg") else {}
    dropped, plain = seeded(name, dropout=0.5, **width), seeded(name, **width)
    x, _ = images()
    dropped.eval(), plain.eval()
    assert torch.equal(dropped(x), dropped(x)) and torch.equal(dropped(x), plain(x))
    dropped.train()
    assert not torch.equal(dropped(x), dropped(x))


def test_vgg_dropout_goes_after_each_hidden_classifier_layer_and_zero_keeps_todays_names():
    assert [type(m).__name__ for m in build_model("vgg_a", width=0.125, dropout=0.3).classifier] \
        == ["Flatten", "Linear", "Identity", "ReLU", "Dropout", "Linear", "Identity", "ReLU",
            "Dropout", "Linear"]
    assert weight_layers(build_model("vgg_a", width=0.125, dropout=0.0))[-3:] == \
        ["classifier.1", "classifier.4", "classifier.7"]


def test_a_model_without_dropout_layers_refuses_a_rate():
    with pytest.raises(LandscapeError, match="no dropout layers"):
        build_model("dln", dropout=0.2)
    assert build_model("dln", dropout=0.0) is not None


# --- the probes' rule for random draws, on the course models --------------------------------


def _distance(a, b) -> float:
    return float(torch.sqrt(sum(((s - t) ** 2).sum() for s, t in zip(a, b))))


def direct_gradient(model, x, y, theta, state):
    """grad L(theta) by hand: a float64 deep copy (BN in train mode on its own buffers) given
    the parameters ``theta``, torch's generator set to ``state`` before the forward pass."""
    copy_ = copy.deepcopy(model).double().train()
    with torch.no_grad():
        for p, t in zip(copy_.parameters(), theta):
            p.copy_(t)
    torch.set_rng_state(state)
    loss = F.cross_entropy(copy_(x.double()), y)
    return torch.autograd.grad(loss, list(copy_.parameters()))


def direct_grad_diff(model, x, y, etas, entry):
    """||grad L(theta - eta g) - g|| and ||g||, every evaluation drawing from the probe's entry
    state (one set of draws for all points), parameters moved by plain tensor arithmetic."""
    theta = [p.detach().double() for p in model.parameters()]
    g = direct_gradient(model, x, y, theta, entry)
    diffs = [_distance(direct_gradient(model, x, y, [t - eta * gt for t, gt in zip(theta, g)],
                                       entry), g) for eta in etas]
    torch.set_rng_state(entry)
    return np.array(diffs), _distance(g, [torch.zeros_like(t) for t in g])


@pytest.mark.parametrize("name", ["mlp_bn", "cnn_bn"])
def test_the_probe_measures_course_models_with_one_set_of_dropout_draws(name):
    """g and every eta point see the same dropout masks, drawn from the state torch's generator
    had when the probe began, which it leaves as it was; the numbers equal a direct float64
    computation with those masks (a new mask per pass would give grad_diff ~ ||g|| at tiny eta)."""
    model = seeded(name, width=0.25, dropout=0.4).double()
    x, y = images(16, dtype=torch.float64)
    etas = [1e-6, 1e-3, 1e-1]
    entry = torch.get_rng_state()
    record = along_gradient(model, F.cross_entropy, x, y, etas, dtype=torch.float64)
    assert torch.equal(torch.get_rng_state(), entry)
    diffs, norm = direct_grad_diff(model, x, y, etas, entry)
    assert record.grad_norm == pytest.approx(norm, rel=1e-9)
    np.testing.assert_allclose(record.grad_diff, diffs, rtol=1e-6)
    # Another set of masks at the same theta moves the gradient far more than eta = 1e-6 does.
    theta = [p.detach() for p in model.parameters()]
    torch.rand(1)
    other_masks = _distance(direct_gradient(model, x, y, theta, torch.get_rng_state()),
                            direct_gradient(model, x, y, theta, entry))
    torch.set_rng_state(entry)
    assert record.grad_diff[0] < 0.05 * other_masks


@pytest.mark.parametrize("name", ["mlp", "cnn_bn"])
def test_probing_a_course_model_leaves_trainings_random_stream_untouched(name):
    """The sweep's probe (reuse_grad as on the CPU) on a dropout model: training draws the same
    masks and ends at the same weights as without a probe; the probe computes g itself
    (its own masks), so its records equal those of a probe told not to reuse the step's g."""
    batches = [images(16, seed=s) for s in range(3)]
    results = []
    for probe in (LandscapeProbe(every=2, reuse_grad=True), LandscapeProbe(every=2), None):
        model = seeded(name, width=0.25, dropout=0.3)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        loss_fn = F.cross_entropy if probe is None else probe.attach(model, opt, F.cross_entropy)
        torch.manual_seed(11)
        for step in range(4):
            x, y = batches[step % 3]
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
        results.append(([p.detach().clone() for p in model.parameters()], torch.rand(2), probe))
    (reused, after_reused, probe_reused), (fresh, _, probe_fresh), (plain, after_plain, _) = results
    assert all(torch.equal(a, b) for a, b in zip(reused, plain))
    assert all(torch.equal(a, b) for a, b in zip(fresh, plain))
    assert torch.equal(after_reused, after_plain)
    assert len(probe_reused.records) == len(probe_fresh.records) == 2
    for a, b in zip(probe_reused.records, probe_fresh.records):
        np.testing.assert_array_equal(a.grad_diff, b.grad_diff)
