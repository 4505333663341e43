"""along_gradient and the hook probes: closed forms, a direct slow implementation, no trace."""

import copy
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from landscape.models import vgg_a
from landscape.probes import (STEP_ROUNDING_LIMIT, GradientStats, LandscapeProbe,
                              StepResolutionWarning, along_gradient, step_rounding)
from landscape.probes import hooks
from landscape.probes.landscape import _warn_of_step_resolution
from paper_util import gpu


class Quadratic(nn.Module):
    """f(theta) = 1/2 theta^T A theta, whatever the batch; the 'loss' is the output itself."""

    def __init__(self, A: torch.Tensor, theta: torch.Tensor):
        super().__init__()
        self.register_buffer("A", A)
        self.theta = nn.Parameter(theta.clone())

    def forward(self, x):
        return 0.5 * self.theta @ self.A @ self.theta


def identity_loss(out, targets):
    return out


def random_spd(n, seed):
    gen = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    eigenvalues = torch.linspace(0.5, 7.0, n, dtype=torch.float64)
    return Q @ torch.diag(eigenvalues) @ Q.T, Q, eigenvalues


def test_quadratic_closed_form():
    A, _, _ = random_spd(6, seed=0)
    theta = torch.randn(6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    model = Quadratic(A, theta)
    etas = [0.01, 0.05, 0.1, 0.2]
    rec = along_gradient(model, identity_loss, torch.zeros(1), torch.zeros(1), etas)

    g = A @ theta
    Ag = A @ g
    for i, eta in enumerate(etas):
        moved = theta - eta * g
        assert rec.loss[i] == pytest.approx(float(0.5 * moved @ A @ moved), rel=1e-12)
        assert rec.grad_diff[i] == pytest.approx(eta * float(torch.linalg.norm(Ag)), rel=1e-10)
    assert rec.beta == pytest.approx(float(torch.linalg.norm(Ag) / torch.linalg.norm(g)), rel=1e-10)
    assert rec.grad_norm == pytest.approx(float(torch.linalg.norm(g)), rel=1e-12)
    assert rec.loss_at_theta == pytest.approx(float(0.5 * theta @ A @ theta), rel=1e-12)
    np.testing.assert_allclose(rec.eta, etas)


@pytest.mark.parametrize("k", [0, 3, 5])
def test_quadratic_eigenvector_beta_is_eigenvalue(k):
    A, Q, eigenvalues = random_spd(6, seed=2)
    model = Quadratic(A, 3.0 * Q[:, k])
    rec = along_gradient(model, identity_loss, torch.zeros(1), torch.zeros(1), [0.05, 0.1])
    assert rec.beta == pytest.approx(float(eigenvalues[k]), rel=1e-10)


def slow_along_gradient(model, inputs, targets, etas):
    """Direct reference: deep copies in float64, parameters moved in place, plain backward."""
    base = copy.deepcopy(model).double().train()
    x = inputs.double()
    F.cross_entropy(base(x), targets).backward()
    g = [p.grad.clone() for p in base.parameters()]
    g_norm = torch.sqrt(sum((t ** 2).sum() for t in g))
    losses, diffs = [], []
    for eta in etas:
        moved = copy.deepcopy(model).double().train()
        with torch.no_grad():
            for p, gp in zip(moved.parameters(), g):
                p -= eta * gp
        loss = F.cross_entropy(moved(x), targets)
        loss.backward()
        losses.append(float(loss.detach()))
        diffs.append(float(torch.sqrt(sum(((p.grad - gp) ** 2).sum()
                                           for p, gp in zip(moved.parameters(), g)))))
    beta = max(d / (eta * float(g_norm)) for d, eta in zip(diffs, etas))
    return np.array(losses), np.array(diffs), beta, float(g_norm)


def small_batch(n=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=gen), torch.randint(0, 10, (n,), generator=gen)


@pytest.mark.parametrize("norm", ["none", "batch"])
def test_matches_direct_slow_implementation(norm):
    torch.manual_seed(0)
    model = vgg_a(width=0.0625, norm=norm)
    x, y = small_batch()
    etas = [0.05, 0.1, 0.2, 0.4]
    ref_loss, ref_diff, ref_beta, ref_norm = slow_along_gradient(model, x, y, etas)

    # Same precision as the reference: agreement to rounding.
    rec64 = along_gradient(copy.deepcopy(model).double(), F.cross_entropy, x.double(), y, etas)
    np.testing.assert_allclose(rec64.loss, ref_loss, rtol=1e-10)
    np.testing.assert_allclose(rec64.grad_diff, ref_diff, rtol=1e-8)
    assert rec64.beta == pytest.approx(ref_beta, rel=1e-8)
    assert rec64.grad_norm == pytest.approx(ref_norm, rel=1e-10)

    # The float32 probe agrees with the float64 reference to float32 accuracy.
    rec32 = along_gradient(model, F.cross_entropy, x, y, etas)
    np.testing.assert_allclose(rec32.loss, ref_loss, rtol=1e-4)
    np.testing.assert_allclose(rec32.grad_diff, ref_diff, rtol=2e-3)
    assert rec32.beta == pytest.approx(ref_beta, rel=2e-3)


@pytest.mark.parametrize("norm", ["none", "batch"])
@pytest.mark.parametrize("points", ["sequential", "vmap"])
def test_float64_probe_of_a_float32_model_is_the_float64_computation(norm, points):
    """dtype=float64 measures on float64 copies: equal to the direct float64 reference to
    float64 rounding, and the float32 model (parameters, buffers, .grad) is left as it was."""
    torch.manual_seed(0)
    model = vgg_a(width=0.0625, norm=norm)
    x, y = small_batch()
    etas = [0.05, 0.1, 0.2, 0.4]
    ref_loss, ref_diff, ref_beta, ref_norm = slow_along_gradient(model, x, y, etas)
    before = copy.deepcopy(model.state_dict())
    rec = along_gradient(model, F.cross_entropy, x, y, etas, points=points, dtype=torch.float64)
    np.testing.assert_allclose(rec.loss, ref_loss, rtol=1e-10)
    np.testing.assert_allclose(rec.grad_diff, ref_diff, rtol=1e-8)
    assert rec.beta == pytest.approx(ref_beta, rel=1e-8)
    assert rec.grad_norm == pytest.approx(ref_norm, rel=1e-10)
    assert all(p.dtype == torch.float32 and p.grad is None for p in model.parameters())
    for name, value in model.state_dict().items():
        assert value.dtype == before[name].dtype and torch.equal(value, before[name]), name


def test_float64_probe_ignores_float32_training_gradient():
    """A float32 ``at_theta`` cannot stand for the float64 L(theta) and g: it is recomputed."""
    torch.manual_seed(0)
    model = vgg_a(width=0.0625, norm="batch")
    x, y = small_batch()
    wrong = (torch.tensor(123.0), [torch.ones_like(p) for p in model.parameters()])
    rec = along_gradient(model, F.cross_entropy, x, y, [0.1], at_theta=wrong, dtype=torch.float64)
    assert rec.grad_norm == pytest.approx(slow_along_gradient(model, x, y, [0.1])[3], rel=1e-10)


def snapshot(model, optimizer):
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "grads": [p.grad.clone() for p in model.parameters()],
        "buffers": [b.clone() for b in model.buffers()],
        "optim": copy.deepcopy(optimizer.state_dict()),
        "rng": torch.get_rng_state().clone(),
        "training": [m.training for m in model.modules()],
    }


