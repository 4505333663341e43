"""Hook probes with ``optimizer.step(closure)`` and the rules that keep a probe on its own step
(issue 23, point 1), the measuring flag per thread (issue 22), and a loss module replaced by
its wrapped self (issue 23, point 2). References: float64 deep copies at theta_t (see
``test_probe_hooks.direct_landscape``), or the same loop in plain form."""

import copy
import dataclasses
import threading
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from landscape.probes import (ActivationProbe, GradientStats, ICSProbe, LandscapeProbe,
                              RecordingLoss, SharpnessProbe, WeightStats, along_gradient)
from landscape.probes.hooks import measuring_now
from test_probe_hooks import ETAS, LR, assert_record_is, batch, direct_landscape, mlp, sgd

ABSOLUTE_ETAS = [e * LR for e in ETAS]


def closure_of(model, optimizer, loss_fn, x, y, zero_grad=True, calls=None):
    """What Lightning's automatic optimization hands ``optimizer.step``: forward and backward
    inside the closure."""
    def closure():
        if calls is not None:
            calls.append(1)
        if zero_grad:
            optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss
    return closure


def train(model, optimizer, loss_fn, batches, forms):
    """One step per batch, each in its form: "plain" (backward, then step()), "closure"
    (step(closure)), "closure_kw" (step(closure=closure))."""
    for (x, y), form in zip(batches, forms):
        if form == "plain":
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
        elif form == "closure":
            optimizer.step(closure_of(model, optimizer, loss_fn, x, y))
        else:
            optimizer.step(closure=closure_of(model, optimizer, loss_fn, x, y))


def own_batch_loss(model, x, y):
    """L(theta_t) of the step's own batch, by hand on a copy (train mode, as the probe)."""
    with torch.no_grad():
        return float(F.cross_entropy(copy.deepcopy(model)(x), y))


@pytest.mark.parametrize("forms", [("closure", "closure", "closure"),
                                   ("plain", "closure", "plain", "closure_kw", "plain")])
def test_each_step_is_measured_on_its_own_batch_at_theta_t(forms):
    """Before: a first closure step raised 'no training batch seen yet'; a closure step after a
    plain one measured the previous step's batch; a plain step after a closure step measured
    the sum of both batches' losses. Now every step, in any form, its own batch at theta_t."""
    model = mlp()
    opt, probe = sgd(model), LandscapeProbe(every=1, etas=ETAS)
    loss_fn = probe.attach(model, opt, F.cross_entropy)
    batches = [batch(16, step) for step in range(len(forms))]
    expected, own_losses = [], []
    for step, ((x, y), form) in enumerate(zip(batches, forms)):
        expected.append(direct_landscape(model, lambda m: F.cross_entropy(m(x), y),
                                         ABSOLUTE_ETAS))
        own_losses.append(own_batch_loss(model, x, y))
        train(model, opt, loss_fn, [(x, y)], [form])
    assert [r.step for r in probe.records] == list(range(len(forms)))
    for record, reference, own in zip(probe.records, expected, own_losses):
        assert record.loss_at_theta == pytest.approx(own, rel=1e-12)  # never a sum of batches
        assert_record_is(record, reference)


def test_losses_backpropagated_before_a_closure_step_count_with_it():
    """Lightning's gradient accumulation: the first micro-batches' closures run without
    step(), the last inside step(closure) without zero_grad: .grad holds all of them, and so
    does the objective."""
    model = mlp()
    opt, probe = sgd(model), LandscapeProbe(every=1, etas=ETAS)
    loss_fn = probe.attach(model, opt, F.cross_entropy)
    (x1, y1), (x2, y2) = batch(8, 0), batch(8, 1)
    half = lambda lf: lambda out, y: lf(out, y) / 2  # noqa: E731
    reference = direct_landscape(
        model, lambda m: (F.cross_entropy(m(x1), y1) + F.cross_entropy(m(x2), y2)) / 2,
        ABSOLUTE_ETAS)
    opt.zero_grad()
    closure_of(model, opt, half(loss_fn), x1, y1, zero_grad=False)()  # not in a step
    opt.step(closure_of(model, opt, half(loss_fn), x2, y2, zero_grad=False))
    (record,) = probe.records
    assert_record_is(record, reference)


