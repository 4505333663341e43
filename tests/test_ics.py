"""Internal covariate shift (Definition 2.1): closed form, any optimizer, no trace, CLI."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from landscape.cli import main
from landscape.probes.ics import internal_covariate_shift, optimizer_update
from landscape.probes.hooks import ICSProbe
from landscape.models.layers import default_ics_layers, resolve_layers, weight_layers
from landscape.models import build_model
from landscape.errors import LandscapeError
from paper_util import assert_no_trace, snapshot, tiny_step


def half_sq(out, y):
    return 0.5 * (out - y).pow(2).sum()


def two_layer(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4, bias=False), nn.Linear(4, 2, bias=False)).double()


def test_ics_closed_form_two_layer_linear():
    model = two_layer()
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    lr = 0.1
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    opt.zero_grad()
    half_sq(model(x), y).backward()
    rec = internal_covariate_shift(model, half_sq, x, y, opt, ["0", "1"])

    W1, W2 = model[0].weight.detach().numpy(), model[1].weight.detach().numpy()
    X, Y = x.numpy().T, y.numpy().T  # columns are samples
    R = W2 @ W1 @ X - Y
    G = R @ (W1 @ X).T  # dL/dW2
    W1_new = W1 - lr * (W2.T @ R @ X.T)  # layer 1 takes its SGD step
    R_new = W2 @ W1_new @ X - Y
    G_new = R_new @ (W1_new @ X).T
    assert rec.layers == ["0", "1"]
    # Layer 1 has no earlier layers: G' = G.
    assert rec.l2[0] == pytest.approx(0.0, abs=1e-12) and rec.cosine[0] == pytest.approx(1.0)
    assert rec.l2[1] == pytest.approx(np.linalg.norm(G - G_new), rel=1e-10)
    cos = (G * G_new).sum() / (np.linalg.norm(G) * np.linalg.norm(G_new))
    assert rec.cosine[1] == pytest.approx(cos, rel=1e-10)
    assert rec.grad_norm[1] == pytest.approx(np.linalg.norm(G), rel=1e-10)


@pytest.mark.parametrize("make", [
    lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-3, nesterov=True),
    lambda ps: torch.optim.Adam(ps, lr=1e-2),
    lambda ps: torch.optim.RMSprop(ps, lr=1e-3, momentum=0.5),
], ids=["sgd-nesterov", "adam", "rmsprop"])
def test_dry_run_update_matches_the_real_step(make):
    model = two_layer()
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    opt = make(model.parameters())
    tiny_step(model, opt, half_sq, x, y, steps=2)  # optimizer state exists, grads in place
    before = snapshot(model, opt)
    delta = optimizer_update(model, opt)
    assert_no_trace(before, snapshot(model, opt))
    old = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach() - old[n], delta[n], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", ["vgg_a_bn", "vgg_a_noisy_bn"])
def test_ics_leaves_no_trace(name):
    torch.manual_seed(0)
    model = build_model(name, width=0.0625)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    tiny_step(model, opt, F.cross_entropy, x, y, steps=1)
    before = snapshot(model, opt)
    layers = resolve_layers(model, None, default_ics_layers(len(weight_layers(model))))
    rec = internal_covariate_shift(model, F.cross_entropy, x, y, opt, layers)
    assert_no_trace(before, snapshot(model, opt))
    assert rec.layers == ["features.15", "classifier.4"]  # #5 and #10 of VGG-A
    assert np.all(np.isfinite(rec.l2)) and np.all(rec.l2 > 0)
    assert np.all(np.abs(rec.cosine) <= 1 + 1e-9)


def test_ics_probe_hook_measures_every_k_steps():
    model = two_layer()
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    probe = ICSProbe(every=2, layers=["0", "1"])
    loss_fn = probe.attach(model, opt, half_sq)
    for _ in range(5):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    probe.detach()
    assert [r.step for r in probe.records] == [0, 2, 4]
    assert probe.records[0].layers == ["0", "1"]


def test_layer_selection_by_name_index_and_errors():
    model = build_model("vgg_a", width=0.0625)
    names = weight_layers(model)
    assert len(names) == 11
    assert resolve_layers(model, ["5", "#10", "features.0", 5]) == [names[4], names[9], names[0]]
    with pytest.raises(LandscapeError, match="unknown layer 'features.1'"):
        resolve_layers(model, ["features.1"])
    with pytest.raises(LandscapeError, match="out of range"):
        resolve_layers(model, ["12"])
    assert default_ics_layers(25) == [12, 24]


def test_cli_ics_run_writes_the_group(tmp_path):
    out = tmp_path / "ics.h5"
    rc = main(["run", "--models", "vgg_a,vgg_a_bn", "--dataset", "cifar10-mini", "--width",
               "0.0625", "--steps", "3", "--probe-every", "10", "--ics-every", "2",
               "--ics-layers", "5,classifier.4", "--device", "cpu", "--out", str(out)])
    assert rc == 0
    with h5py.File(out) as f:
        for run in ("vgg_a-lr0.1-seed0", "vgg_a_bn-lr0.1-seed0"):
            g = f[f"runs/{run}/ics"]
            assert [s.decode() for s in g["layer"][:]] == ["features.15", "classifier.4"]
            assert list(g["layer_index"][:]) == [5, 10]
            assert list(g["step"][:]) == [0, 2]
            assert g["l2"].shape == g["cosine"].shape == g["grad_norm"].shape == (2, 2)


def test_cli_unknown_ics_layer_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "bad.h5"
    rc = main(["run", "--models", "vgg_a", "--dataset", "cifar10-mini", "--steps", "1",
               "--ics-every", "1", "--ics-layers", "features.99", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    assert err.startswith("error: --ics-layers: unknown layer 'features.99'") and err.count("\n") == 1


def test_ics_layers_without_ics_every_is_an_error(tmp_path, capsys):
    out = tmp_path / "bad.h5"
    assert main(["run", "--models", "vgg_a", "--dataset", "cifar10-mini", "--steps", "1",
                 "--ics-layers", "5", "--out", str(out)]) == 2
    assert "add --ics-every N" in capsys.readouterr().err and not out.exists()


def test_ics_of_a_dropout_model_sees_one_mask():
    """G and G' are taken with the same dropout mask (the generator's at the probe's entry):
    a zero update gives ICS = 0 exactly, a real one the direct fixed-mask value. (Before: each
    pass drew its own mask, and ICS measured mask noise.)"""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3)).double()
    x, y = torch.randn(16, 6, dtype=torch.float64), torch.randint(0, 3, (16,))
    for lr in (0.0, 0.1):
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        tiny_step(model, opt, F.cross_entropy, x, y, steps=0)  # .grad with training's own mask
        entry = torch.get_rng_state()
        rec = internal_covariate_shift(model, F.cross_entropy, x, y, opt, ["3"])
        assert torch.equal(torch.get_rng_state(), entry)  # so the next draw is the probe's
        mask = F.dropout(torch.ones(16, 8, dtype=torch.float64), 0.5, training=True)

        w1, b1, w2, b2 = (p.detach().clone() for p in model.parameters())
        w2.requires_grad_(True)
        moved = [p.detach() - lr * p.grad for p in (model[0].weight, model[0].bias)]

        def grad_w2(w, b):
            loss = F.cross_entropy((F.relu(x @ w.T + b) * mask) @ w2.T + b2, y)
            return torch.autograd.grad(loss, w2)[0]

        G, G_shifted = grad_w2(w1, b1), grad_w2(*moved)
        if lr == 0.0:
            assert rec.l2[0] == 0.0 and rec.cosine[0] == pytest.approx(1.0, rel=1e-15)
        else:
            assert rec.l2[0] == pytest.approx(float((G - G_shifted).norm()), rel=1e-10)
            assert rec.l2[0] > 0
        assert rec.grad_norm[0] == pytest.approx(float(G.norm()), rel=1e-12)
