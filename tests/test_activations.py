"""Activation distributions: the recorded statistics, the pre-activation, no trace, storage."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from landscape.probes.activations import DEFAULT_BIN_EDGES, activation_stats
from landscape.cli import main
from landscape.probes.hooks import ActivationProbe
from landscape.models.layers import resolve_layers
from landscape.models import build_model
from paper_util import assert_no_trace, snapshot


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 50), nn.BatchNorm1d(50), nn.ReLU(inplace=True),
                         nn.Linear(50, 3))


def test_statistics_of_the_preactivation_against_a_direct_computation():
    model = small_net()
    with torch.no_grad():
        model[3].weight.mul_(100)  # the last layer's outputs fall far outside the bins
    x = torch.randn(64, 6)
    before = snapshot(model)
    rec = activation_stats(model, x, ["0", "3"])
    assert_no_trace(before, snapshot(model))
    assert rec.layers == ["0", "3"] and rec.hist.shape == (2, len(DEFAULT_BIN_EDGES) - 1)
    bn_out = nn.functional.batch_norm(model[0](x), None, None, training=True).detach()
    assert rec.mean[0] == pytest.approx(float(bn_out.mean()), abs=1e-6)  # BN output, pre-ReLU
    assert rec.std[0] == pytest.approx(float(bn_out.std(unbiased=False)), rel=1e-4)
    counts, _ = np.histogram(np.clip(bn_out.numpy(), -10, 10 - 1e-9), DEFAULT_BIN_EDGES)
    np.testing.assert_allclose(rec.hist[0], counts / bn_out.numel(), atol=1e-12)
    np.testing.assert_allclose(rec.hist.sum(1), 1.0)
    out = model(x).detach()  # train-mode output of the last layer: mostly beyond +-10
    end_bins = rec.hist[1, 0] + rec.hist[1, -1]
    assert end_bins == pytest.approx(float(((out < -9.75) | (out >= 9.75)).float().mean()))
    assert end_bins > 0.5


def test_in_place_relu_does_not_hide_negative_preactivations():
    torch.manual_seed(0)
    model = build_model("vgg_a", width=0.0625)  # conv -> Identity -> ReLU(inplace)
    layers = resolve_layers(model, [1, 11])
    rec = activation_stats(model, torch.randn(4, 3, 32, 32), layers)
    assert layers == ["features.0", "classifier.7"]
    assert rec.hist[0, :40].sum() > 0.2  # mass below zero: measured before the ReLU


def test_activation_probe_hook_and_cli_storage(tmp_path):
    model = small_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = ActivationProbe(every=3, layers=["0"])
    loss_fn = probe.attach(model, opt, nn.functional.cross_entropy)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    for _ in range(4):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    probe.detach()
    assert [r.step for r in probe.records] == [0, 3]

    out = tmp_path / "act.h5"
    assert main(["run", "--models", "vgg_a_noisy_bn", "--dataset", "cifar10-mini", "--width",
                 "0.0625", "--steps", "3", "--probe-every", "10", "--activations-every", "2",
                 "--activation-layers", "3,11", "--out", str(out)]) == 0
    with h5py.File(out) as f:
        g = f["runs/vgg_a_noisy_bn-lr0.1-seed0/activations"]
        assert [s.decode() for s in g["layer"][:]] == ["features.8", "classifier.7"]
        assert list(g["step"][:]) == [0, 2]
        assert g["mean"].shape == g["std"].shape == (2, 2)
        assert g["hist"].shape == (2, 2, 80) and g["bin_edges"].shape == (81,)
        np.testing.assert_allclose(g["hist"][:].sum(-1), 1.0)
