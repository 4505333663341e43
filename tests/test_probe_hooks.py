"""LandscapeProbe in ordinary training loops (issue 13, point 6): each loop shape's record
against a direct computation on the right batch (float64 deep copies, plain backward), the
argument checks at construction, and the warnings."""

import copy
import functools
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from landscape.probes import (ActivationProbe, Batch, Batches, ICSProbe, LandscapeProbe,
                              ModelInputs, activation_stats, along_gradient)
from paper_util import gpu

ETAS = (0.5, 1.0, 2.0, 4.0)
LR = 0.1


def direct_landscape(model, objective, etas):
    """Reference: objective(copy) -> the step's loss, on float64 deep copies moved in place."""
    base = copy.deepcopy(model)
    objective(base).backward()
    g = [p.grad.clone() for p in base.parameters()]
    g_norm = float(torch.sqrt(sum((t ** 2).sum() for t in g)))
    losses, diffs = [], []
    for eta in etas:
        moved = copy.deepcopy(model)
        with torch.no_grad():
            for p, gp in zip(moved.parameters(), g):
                p -= eta * gp
        loss = objective(moved)
        loss.backward()
        losses.append(float(loss.detach()))
        diffs.append(float(torch.sqrt(sum(((p.grad - gp) ** 2).sum()
                                           for p, gp in zip(moved.parameters(), g)))))
    return np.array(losses), np.array(diffs), max(d / (e * g_norm) for d, e in zip(diffs, etas))


def assert_record_is(record, reference, rtol=1e-9):
    losses, diffs, beta = reference
    np.testing.assert_allclose(record.loss, losses, rtol=rtol)
    np.testing.assert_allclose(record.grad_diff, diffs, rtol=rtol)
    assert record.beta == pytest.approx(beta, rel=rtol)


def mlp(seed=0, norm=True):
    torch.manual_seed(seed)
    layers = [nn.Linear(6, 16), nn.BatchNorm1d(16) if norm else nn.Identity(), nn.ReLU(),
              nn.Linear(16, 4)]
    return nn.Sequential(*layers).double()


class Masked(nn.Module):
    """A model of two inputs: forward(x, mask) zeroes the masked features."""

    def __init__(self):
        super().__init__()
        self.net = mlp(1)

    def forward(self, x, mask, scale=1.0):
        return self.net(x * mask * scale)


def batch(n, seed):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 6, generator=gen, dtype=torch.float64),
            torch.randint(0, 4, (n,), generator=gen))


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=LR, momentum=0.5)


def test_model_trained_in_eval_mode_is_measured_in_eval_mode():
    """Before: 'no training batch seen yet'. Now: the function the step differentiated (BN on
    its running statistics), not the train-mode one."""
    model = mlp().eval()
    opt, probe = sgd(model), LandscapeProbe(every=2, etas=ETAS)
    loss_fn = probe.attach(model, opt, F.cross_entropy)
    expected = []
    for step in range(3):
        x, y = batch(16, step)
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        if step % 2 == 0:
            expected.append(direct_landscape(model, lambda m: F.cross_entropy(m(x), y),
                                             [e * LR for e in ETAS]))
        opt.step()
    assert [r.step for r in probe.records] == [0, 2]
    for r, ref in zip(probe.records, expected):
        assert_record_is(r, ref)
    assert not model.training and not model[1].training  # modes left as they were
    train_mode = along_gradient(model, F.cross_entropy, x, y, [LR])
    assert train_mode.loss[0] != pytest.approx(probe.records[-1].loss[0], rel=1e-3)


def test_loss_with_keyword_arguments_is_measured_with_them():
    """Before: TypeError from the wrapped loss. Now: the kwargs reach the loss and the probe."""
    model = mlp()
    opt, probe = sgd(model), LandscapeProbe(every=1, etas=ETAS)
    loss_fn = probe.attach(model, opt, F.cross_entropy)
    x, y = batch(16, 0)
    opt.zero_grad()
    loss = loss_fn(model(x), y, label_smoothing=0.1)
    with torch.no_grad():
        assert float(loss) == float(F.cross_entropy(model(x), y, label_smoothing=0.1))
    loss.backward()
    smoothed = functools.partial(F.cross_entropy, label_smoothing=0.1)
    by_hand = along_gradient(model, smoothed, x, y, [e * LR for e in ETAS])
    reference = direct_landscape(model, lambda m: smoothed(m(x), y), [e * LR for e in ETAS])
    opt.step()
    (r,) = probe.records
    np.testing.assert_array_equal(r.loss, by_hand.loss)
    assert_record_is(r, reference)