def test_a_step_without_a_batch_of_its_own_is_refused_not_measured_on_an_earlier_one():
    """Before: a step whose loss was not backpropagated measured the last probed step's batch
    at the new parameters. Now: the step's capture is empty, RuntimeError."""
    model = mlp()
    opt, probe = sgd(model), LandscapeProbe(every=1, etas=ETAS)
    loss_fn = probe.attach(model, opt, F.cross_entropy)
    train(model, opt, loss_fn, [batch(16, 0)], ["plain"])
    with pytest.raises(RuntimeError, match="no training batch seen yet"):
        opt.step()  # .grad still holds step 0's gradient; no loss of step 1 went backward
    assert len(probe.records) == 1


@pytest.mark.parametrize("zero_grad_first", [True, False])
def test_a_batch_whose_step_was_skipped_does_not_count_toward_the_next(zero_grad_first):
    """An iteration that backpropagates and then skips optimizer.step() (GradScaler on inf,
    a `continue` on a NaN loss): the next iteration's zero_grad() leaves .grad with its own
    batch only, and the probe measures that batch only. Before: the sum of both. Either order:
    zero_grad() before the forward pass, or between the loss and backward() (as in the README's
    example)."""
    model = mlp()
    opt, probe = sgd(model), LandscapeProbe(every=1, etas=ETAS)
    loss_fn = probe.attach(model, opt, F.cross_entropy)
    for x, y in (batch(16, 0), batch(16, 1)):  # the first one's step is skipped
        if zero_grad_first:
            opt.zero_grad()
        loss = loss_fn(model(x), y)
        if not zero_grad_first:
            opt.zero_grad()
        loss.backward()
    reference = direct_landscape(model, lambda m: F.cross_entropy(m(x), y), ABSOLUTE_ETAS)
    own = own_batch_loss(model, x, y)
    opt.step()
    (record,) = probe.records
    assert record.loss_at_theta == pytest.approx(own, rel=1e-12)
    assert_record_is(record, reference)


def test_lbfgs_is_measured_at_the_first_call_of_its_closure():
    """LBFGS evaluates the closure several times per step (line search, iterations): the probe
    measures the first call, at theta_t on the step's batch, once per step; a measure() at a
    later call is refused (the step was measured already)."""
    model = mlp()
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4)
    probe = LandscapeProbe(every=1, etas=ABSOLUTE_ETAS, relative=False)
    loss_fn = probe.attach(model, opt, F.cross_entropy)
    expected = []
    for step in range(2):
        x, y = batch(16, step)
        expected.append(direct_landscape(model, lambda m: F.cross_entropy(m(x), y),
                                         ABSOLUTE_ETAS))
        calls = []

        def closure():
            if calls:  # a later evaluation, at another point
                with pytest.raises(RuntimeError, match="step .* was measured already"):
                    probe.measure()
            return closure_of(model, opt, loss_fn, x, y, calls=calls)()

        opt.step(closure)
        assert len(calls) > 1
    assert [r.step for r in probe.records] == [0, 1]
    for record, reference in zip(probe.records, expected):
        assert_record_is(record, reference)


def test_lbfgs_warns_with_relative_etas_and_is_refused_by_ics():
    model = mlp()
    opt = torch.optim.LBFGS(model.parameters())
    with pytest.warns(UserWarning, match="multiples of LBFGS's lr, but the probe steps along "
                                         "the raw gradient"):
        LandscapeProbe(every=1).attach(model, opt, F.cross_entropy)
    with pytest.raises(TypeError, match=r"^ICSProbe: LBFGS.step\(\) needs a closure"):
        ICSProbe(every=1, layers=["0"]).attach(model, opt, F.cross_entropy)


