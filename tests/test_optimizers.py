"""``--optimizer`` beyond SGD and Adam (Adagrad, Adadelta, Adamax, RMSprop) and ``--nesterov``:
each is torch's optimizer with its defaults but the learning rate and weight decay."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from landscape.train import OPTIMIZERS, SweepConfig, make_optimizer, plan_sweep

TORCH = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
         "adagrad": torch.optim.Adagrad, "adadelta": torch.optim.Adadelta,
         "adamax": torch.optim.Adamax, "rmsprop": torch.optim.RMSprop}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_optimizer_is_torchs_with_its_defaults_but_lr_and_weight_decay(name):
    assert set(TORCH) == set(OPTIMIZERS)
    params = [nn.Parameter(torch.ones(3))]
    config = SweepConfig(optimizer=name, weight_decay=1e-3)
    ours = make_optimizer(params, 0.05, config)
    direct = TORCH[name](params, lr=0.05, weight_decay=1e-3)
    assert type(ours) is type(direct) and ours.param_groups == direct.param_groups


def test_nesterov_is_sgds_and_steps_as_torch_by_hand():
    config = SweepConfig(optimizer="sgd", momentum=0.9, nesterov=True)
    config.validate()
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(5))
    opt = make_optimizer([w], 0.1, config)
    assert opt.param_groups[0]["nesterov"] and opt.param_groups[0]["momentum"] == 0.9
    expected, buf = w.detach().clone(), torch.zeros(5)
    for step in range(3):  # v = mu v + g; w -= lr (g + mu v), the first v = g
        opt.zero_grad()
        loss = (w ** 2).sum() * (step + 1)
        loss.backward()
        g = 2 * expected * (step + 1)
        buf = g.clone() if step == 0 else 0.9 * buf + g
        expected = expected - 0.1 * (g + 0.9 * buf)
        opt.step()
        torch.testing.assert_close(w.detach(), expected)


def test_runs_with_any_optimizer_but_heavy_ball_sgd_train_one_by_one():
    lrs = (0.05, 0.1)
    for change in (dict(optimizer="rmsprop"), dict(optimizer="adagrad"),
                   dict(momentum=0.9, nesterov=True)):
        config = SweepConfig(models=("mlp",), lrs=lrs, grid="batched", **change)
        assert [g.mode for g in plan_sweep(config)] == ["sequential", "sequential"], change
    assert [g.mode for g in plan_sweep(SweepConfig(models=("mlp",), lrs=lrs, momentum=0.9,
                                                   grid="batched"))] == ["batched"]