def test_model_with_two_inputs_and_keyword_arguments():
    """Before: TypeError (the probe called model(x)). Now: model(x, mask, scale=...) replayed."""
    model = Masked()
    opt, probe = sgd(model), LandscapeProbe(every=1, etas=ETAS)
    loss_fn = probe.attach(model, opt, F.cross_entropy)
    x, y = batch(16, 0)
    mask = (torch.arange(6) % 2).double()
    opt.zero_grad()
    loss_fn(model(x, mask, scale=2.0), y).backward()
    etas = [e * LR for e in ETAS]
    by_hand = along_gradient(model, F.cross_entropy, ModelInputs((x, mask), {"scale": 2.0}), y,
                             etas)
    reference = direct_landscape(model, lambda m: F.cross_entropy(m(x, mask, scale=2.0), y), etas)
    opt.step()
    (r,) = probe.records
    np.testing.assert_array_equal(r.loss, by_hand.loss)
    assert_record_is(r, reference)
    # A tuple is the positional arguments, a dict the keyword arguments.
    as_tuple = along_gradient(model, F.cross_entropy, (x, mask), y, etas)
    as_dict = along_gradient(model, F.cross_entropy, {"x": x, "mask": mask}, y, etas)
    np.testing.assert_array_equal(as_tuple.loss, as_dict.loss)


@pytest.mark.parametrize("validation", ["eval_no_grad", "train_with_grad"])
def test_validation_between_backward_and_step_is_not_the_training_batch(validation):
    """Before: the probe paired the training inputs with the validation targets and training
    died inside optimizer.step() (or, in train mode, measured the validation batch). Now: only
    losses that went through backward() belong to the step."""
    model = mlp()
    opt, probe = sgd(model), LandscapeProbe(every=1, etas=ETAS)
    loss_fn = probe.attach(model, opt, F.cross_entropy)
    x, y = batch(16, 0)
    xv, yv = batch(8, 1)
    opt.zero_grad()
    loss_fn(model(x), y).backward()
    if validation == "eval_no_grad":
        model.eval()
        with torch.no_grad():
            loss_fn(model(xv), yv)
        model.train()
    else:
        loss_fn(model(xv), yv)  # a sloppy validation: grad on, train mode, never backward()
    reference = direct_landscape(model, lambda m: F.cross_entropy(m(x), y),
                                 [e * LR for e in ETAS])
    opt.step()
    (r,) = probe.records
    assert_record_is(r, reference)


@pytest.mark.parametrize("norm", [False, True])
def test_gradient_accumulation_is_measured_on_all_micro_batches(norm):
    """Before: only the last micro-batch. Now: F = sum_i w_i L_i, whose gradient the step holds.
    Without BN and with (loss / n).backward() over equal micro-batches, that is the loss of the
    concatenated batch; with BN each micro-batch has its own statistics, as in training."""
    model = mlp(norm=norm)
    opt, probe = sgd(model), LandscapeProbe(every=1, etas=ETAS)
    loss_fn = probe.attach(model, opt, F.cross_entropy)
    micro = [batch(8, s) for s in range(3)]
    opt.zero_grad()
    for x, y in micro:
        (loss_fn(model(x), y) / len(micro)).backward()
    etas = [e * LR for e in ETAS]
    reference = direct_landscape(
        model, lambda m: sum(F.cross_entropy(m(x), y) for x, y in micro) / len(micro), etas)
    concatenated = along_gradient(model, F.cross_entropy, torch.cat([x for x, _ in micro]),
                                  torch.cat([y for _, y in micro]), etas)
    opt.step()
    (r,) = probe.records
    assert_record_is(r, reference)
    if not norm:
        np.testing.assert_allclose(r.loss, concatenated.loss, rtol=1e-12)
        assert r.beta == pytest.approx(concatenated.beta, rel=1e-10)


def test_loss_is_paired_with_the_call_whose_output_it_gets():
    """Two forwards, then their losses: each loss goes with its own call, not the latest."""
    model = mlp()
    opt, probe = sgd(model), LandscapeProbe(every=1, etas=ETAS)
    loss_fn = probe.attach(model, opt, F.cross_entropy)
    (x1, y1), (x2, y2) = batch(8, 0), batch(12, 1)
    opt.zero_grad()
    out1, out2 = model(x1), model(x2)
    (loss_fn(out1, y1) + loss_fn(out2, y2)).backward()
    reference = direct_landscape(
        model, lambda m: F.cross_entropy(m(x1), y1) + F.cross_entropy(m(x2), y2),
        [e * LR for e in ETAS])
    opt.step()
    assert_record_is(probe.records[0], reference)