def assert_same_state(a, b):
    for key in ("params", "grads", "buffers"):
        assert len(a[key]) == len(b[key])
        assert all(torch.equal(s, t) for s, t in zip(a[key], b[key])), key
    assert torch.equal(a["rng"], b["rng"])
    assert a["training"] == b["training"]
    sa, sb = a["optim"]["state"], b["optim"]["state"]
    assert sa.keys() == sb.keys() and len(sa) > 0
    for k in sa:
        for name in sa[k]:
            assert torch.equal(torch.as_tensor(sa[k][name]), torch.as_tensor(sb[k][name]))
    assert a["optim"]["param_groups"] == b["optim"]["param_groups"]


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_probe_leaves_no_trace(mode):
    torch.manual_seed(0)
    model = vgg_a(width=0.0625, norm="batch")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = small_batch()
    for _ in range(2):  # momentum buffers and BN running statistics are non-trivial
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    opt.zero_grad(set_to_none=False)
    F.cross_entropy(model(x), y).backward()  # .grad holds something the probe must not touch
    model.train(mode == "train")
    before = snapshot(model, opt)
    rec = along_gradient(model, F.cross_entropy, x, y, [0.05, 0.1, 0.2, 0.4])
    assert np.isfinite(rec.loss).all() and rec.beta > 0
    assert_same_state(before, snapshot(model, opt))


