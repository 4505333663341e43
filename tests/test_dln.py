"""Deep linear network: shapes, loss, the closed-form landscape probe, and training by GD."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from landscape.cli import main
from landscape.data.gaussian import load_gaussian_linear
from landscape.models.dln import DeepLinear
from landscape.train.tasks import dln_loss
from landscape.models import build_model
from landscape.probes import along_gradient
from paper_util import assert_no_trace, snapshot


def test_shapes_and_data():
    data = load_gaussian_linear()
    assert data.x_train.shape == data.y_train.shape == (1000, 10)
    assert data.x_test.shape == (1000, 10) and data.a.shape == (10, 10)
    torch.testing.assert_close(data.y_train, data.x_train @ data.a.T)
    assert torch.equal(load_gaussian_linear().a, data.a)  # the same data every time
    plain, bn = build_model("dln"), build_model("dln_bn")
    linears = [m for m in plain.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 25 and all(m.weight.shape == (10, 10) and m.bias is None for m in linears)
    assert sum(isinstance(m, nn.BatchNorm1d) for m in bn.modules()) == 24
    assert plain(data.x_train).shape == bn(data.x_train).shape == (1000, 10)


def test_loss_is_the_frobenius_norm_of_the_product_error():
    torch.manual_seed(0)
    model, data = DeepLinear(), load_gaussian_linear()
    product = torch.eye(10)
    with torch.no_grad():
        for m in model.layers:
            product = m.weight @ product
    x = data.x_train.double()
    expected = torch.linalg.matrix_norm(product.double() @ x.T - data.a.double() @ x.T) ** 2
    assert float(dln_loss(model(data.x_train), data.y_train).detach()) == pytest.approx(float(expected), rel=1e-4)


def test_landscape_probe_closed_form_on_two_layers():
    torch.manual_seed(0)
    model = DeepLinear(dim=3, depth=2).double()
    x = torch.randn(7, 3, dtype=torch.float64)
    y = x @ torch.randn(3, 3, dtype=torch.float64).T
    etas = [0.001, 0.01]
    before = snapshot(model)
    rec = along_gradient(model, dln_loss, x, y, etas)
    assert_no_trace(before, snapshot(model))

    W1, W2 = (m.weight.detach().numpy() for m in model.layers)
    X, Y = x.numpy(), y.numpy()

    def loss_grads(W1, W2):
        R = X @ W1.T @ W2.T - Y  # (n, d) residuals
        return (R ** 2).sum(), 2 * W2.T @ R.T @ X, 2 * R.T @ (X @ W1.T)

    L0, g1, g2 = loss_grads(W1, W2)
    assert rec.loss_at_theta == pytest.approx(L0, rel=1e-12)
    assert rec.grad_norm == pytest.approx(math.sqrt((g1 ** 2).sum() + (g2 ** 2).sum()), rel=1e-12)
    for i, eta in enumerate(etas):
        L, h1, h2 = loss_grads(W1 - eta * g1, W2 - eta * g2)
        assert rec.loss[i] == pytest.approx(L, rel=1e-10)
        diff = math.sqrt(((h1 - g1) ** 2).sum() + ((h2 - g2) ** 2).sum())
        assert rec.grad_diff[i] == pytest.approx(diff, rel=1e-10)


def test_cli_trains_the_dln_by_gradient_descent(tmp_path):
    out = tmp_path / "dln.h5"
    rc = main(["run", "--models", "dln,dln_bn", "--dataset", "gaussian-linear", "--batch-size",
               "1000", "--lrs", "1e-6", "--steps", "120", "--probe-every", "50", "--etas",
               "0.01,0.1,1,10,30", "--ics-every", "60", "--ics-layers", "9,17", "--out", str(out)])
    assert rc == 0
    with h5py.File(out) as f:
        for name in ("dln-lr1e-06-seed0", "dln_bn-lr1e-06-seed0"):
            run = f[f"runs/{name}"]
            loss = run["steps/loss"][:]
            assert len(loss) == 120 and loss[-1] < 0.8 * loss[0]  # GD at 1e-6 trains
            assert run["probe/eta"][:] == pytest.approx(1e-6 * np.array([0.01, 0.1, 1, 10, 30]))
            assert list(run["probe/step"][:]) == [0, 50, 100]
            assert run["epochs/epoch"].shape == (2,)  # an epoch = 100 GD steps
            assert np.isnan(run["epochs/train_acc"][:]).all() and np.isnan(run["epochs/test_acc"][:]).all()
            assert np.isfinite(run["epochs/test_loss"][:]).all()
            assert list(run["ics/layer_index"][:]) == [9, 17] and run["ics/l2"].shape == (2, 2)


@pytest.mark.parametrize("args, message", [
    (["--models", "dln", "--dataset", "gaussian-linear"], "pass --batch-size 1000"),
    (["--models", "dln", "--dataset", "cifar10-mini"], "needs --dataset gaussian-linear"),
    (["--models", "vgg_a", "--dataset", "gaussian-linear", "--batch-size", "1000"],
     "does not train on --dataset gaussian-linear"),
    (["--models", "dln", "--dataset", "gaussian-linear", "--batch-size", "1000", "--augment"],
     "--augment does not apply"),
])
def test_bad_dln_settings_are_one_line_errors(tmp_path, capsys, args, message):
    out = tmp_path / "x.h5"
    assert main(["run", *args, "--steps", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not out.exists()


def test_dln_probes_in_float64_by_default_and_records_it(tmp_path):
    """The DLN's probe defaults to float64 (float32 inflated its beta_eff at the saddle);
    --probe-dtype overrides it; the run records which one it used."""
    for args, expected in (([], "float64"), (["--probe-dtype", "float32"], "float32")):
        out = tmp_path / f"dln-{expected}.h5"
        assert main(["run", "--models", "dln", "--dataset", "gaussian-linear", "--batch-size",
                     "1000", "--lrs", "1e-6", "--steps", "2", "--probe-every", "1",
                     "--out", str(out)] + args) == 0
        with h5py.File(out) as f:
            assert f["runs/dln-lr1e-06-seed0"].attrs["probe_dtype"] == expected


def test_probe_dtype_is_checked(tmp_path, capsys):
    out = tmp_path / "x.h5"
    assert main(["run", "--dataset", "cifar10-mini", "--probe-dtype", "float16",
                 "--out", str(out)]) == 2
    assert main(["run", "--dataset", "cifar10-mini", "--probe-dtype", "float64", "--grid",
                 "streams", "--device", "cpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "float16" in err[0] and "float32 probes in CUDA graphs" in err[1]
    assert not out.exists()
