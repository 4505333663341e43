"""Residual networks (``models.resnet``) and Ghost BatchNorm (``models.norms.GhostBatchNorm``):
shapes and parameter counts against He et al. and a count by hand, SkipInit's identity at
init, Ghost BN against BatchNorm applied to each sub-batch by hand, the probe on a ResNet
against the direct float64 reference and leaving no trace, and a ResNet sweep's batched grid
equal to its sequential runs."""

from __future__ import annotations

import copy

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from landscape.models import (MODELS, NORMS, GhostBatchNorm, build_model, normalized_layers,
                              weight_layers)
from landscape.models.norms import NORM_SUFFIXES
from landscape.models.resnet import RESNET_FAMILIES
from landscape.probes import along_gradient
from landscape.report.summary import model_label
from test_probes import assert_same_state, slow_along_gradient, small_batch, snapshot


def cifar_count(n: int, norm_params: bool = True, skip_init: bool = False) -> int:
    """ResNet-(6n+2) parameters by hand: 3x3 convs without bias, 2 per channel for each BN,
    option-A shortcuts (none), a 64 -> 10 linear layer; or, unnormalized, biased convs and one
    SkipInit scalar per block."""
    convs = [(3, 16)] + [(16, 16)] * 2 * n + [(16, 32)] + [(32, 32)] * (2 * n - 1) \
        + [(32, 64)] + [(64, 64)] * (2 * n - 1)
    weights = sum(9 * cin * cout for cin, cout in convs)
    per_channel = sum(cout for _, cout in convs)  # BN's gamma and beta, or a conv's bias
    extra = 2 * per_channel if norm_params else per_channel + (3 * n if skip_init else 0)
    return weights + extra + 64 * 10 + 10


@pytest.mark.parametrize("family,n,paper", [("resnet20", 3, 0.27), ("resnet32", 5, 0.46),
                                            ("resnet56", 9, 0.85)])
def test_cifar_resnets_have_the_papers_depth_and_parameters(family, n, paper):
    with torch.device("meta"):
        bn, plain = build_model(f"{family}_bn"), build_model(family)
    count = sum(p.numel() for p in bn.parameters())
    assert count == cifar_count(n) and round(count / 1e6, 2) == paper  # He et al., Table 6
    assert sum(p.numel() for p in plain.parameters()) == cifar_count(n, False, skip_init=True)
    assert len(weight_layers(bn)) == 6 * n + 2
    assert len(normalized_layers(bn)) == 6 * n + 1  # every conv; not the classifier