def test_probe_uses_batch_statistics_in_eval_mode():
    """BN in the probe uses the batch's statistics, whatever mode the model is in."""
    torch.manual_seed(0)
    model = vgg_a(width=0.0625, norm="batch")
    x, y = small_batch()
    in_train = along_gradient(model.train(), F.cross_entropy, x, y, [0.1])
    in_eval = along_gradient(model.eval(), F.cross_entropy, x, y, [0.1])
    np.testing.assert_array_equal(in_train.loss, in_eval.loss)
    with torch.no_grad():
        eval_loss = float(F.cross_entropy(model.eval()(x), y))
    assert in_eval.loss_at_theta != pytest.approx(eval_loss, rel=1e-3)


def train_steps(model, steps, batches, probe=None, manual_every=None, stats=None):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.5)
    loss_fn = F.cross_entropy
    if probe is not None:
        loss_fn = probe.attach(model, opt, loss_fn)
    if stats is not None:
        stats.attach(opt)
    manual = []
    for step in range(steps):
        x, y = batches[step % len(batches)]
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        if manual_every and step % manual_every == 0:
            manual.append(along_gradient(model, F.cross_entropy, x, y,
                                         [e * 0.05 for e in (0.5, 1, 2, 4)]))
        opt.step()
    return manual


def test_hook_probe_records_what_a_manual_call_gives():
    batches = [small_batch(16, seed=s) for s in range(3)]
    torch.manual_seed(3)
    model = vgg_a(width=0.0625, norm="batch")
    hooked, by_hand, untouched = (copy.deepcopy(model) for _ in range(3))

    probe = LandscapeProbe(every=3)
    train_steps(hooked, 7, batches, probe=probe)
    manual = train_steps(by_hand, 7, batches, manual_every=3)
    train_steps(untouched, 7, batches)

    assert [r.step for r in probe.records] == [0, 3, 6]
    assert len(manual) == 3
    for r, m in zip(probe.records, manual):
        np.testing.assert_array_equal(r.loss, m.loss)
        np.testing.assert_array_equal(r.grad_diff, m.grad_diff)
        np.testing.assert_array_equal(r.eta, m.eta)
        assert r.beta == m.beta and r.lr == 0.05
    # Training with the probe attached is bit-identical to training without it.
    for a, b in zip(hooked.parameters(), untouched.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(hooked.buffers(), untouched.buffers()):
        assert torch.equal(a, b)


def test_reused_training_gradient_gives_the_same_record():
    """reuse_grad takes g and L(theta) from the training step: same numbers, one pass fewer."""
    batches = [small_batch(16, seed=s) for s in range(3)]
    torch.manual_seed(4)
    model = vgg_a(width=0.0625, norm="batch")
    fresh, reused = LandscapeProbe(every=2), LandscapeProbe(every=2, reuse_grad=True)
    train_steps(copy.deepcopy(model), 5, batches, probe=fresh)
    train_steps(copy.deepcopy(model), 5, batches, probe=reused)
    assert [r.step for r in reused.records] == [0, 2, 4]
    for a, b in zip(fresh.records, reused.records):
        np.testing.assert_allclose(b.loss, a.loss, rtol=1e-6)
        np.testing.assert_allclose(b.grad_diff, a.grad_diff, rtol=1e-5)
        assert b.grad_norm == pytest.approx(a.grad_norm, rel=1e-6)
        assert b.loss_at_theta == pytest.approx(a.loss_at_theta, rel=1e-6)
        assert b.beta == pytest.approx(a.beta, rel=1e-5)


def test_at_theta_must_match_the_parameters():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    x, y = torch.randn(4, 3), torch.randint(0, 2, (4,))
    with pytest.raises(ValueError, match="does not match"):
        along_gradient(model, F.cross_entropy, x, y, [0.1],
                       at_theta=(torch.tensor(1.0), [torch.zeros(2, 3)]))


def test_hook_probe_works_for_other_optimizers_and_detaches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    probe = LandscapeProbe(every=2, etas=(1e-3, 1e-2), relative=False)
    loss_fn = probe.attach(model, opt, F.cross_entropy)
    x, y = torch.randn(32, 5), torch.randint(0, 3, (32,))
    for _ in range(4):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    assert [r.step for r in probe.records] == [0, 2]
    np.testing.assert_allclose(probe.records[0].eta, [1e-3, 1e-2])
    probe.detach()
    opt.step()
    assert len(probe.records) == 2


def test_gradient_stats_match_direct_computation():
    batches = [small_batch(8, seed=s) for s in range(3)]
    torch.manual_seed(0)
    model = vgg_a(width=0.0625, norm="none")
    ref = copy.deepcopy(model)
    stats = GradientStats()
    train_steps(model, 3, batches, stats=stats)
    rows = stats.pop()

    opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.5)
    grads, thetas = [], []
    for step in range(3):
        x, y = batches[step]
        opt.zero_grad()
        F.cross_entropy(ref(x), y).backward()
        grads.append(torch.cat([p.grad.flatten() for p in ref.parameters()]))
        thetas.append(torch.cat([p.detach().flatten() for p in ref.parameters()]))
        opt.step()
    assert rows.shape == (3, 3)
    np.testing.assert_allclose(rows[:, 0], [float(g.norm()) for g in grads], rtol=1e-6)
    assert np.isnan(rows[0, 1]) and np.isnan(rows[0, 2])
    for t in (1, 2):
        diff = float((grads[t] - grads[t - 1]).norm())
        assert rows[t, 1] == pytest.approx(diff, rel=1e-5)
        assert rows[t, 2] == pytest.approx(diff / float((thetas[t] - thetas[t - 1]).norm()), rel=1e-5)