def test_accumulation_with_unequal_micro_batches_and_sum_weights():
    """Weights are what backward sent into each loss: here sizes 8 and 4, each loss scaled by
    its share of 12 samples, so F is the mean over the 12 samples (no BN: the concatenation);
    the probe that reuses the step's gradient gives the same numbers."""
    model = mlp(norm=False)
    micro = [batch(8, 0), batch(4, 1)]
    records = []
    for reuse in (False, True):
        m = copy.deepcopy(model)
        opt, probe = sgd(m), LandscapeProbe(every=1, etas=ETAS, reuse_grad=reuse)
        loss_fn = probe.attach(m, opt, F.cross_entropy)
        opt.zero_grad()
        for x, y in micro:
            (loss_fn(m(x), y) * (len(x) / 12)).backward()
        opt.step()
        records.append(probe.records[0])
    whole = along_gradient(model, F.cross_entropy, torch.cat([x for x, _ in micro]),
                           torch.cat([y for _, y in micro]), [e * LR for e in ETAS])
    for r in records:
        np.testing.assert_allclose(r.loss, whole.loss, rtol=1e-12)
        np.testing.assert_allclose(r.grad_diff, whole.grad_diff, rtol=1e-10)
        assert r.loss_at_theta == pytest.approx(whole.loss_at_theta, rel=1e-12)
        assert r.grad_norm == pytest.approx(whole.grad_norm, rel=1e-12)


def test_instruments_share_the_hooks_on_a_two_input_accumulating_loop():
    """ICS and activations see the same step: both micro-batches, the model's two arguments,
    BN on each micro-batch's statistics as in training (direct: plain passes on copies)."""
    model = Masked()
    opt = sgd(model)
    ics, acts = ICSProbe(every=1, layers=["net.0"]), ActivationProbe(every=1, layers=["net.0"])
    loss_fn = acts.attach(model, opt, ics.attach(model, opt, F.cross_entropy))
    mask = (torch.arange(6) < 4).double()
    micro = [batch(8, 0), batch(8, 1)]
    opt.zero_grad()
    for x, y in micro:
        (loss_fn(model(x, mask), y) / 2).backward()
    copy_ = copy.deepcopy(model)
    seen = []
    copy_.net[1].register_forward_hook(lambda m, a, out: seen.append(out.detach()))
    (sum(F.cross_entropy(copy_(x, mask), y) for x, y in micro) / 2).backward()
    opt.step()
    values = torch.cat([v.reshape(-1) for v in seen])
    (a,) = acts.records
    assert a.mean[0] == pytest.approx(float(values.mean()), abs=1e-12)
    assert a.std[0] == pytest.approx(float(values.std(unbiased=False)), rel=1e-12)
    (i,) = ics.records
    assert i.grad_norm[0] == pytest.approx(float(copy_.net[0].weight.grad.norm()), rel=1e-12)


def test_activation_stats_of_batches_equal_the_concatenation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4)).double()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    probe = ActivationProbe(every=1, layers=["0", "2"])
    loss_fn = probe.attach(model, opt, F.cross_entropy)
    micro = [batch(8, 0), batch(3, 1)]
    whole = activation_stats(model, torch.cat([x for x, _ in micro]), ["0", "2"])
    opt.zero_grad()
    for x, y in micro:
        loss_fn(model(x), y).backward()
    opt.step()
    (r,) = probe.records
    np.testing.assert_allclose(r.mean, whole.mean, rtol=1e-12)
    np.testing.assert_allclose(r.std, whole.std, rtol=1e-12)
    np.testing.assert_allclose(r.hist, whole.hist, atol=1e-15)


@pytest.mark.parametrize("kwargs,shown", [
    ({"every": 2.5}, "every must be a positive whole number of optimizer steps, got 2.5"),
    ({"every": 0}, "got 0"),
    ({"every": True}, "got True"),
    ({"etas": 0.1}, "etas must be a non-empty sequence of positive finite numbers "
                    "(multiples of the learning rate), e.g. (0.5, 1, 2, 4); got 0.1"),
    ({"etas": ()}, "got ()"),
    ({"etas": (-1,)}, "got (-1,)"),
    ({"etas": (1.0, math.inf)}, "got (1.0, inf)"),
    ({"etas": (math.nan,), "relative": False}, "positive finite numbers, e.g."),
    ({"etas": "0.1"}, "got '0.1'"),
])
def test_probe_arguments_are_checked_at_construction(kwargs, shown):
    """Before: every=2.5 accepted, etas=0.1 a raw TypeError at the first measurement, etas=(-1,)
    reported multiplied by the lr, an infinite eta a silent NaN beta."""
    with pytest.raises(ValueError, match="^LandscapeProbe: ") as err:
        LandscapeProbe(**kwargs)
    assert shown in str(err.value)
    with pytest.raises(ValueError, match="ICSProbe: every"):
        ICSProbe(every=1.5)


def test_along_gradient_refuses_an_infinite_eta():
    model = mlp()
    x, y = batch(8, 0)
    with pytest.raises(ValueError, match="positive finite numbers"):
        along_gradient(model, F.cross_entropy, x, y, [0.1, math.inf])