def test_resnet18_is_the_cifar_form_with_projection_shortcuts():
    model = build_model("resnet18_bn")
    assert sum(p.numel() for p in model.parameters()) == 11_173_962
    assert model.stem[0].kernel_size == (3, 3) and not any(
        isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert sum(1 for n in weight_layers(model) if "shortcut" in n) == 3  # 3 projections
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_every_family_is_registered_with_every_normalizer_and_labelled():
    for family in RESNET_FAMILIES:
        for suffix, norm in NORM_SUFFIXES.items():
            assert MODELS[f"{family}{suffix}"].norm == norm and norm in NORMS
            assert model_label(f"{family}{suffix}") != f"{family}{suffix}"
    assert model_label("resnet20_gbn") == "ResNet-20+Ghost BN"


def test_width_scales_every_channel_count():
    narrow = build_model("resnet20_bn", width=0.5)
    assert [m.out_channels for m in narrow.modules() if isinstance(m, nn.Conv2d)][:2] == [8, 8]
    assert narrow.classifier.in_features == 32
    assert narrow(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_skipinit_makes_an_unnormalized_resnet_its_shortcuts_at_init():
    """alpha = 0: each block is relu(shortcut(x)); the stem's output passes to the pooling
    (ReLU of non-negative values, zero-padded channels)."""
    torch.manual_seed(0)
    model = build_model("resnet20", width=0.25)
    x = torch.randn(4, 3, 32, 32)
    h = model.stem(x)
    for block in model.layers:
        assert float(block.skip_init.detach()) == 0.0
        h = F.relu(block.shortcut(h))
    assert torch.equal(model(x), model.classifier(h.mean(dim=(2, 3))))
    assert all(b.skip_init is None for b in build_model("resnet20_bn", width=0.25).layers)


@pytest.mark.parametrize("n", [96, 70, 32, 16])
def test_ghost_batchnorm_is_batchnorm_on_each_sub_batch(n):
    """Training: the output of each sub-batch of 32 (the last one shorter) and the running
    statistics after them, as nn.BatchNorm2d applied to each sub-batch in turn; eval: BN's."""
    torch.manual_seed(0)
    ghost = GhostBatchNorm(6)
    with torch.no_grad():
        ghost.weight.uniform_(0.5, 1.5)
        ghost.bias.uniform_(-0.5, 0.5)
    by_hand = nn.BatchNorm2d(6)
    by_hand.load_state_dict(ghost.state_dict())
    x = torch.randn(n, 6, 5, 5) * 3 + 1
    out = ghost(x)
    expected = torch.cat([by_hand(chunk) for chunk in x.split(32)])
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    for name, value in by_hand.state_dict().items():
        assert torch.equal(ghost.state_dict()[name], value), name
    if n > 32:  # sub-batches differ from the whole batch's statistics
        assert not torch.allclose(out, F.batch_norm(x, None, None, ghost.weight, ghost.bias,
                                                    True), atol=1e-3)
    ghost.eval(), by_hand.eval()
    torch.testing.assert_close(ghost(x), by_hand(x), rtol=0, atol=0)


def test_ghost_batchnorm_of_linear_layers():
    ghost, by_hand = GhostBatchNorm(4, ghost=8), nn.BatchNorm1d(4)
    x = torch.randn(20, 4)
    torch.testing.assert_close(ghost(x), torch.cat([by_hand(c) for c in x.split(8)]),
                               rtol=0, atol=0)


@pytest.mark.parametrize("name", ["resnet20_bn", "resnet20", "resnet18_gbn"])
def test_probe_on_a_resnet_equals_the_float64_reference_and_leaves_no_trace(name):
    torch.manual_seed(0)
    model = build_model(name, width=0.125)
    x, y = small_batch(n=64 if "gbn" in name else 16)  # Ghost BN: 2 sub-batches
    etas = [0.05, 0.1, 0.2, 0.4]
    ref_loss, ref_diff, ref_beta, ref_norm = slow_along_gradient(model, x, y, etas)
    rec = along_gradient(model, F.cross_entropy, x, y, etas, dtype=torch.float64)
    np.testing.assert_allclose(rec.loss, ref_loss, rtol=1e-10)
    np.testing.assert_allclose(rec.grad_diff, ref_diff, rtol=1e-8)
    assert rec.beta == pytest.approx(ref_beta, rel=1e-8)
    assert rec.grad_norm == pytest.approx(ref_norm, rel=1e-10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    before = snapshot(model, opt)
    along_gradient(copy.copy(model), F.cross_entropy, x, y, etas)
    assert_same_state(before, snapshot(model, opt))


def test_a_resnet_grid_trains_batched_as_it_trains_run_by_run(tmp_path):
    from landscape.data import ImageData, load_dataset
    from landscape.train import SweepConfig, run_sweep

    full = load_dataset("cifar10-mini")
    data = ImageData(full.name, full.x_train[:256], full.y_train[:256], full.x_test[:64],
                     full.y_test[:64], full.mean, full.std)
    config = dict(models=("resnet20_bn", "resnet20"), lrs=(0.05, 0.1), steps=4, probe_every=2,
                  batch_size=32, width=0.125, device="cpu", dataset="cifar10-mini")
    run_sweep(SweepConfig(**config, grid="sequential"), tmp_path / "seq.h5", data=data)
    run_sweep(SweepConfig(**config, grid="batched"), tmp_path / "grid.h5", data=data)
    with h5py.File(tmp_path / "seq.h5", "r") as s, h5py.File(tmp_path / "grid.h5", "r") as b:
        assert set(s["runs"]) == set(b["runs"]) and len(s["runs"]) == 4
        for name in s["runs"]:
            assert b["runs"][name].attrs["grid"] == "batched"
            np.testing.assert_allclose(b["runs"][name]["steps/loss"][()],
                                       s["runs"][name]["steps/loss"][()], rtol=1e-4)
            np.testing.assert_allclose(b["runs"][name]["probe/beta"][()],
                                       s["runs"][name]["probe/beta"][()], rtol=1e-3)