POINTS_DEVICES = [("vmap", "cpu"),
                  pytest.param("vmap", "cuda", marks=gpu),
                  pytest.param("streams", "cuda", marks=gpu)]


@pytest.mark.parametrize("norm", ["none", "batch"])
@pytest.mark.parametrize("points,device", POINTS_DEVICES)
def test_batched_points_equal_sequential(norm, points, device):
    """All eta points in one vmapped pass, or on concurrent CUDA streams: the sequential
    probe's numbers within 1e-5 relative (float32), and the model left as it was."""
    torch.manual_seed(1)
    model = vgg_a(width=0.125, norm=norm).to(device)
    x, y = (t.to(device) for t in small_batch(32, seed=4))
    etas = [0.05, 0.1, 0.2, 0.4]
    before = [t.clone() for t in [*model.parameters(), *model.buffers()]]
    seq = along_gradient(model, F.cross_entropy, x, y, etas, points="sequential")
    vec = along_gradient(model, F.cross_entropy, x, y, etas, points=points)
    np.testing.assert_allclose(vec.loss, seq.loss, rtol=1e-5)
    np.testing.assert_allclose(vec.grad_diff, seq.grad_diff, rtol=1e-5)
    assert vec.beta == pytest.approx(seq.beta, rel=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(before, [*model.parameters(), *model.buffers()]))