@pytest.mark.parametrize("max_norm,warns", [(1e-3, True), (1e6, False)])
def test_gradient_changed_by_clipping_warns_and_is_not_reused(max_norm, warns):
    """Clipping that changes .grad between backward() and step(): warned once (the probe
    measures along the loss's gradient, not the step's), and with reuse_grad g is computed
    afresh (the numbers of the probe without reuse_grad). Clipping that does not bite: silent."""
    model = mlp()
    records = {}
    for reuse in (False, True):
        m = copy.deepcopy(model)
        opt, probe = sgd(m), LandscapeProbe(every=1, etas=ETAS, reuse_grad=reuse)
        loss_fn = probe.attach(m, opt, F.cross_entropy)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for step in range(2):
                x, y = batch(16, step)
                opt.zero_grad()
                loss_fn(m(x), y).backward()
                torch.nn.utils.clip_grad_norm_(m.parameters(), max_norm)
                opt.step()
        records[reuse] = probe.records
        changed = [str(w.message) for w in caught if "gradients changed" in str(w.message)]
        assert len(changed) == (1 if warns else 0)
        if warns:
            assert ("computes g itself" if reuse else "not along the step") in changed[0]
    for a, b in zip(records[False], records[True]):
        np.testing.assert_allclose(b.loss, a.loss, rtol=1e-12)
        np.testing.assert_allclose(b.grad_diff, a.grad_diff, rtol=1e-9)


@pytest.mark.parametrize("optimizer,relative,warns", [
    (torch.optim.Adam, True, True), (torch.optim.RMSprop, True, True),
    (torch.optim.Adam, False, False), (torch.optim.SGD, True, False)])
def test_relative_etas_with_an_adaptive_optimizer_warn(optimizer, relative, warns):
    model = mlp()
    etas = ETAS if relative else (1e-3, 1e-2)
    probe = LandscapeProbe(every=1, etas=etas, relative=relative)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        probe.attach(model, optimizer(model.parameters(), lr=1e-2), F.cross_entropy)
        ICSProbe(every=1).attach(model, optimizer(model.parameters(), lr=1e-2), F.cross_entropy)
    messages = [str(w.message) for w in caught]
    assert len(messages) == (1 if warns else 0)
    if warns:
        assert "the probe steps along the raw gradient" in messages[0]
        assert optimizer.__name__ in messages[0] and caught[0].filename == __file__


def test_measure_before_any_backward_is_refused_clearly():
    model = mlp()
    opt, probe = sgd(model), LandscapeProbe(every=1)
    loss_fn = probe.attach(model, opt, F.cross_entropy)
    x, y = batch(8, 0)
    with torch.no_grad():
        loss_fn(model(x), y)  # evaluated, never backpropagated
    with pytest.raises(RuntimeError, match="no training batch seen yet: it measures on the "
                                           "losses .* that went through backward()"):
        opt.step()


@pytest.mark.parametrize("points,device", [("vmap", "cpu"),
                                           pytest.param("vmap", "cuda", marks=gpu),
                                           pytest.param("streams", "cuda", marks=gpu)])
def test_batches_of_model_calls_agree_across_point_modes(points, device):
    """Positional and keyword arguments, recorded modes (BN in eval for one call), loss kwargs
    and weights: vmap and streams evaluate the same objective as the sequential points."""
    model = Masked().to(device)
    mask = (torch.arange(6) < 4).double().to(device)
    (x1, y1), (x2, y2) = ((x.to(device), y.to(device)) for x, y in (batch(8, 0), batch(4, 1)))
    modes = tuple(not isinstance(m, nn.BatchNorm1d) for m in model.modules())
    objective = Batches((
        Batch(ModelInputs((x1, mask), {"scale": 2.0}, modes), y1, 0.5, {"label_smoothing": 0.1}),
        Batch(ModelInputs((x2,), {"mask": mask}), y2, torch.full((), 0.25, device=device,
                                                                  dtype=torch.float64))))
    seq = along_gradient(model, F.cross_entropy, objective, None, [0.05, 0.1], "sequential")
    other = along_gradient(model, F.cross_entropy, objective, None, [0.05, 0.1], points)
    np.testing.assert_allclose(other.loss, seq.loss, rtol=1e-12)
    np.testing.assert_allclose(other.grad_diff, seq.grad_diff, rtol=1e-10)
    reference = direct_landscape(model, lambda m: 0.5 * F.cross_entropy(
        eval_bn(m)(x1, mask, scale=2.0), y1, label_smoothing=0.1) + 0.25 * F.cross_entropy(
        train_all(m)(x2, mask=mask), y2), [0.05, 0.1])
    assert_record_is(seq, reference)


def eval_bn(model):
    for m in model.modules():
        m.train(not isinstance(m, nn.BatchNorm1d))
    return model


def train_all(model):
    return model.train()