def run_instrument(make, forms):
    """Records (or rows) of an instrument over one loop in the given forms."""
    model = mlp()
    opt = sgd(model)
    batches = [batch(12, step) for step in range(len(forms))]
    if make in (GradientStats, WeightStats):
        stats = (GradientStats().attach(opt) if make is GradientStats
                 else WeightStats(model).attach(opt))
        train(model, opt, F.cross_entropy, batches, forms)
        return stats.pop(), model
    instrument = make()
    loss_fn = instrument.attach(model, opt, F.cross_entropy)
    train(model, opt, loss_fn, batches, forms)
    return [dataclasses.asdict(r) for r in instrument.records], model


@pytest.mark.parametrize("make", [
    lambda: LandscapeProbe(every=2, etas=ETAS, reuse_grad=True),
    lambda: ICSProbe(every=1, layers=["0", "3"]),
    lambda: ActivationProbe(every=2, layers=["0", "3"]),
    lambda: SharpnessProbe(every=1, k=2, trace_samples=2),
    GradientStats, WeightStats],
    ids=["landscape", "ics", "activations", "sharpness", "gradient_stats", "weight_stats"])
def test_every_instrument_measures_a_closure_step_as_the_plain_step(make):
    """Through the shared base (and steps.after_gradient for the per-step statistics): the
    same batches in closure form give bit-identical records and training to the plain form,
    itself tested against direct computations."""
    plain, plain_model = run_instrument(make, ["plain"] * 4)
    mixed, mixed_model = run_instrument(make, ["closure", "plain", "closure_kw", "closure"])
    assert len(plain) == len(mixed) > 0
    np.testing.assert_equal(mixed, plain)
    for a, b in zip(plain_model.state_dict().values(), mixed_model.state_dict().values()):
        assert torch.equal(a, b)


def test_a_closure_never_called_is_warned_and_not_measured():
    class Skipping(torch.optim.SGD):
        def step(self, closure=None):
            return None

    model = mlp()
    opt, probe = Skipping(model.parameters(), lr=LR), LandscapeProbe(every=1, etas=ETAS)
    loss_fn = probe.attach(model, opt, F.cross_entropy)
    with pytest.warns(UserWarning, match=r"did not call the closure: step 0 was not measured"):
        opt.step(closure_of(model, opt, loss_fn, *batch(8, 0)))
    assert probe.records == [] and probe.step == 1


def test_measure_by_hand_follows_the_schedule():
    """measure() between backward() and step() of a probed step: that step's batch (the same
    record as the scheduled one that follows); before attach, on a step the schedule skips, or
    before any backward of a probed step: RuntimeError, never an earlier step's batch."""
    model = mlp()
    opt, probe = sgd(model), LandscapeProbe(every=2, etas=ETAS)
    with pytest.raises(RuntimeError, match=r"^LandscapeProbe: not attached"):
        probe.measure()
    loss_fn = probe.attach(model, opt, F.cross_entropy)
    x, y = batch(16, 0)
    with pytest.raises(RuntimeError, match="no training batch seen yet"):
        probe.measure()
    opt.zero_grad()
    loss_fn(model(x), y).backward()
    by_hand = probe.measure()
    opt.step()
    scheduled = probe.records[-1]
    assert by_hand is probe.records[0] and scheduled.step == by_hand.step == 0
    np.testing.assert_array_equal(scheduled.loss, by_hand.loss)
    np.testing.assert_array_equal(scheduled.grad_diff, by_hand.grad_diff)
    for _ in range(2):  # right after the step, and after step 1's backward
        with pytest.raises(RuntimeError, match=r"the coming step 1 is not probed \(every=2\)"):
            probe.measure()
        opt.zero_grad()
        loss_fn(model(x), y).backward()