def test_probe_measures_in_float32_under_the_training_autocast():
    """Training may run in bf16 autocast with TF32 on; the probe switches both off for itself,
    so it returns the float32 numbers, and the caller's settings are back afterwards."""
    torch.manual_seed(2)
    model = vgg_a(width=0.125, norm="batch")
    x, y = small_batch(16, seed=5)
    etas = [0.05, 0.1, 0.2, 0.4]
    plain = along_gradient(model, F.cross_entropy, x, y, etas)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            inside = along_gradient(model, F.cross_entropy, x, y, etas)
            assert torch.is_autocast_enabled("cpu")
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    np.testing.assert_allclose(inside.loss, plain.loss, rtol=1e-6)
    np.testing.assert_allclose(inside.grad_diff, plain.grad_diff, rtol=1e-6)
    assert inside.beta == pytest.approx(plain.beta, rel=1e-6)


def test_unknown_points_mode_is_refused():
    model = vgg_a(width=0.125)
    x, y = small_batch(8, seed=0)
    with pytest.raises(ValueError, match="points must be one of"):
        along_gradient(model, F.cross_entropy, x, y, [0.1], points="parallel")


# --- models that draw random numbers: the probe measures one deterministic function ---------


def dropout_mlp(dtype=torch.float32):
    """Linear-ReLU-Dropout(0.5)-Linear (issue 13's example)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 5)).to(dtype)


class ForwardDropout(nn.Module):
    """The same network with ``F.dropout`` inside ``forward``: no module says it is random."""

    def __init__(self, dtype=torch.float32):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(20, 64).to(dtype), nn.Linear(64, 5).to(dtype)

    def forward(self, x):
        return self.fc2(F.dropout(F.relu(self.fc1(x)), 0.5, self.training))


DROPOUT_MODELS = {"nn.Dropout": dropout_mlp, "F.dropout": ForwardDropout}


def mlp_batch(dtype=torch.float32, n=32, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 20, generator=gen).to(dtype), torch.randint(0, 5, (n,), generator=gen)


def fixed_mask_reference(model, x, y, mask, etas):
    """Direct float64 grad_diff and ||g|| of Linear-ReLU-(x mask)-Linear, mask fixed: plain
    autograd on copies of the parameters, moved by hand."""
    def loss_at(w1, b1, w2, b2):
        return F.cross_entropy((F.relu(x @ w1.T + b1) * mask) @ w2.T + b2, y)

    theta = [p.detach().double().clone().requires_grad_(True) for p in model.parameters()]
    g = torch.autograd.grad(loss_at(*theta), theta)
    diffs = []
    for eta in etas:
        moved = [(p - eta * gp).detach().requires_grad_(True) for p, gp in zip(theta, g)]
        there = torch.autograd.grad(loss_at(*moved), moved)
        diffs.append(float(torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(there, g)))))
    return np.array(diffs), float(torch.sqrt(sum((t ** 2).sum() for t in g)))


@pytest.mark.parametrize("make", DROPOUT_MODELS.values(), ids=DROPOUT_MODELS.keys())
def test_dropout_model_is_probed_with_one_mask(make):
    """g and every eta point see the same dropout mask (the one torch's generator gives at the
    probe's entry), so grad_diff -> 0 as eta -> 0 and equals a direct computation with that
    mask fixed. (Before: every pass drew a new mask, grad_diff ~ 0.7 ||g|| at eta = 1e-6.)"""
    model = make(torch.float64)
    x, y = mlp_batch(torch.float64)
    etas = [1e-6, 1e-4, 1e-2]
    entry = torch.get_rng_state()
    rec = along_gradient(model, F.cross_entropy, x, y, etas)
    assert torch.equal(torch.get_rng_state(), entry)
    mask = F.dropout(torch.ones(32, 64, dtype=torch.float64), 0.5, training=True)  # from `entry`
    ref_diff, ref_norm = fixed_mask_reference(model, x.double(), y, mask, etas)
    assert rec.grad_norm == pytest.approx(ref_norm, rel=1e-12)
    np.testing.assert_allclose(rec.grad_diff, ref_diff, rtol=1e-8)
    assert rec.grad_diff[0] <= 1e-5 * rec.grad_norm  # ~ eta ||H g||: the function is smooth here
    ratios = rec.grad_diff / np.asarray(etas)
    assert ratios[0] == pytest.approx(ratios[1], rel=1e-3)  # linear in eta as eta -> 0

    torch.set_rng_state(entry)
    rec32 = along_gradient(make(), F.cross_entropy, *mlp_batch(), [1e-3, 1e-2, 1e-1])
    ref32, _ = fixed_mask_reference(model, x.double(), y, mask, [1e-3, 1e-2, 1e-1])
    np.testing.assert_allclose(rec32.grad_diff, ref32, rtol=1e-3)


DROPOUT_POINTS = [("vmap", "cpu"),
                  pytest.param("vmap", "cuda", marks=gpu),
                  pytest.param("streams", "cuda", marks=gpu)]


@pytest.mark.parametrize("make", DROPOUT_MODELS.values(), ids=DROPOUT_MODELS.keys())
@pytest.mark.parametrize("points,device", DROPOUT_POINTS)
def test_dropout_points_vmap_and_streams_equal_sequential(make, points, device):
    """vmap draws one mask for all points (randomness="same"), the same as the sequential
    passes; on CUDA streams each point's pass starts from the same generator state. (Before:
    vmap raised torch's "called random operation while in randomness error mode".)"""
    model = make().to(device)
    x, y = (t.to(device) for t in mlp_batch())
    etas = [1e-3, 1e-2, 1e-1]
    seq = along_gradient(model, F.cross_entropy, x, y, etas, points="sequential")
    other = along_gradient(model, F.cross_entropy, x, y, etas, points=points)
    np.testing.assert_allclose(other.loss, seq.loss, rtol=1e-6)
    np.testing.assert_allclose(other.grad_diff, seq.grad_diff, rtol=1e-5)
    assert seq.grad_diff[0] < 1e-2 * seq.grad_norm  # one mask: small steps, small differences


@pytest.mark.parametrize("make", DROPOUT_MODELS.values(), ids=DROPOUT_MODELS.keys())
def test_probe_leaves_the_training_random_stream_as_it_was(make):
    """Training with a probe on a dropout model draws exactly the masks it draws without one."""
    batches = [mlp_batch(seed=s) for s in range(3)]
    runs = []
    for probe in (LandscapeProbe(every=1, etas=(1e-2, 1e-1), relative=False), None):
        model = make()
        torch.manual_seed(5)
        train_mlp(model, batches, 4, probe)
        runs.append(([p.detach().clone() for p in model.parameters()], torch.rand(3)))
    (with_probe, after_probe), (without, after) = runs
    assert all(torch.equal(a, b) for a, b in zip(with_probe, without))
    assert torch.equal(after_probe, after)


def train_mlp(model, batches, steps, probe=None, lr=0.05):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = F.cross_entropy if probe is None else probe.attach(model, opt, F.cross_entropy)
    for step in range(steps):
        x, y = batches[step % len(batches)]
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return probe


def probe_passes(make, reuse_grad):
    """The probe's records and how many forward passes each probe made."""
    model, passes = make(), []
    probe = LandscapeProbe(every=2, reuse_grad=reuse_grad)
    model.register_forward_hook(lambda *_: passes.append(hooks.measuring_now()))
    torch.manual_seed(6)
    train_mlp(model, [mlp_batch(seed=s) for s in range(3)], 4, probe)
    return probe.records, sum(passes) / len(probe.records)


def deterministic_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5))


@pytest.mark.parametrize("make", [*DROPOUT_MODELS.values(), deterministic_mlp],
                         ids=[*DROPOUT_MODELS.keys(), "deterministic"])
def test_reuse_grad_is_declined_for_models_that_draw_random_numbers(make):
    """The training step's .grad was taken with the step's own mask: for a model that draws
    random numbers (a Dropout module, or F.dropout seen drawing during the step) the probe
    computes g itself, with its mask; a deterministic model still saves that pass."""
    fresh, fresh_passes = probe_passes(make, reuse_grad=False)
    reused, reused_passes = probe_passes(make, reuse_grad=True)
    assert len(fresh) == len(reused) == 2 and fresh_passes == 5  # g + 4 points
    if make is deterministic_mlp:
        assert reused_passes == 4
        for a, b in zip(fresh, reused):
            np.testing.assert_allclose(b.grad_diff, a.grad_diff, rtol=1e-5)
    else:
        assert reused_passes == 5
        for a, b in zip(fresh, reused):
            np.testing.assert_array_equal(b.grad_diff, a.grad_diff)
            assert b.beta == a.beta


# --- steps below the parameters' resolution ----------------------------------------------------


def test_step_rounding_closed_form():
    """theta = 1 in float32 (spacing 2^-24 below 1): a step of 1/2 is exact, one of 2^-30 is
    lost (theta - eta g == theta), one of 1.25 * 2^-24 becomes 2^-24 (a fifth lost)."""
    params = {"w": torch.tensor([1.0, 0.0])}
    etas = torch.tensor([0.5, 2.0 ** -30, 1.25 * 2.0 ** -24])
    rounding = step_rounding(params, [torch.tensor([1.0, 0.0])], etas)
    np.testing.assert_allclose(rounding.numpy(), [0.0, 1.0, 0.2], rtol=1e-6)