def test_a_thread_that_trains_while_another_measures_keeps_its_batches():
    """Ray may run a training task on a thread beside another. Before: one process-wide
    'measuring' counter, so while thread A's probe measured, thread B's hooks took B's own
    training passes for a probe's and dropped them ('no training batch seen yet'). Now the
    flag is per thread: B records what it records alone."""
    inside, release = threading.Event(), threading.Event()

    class WaitsInsideTheProbe(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = mlp(3)

        def forward(self, x):
            if measuring_now() and not inside.is_set():  # the probe's first pass: hold it
                inside.set()
                release.wait(60)
            return self.net(x)

    def train_b():
        model = mlp(1)
        opt, probe = sgd(model), LandscapeProbe(every=1, etas=ETAS)
        train(model, opt, probe.attach(model, opt, F.cross_entropy),
              [batch(16, 5), batch(16, 6)], ["plain", "closure"])
        return probe.records

    alone = train_b()
    model_a = WaitsInsideTheProbe()
    xa, ya = batch(16, 7)
    expected_a = along_gradient(copy.deepcopy(model_a.net), F.cross_entropy, xa, ya,
                                ABSOLUTE_ETAS)
    opt_a, probe_a = sgd(model_a), LandscapeProbe(every=1, etas=ETAS)
    loss_a = probe_a.attach(model_a, opt_a, F.cross_entropy)
    thread_a = threading.Thread(target=train, args=(model_a, opt_a, loss_a, [(xa, ya)],
                                                    ["plain"]))
    thread_a.start()
    try:
        assert inside.wait(60)
        assert not measuring_now()  # A measures; this thread does not
        beside = train_b()
    finally:
        release.set()
        thread_a.join(60)
    np.testing.assert_equal([dataclasses.asdict(r) for r in beside],
                            [dataclasses.asdict(r) for r in alone])
    (record_a,) = probe_a.records
    np.testing.assert_allclose(record_a.loss, expected_a.loss, rtol=1e-12)


class TemperedCrossEntropy(nn.Module):
    """A loss with a learnable parameter and a buffer: cross-entropy of logits / exp(log_t)."""

    def __init__(self, weight):
        super().__init__()
        self.log_t = nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.register_buffer("weight", weight)

    def forward(self, outputs, targets):
        return F.cross_entropy(outputs / self.log_t.exp(), targets, weight=self.weight)


class Classifier(nn.Module):
    """A LightningModule's shape: the network and the criterion as attributes."""

    def __init__(self, criterion):
        super().__init__()
        self.net = mlp()
        self.criterion = criterion

    def training_step(self, x, y):
        return self.criterion(self.net(x), y)


@pytest.mark.parametrize("make_loss", [
    lambda w: nn.CrossEntropyLoss(weight=w), TemperedCrossEntropy], ids=["ce", "learnable"])
def test_a_loss_module_attribute_can_be_replaced_by_the_wrapped_loss(make_loss):
    """Before: TypeError 'cannot assign ... as child module'. Now attach returns a module that
    computes the same loss, owns no parameter (the loss's own, once, as before: an optimizer
    over the parent's parameters gets each once) and keeps the parent's state_dict keys."""
    weight = torch.linspace(0.5, 1.5, 4, dtype=torch.float64)
    classifier = Classifier(make_loss(weight))
    original = classifier.criterion
    keys, params = list(classifier.state_dict()), list(classifier.parameters())
    opt, probe = sgd(classifier), LandscapeProbe(every=1, etas=ETAS)
    classifier.criterion = probe.attach(classifier.net, opt, classifier.criterion)
    assert isinstance(classifier.criterion, RecordingLoss)
    assert list(classifier.state_dict()) == keys
    assert [id(p) for p in classifier.parameters()] == [id(p) for p in params]
    assert [id(p) for p in classifier.criterion.parameters()] == [
        id(p) for p in original.parameters()]
    x, y = batch(16, 0)
    with torch.no_grad():
        assert float(classifier.training_step(x, y)) == float(original(classifier.net(x), y))
    reference = direct_landscape(classifier.net, lambda m: original(m(x), y), ABSOLUTE_ETAS)
    opt.zero_grad()
    classifier.training_step(x, y).backward()
    opt.step()
    assert_record_is(probe.records[0], reference)
    classifier.float()  # .to() through the parent reaches the loss's own buffers
    assert original.weight.dtype == torch.float32