def test_steps_below_the_parameters_resolution_are_nan_with_one_warning():
    """At lr 1e-9 theta - eta g is (nearly) theta in float32: grad_diff NaN (not 0 or rounding
    noise), beta from the other points only, one warning per process; float64 resolves them."""
    torch.manual_seed(0)
    model = vgg_a(width=0.0625)
    x, y = small_batch(8)
    _warn_of_step_resolution.cache_clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lost = along_gradient(model, F.cross_entropy, x, y, [1e-9, 4e-9])
        mixed = along_gradient(model, F.cross_entropy, x, y, [1e-9, 0.1])
    assert [w.category for w in caught] == [StepResolutionWarning]
    assert "float64" in str(caught[0].message)
    assert np.isnan(lost.grad_diff).all() and math.isnan(lost.beta)
    assert np.isfinite(lost.loss).all() and lost.grad_norm > 0
    assert np.isnan(mixed.grad_diff[0]) and np.isfinite(mixed.grad_diff[1])
    assert mixed.beta == pytest.approx(mixed.grad_diff[1] / (mixed.eta[1] * mixed.grad_norm),
                                       rel=1e-12)

    with warnings.catch_warnings():
        warnings.simplefilter("error", StepResolutionWarning)
        _warn_of_step_resolution.cache_clear()
        in_float64 = along_gradient(copy.deepcopy(model).double(), F.cross_entropy, x.double(),
                                    y, [1e-9, 4e-9])
        at_real_lr = along_gradient(model, F.cross_entropy, x, y, [0.025, 0.05, 0.1, 0.2])
    assert np.isfinite(in_float64.grad_diff).all() and in_float64.beta > 0
    assert np.isfinite(at_real_lr.grad_diff).all()
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(params.values()))
    rounding = step_rounding({n: p.detach() for n, p in params.items()}, grads,
                             torch.tensor([0.025]))
    assert float(rounding) < STEP_ROUNDING_LIMIT / 100  # lr 0.05: far from the limit
