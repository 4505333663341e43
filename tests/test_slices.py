"""landscape.probes.slices against direct computations on deep copies (float64, 1e-10)."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from landscape.probes.slices import (evaluate_points, evaluate_weights, grid_coords,
                                     hessian_directions, interpolation_direction,
                                     normalize_direction, pca_directions, project,
                                     random_direction)
from landscape.probes import slices
from landscape.probes.context import trainable_parameters


def small_model(seed=0, bn=True):
    torch.manual_seed(seed)
    layers = [nn.Conv2d(3, 4, 3, padding=1)]
    layers += [nn.BatchNorm2d(4)] if bn else []
    layers += [nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 8)]
    layers += [nn.BatchNorm1d(8)] if bn else []
    layers += [nn.ReLU(), nn.Linear(8, 3)]
    model = nn.Sequential(*layers).double()
    with torch.no_grad():  # running statistics away from (0, 1), so a reset would show
        model.train()
        model(torch.randn(64, 3, 6, 6, dtype=torch.float64) * 2 + 1)
    return model


def batches(seed=1, n=3, size=16):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 6, 6, generator=g, dtype=torch.float64),
             torch.randint(0, 3, (size,), generator=g)) for _ in range(n)]


def direct_loss(model, params, data, mode="batch"):
    """The mean loss and accuracy over ``data`` of a deep copy holding ``params``."""
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in twin.named_parameters():
            p.copy_(params[name])
        if mode == "running":
            for m in twin.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.reset_running_stats()
                    m.momentum = None
            twin.train()
            for x, _ in data:
                twin(x)
            twin.eval()
        else:
            twin.train()
        total = sum(len(y) for _, y in data)
        out = [(twin(x), y) for x, y in data]
        loss = sum(float(F.cross_entropy(z, y)) * len(y) for z, y in out) / total
        acc = sum(int((z.argmax(1) == y).sum()) for z, y in out) / total
    return loss, acc


def state_of(model):
    return ({n: t.clone() for n, t in model.state_dict().items()},
            [m.training for m in model.modules()], torch.get_rng_state(),
            [getattr(m, "momentum", None) for m in model.modules()])


def assert_same_state(model, before):
    params, flags, rng, momenta = before
    for n, t in model.state_dict().items():
        assert torch.equal(t, params[n]), n
    assert [m.training for m in model.modules()] == flags
    assert torch.equal(torch.get_rng_state(), rng)
    assert [getattr(m, "momentum", None) for m in model.modules()] == momenta


def plane(model):
    theta = trainable_parameters(model)
    d1 = normalize_direction(random_direction(theta, 1), theta, "filter", "zero")
    d2 = normalize_direction(random_direction(theta, 2), theta, "filter", "zero")
    return theta, d1, d2


@pytest.mark.parametrize("points", ["sequential", "vmap"])
@pytest.mark.parametrize("mode", ["batch", "running"])
def test_grid_points_equal_deep_copy(points, mode):
    model, data = small_model(), batches()
    model.eval()  # a mode the slice must give back
    theta, d1, d2 = plane(model)
    coords = grid_coords([np.array([-0.5, 0.0, 0.7]), np.array([0.0, 0.3])])
    before = state_of(model)
    values = evaluate_points(model, F.cross_entropy, data, theta, [d1, d2], coords, mode, points,
                             chunk=4)
    assert_same_state(model, before)
    for (a, b), loss, acc in zip(coords, values.loss, values.accuracy):
        at = {n: theta[n] + a * d1[n] + b * d2[n] for n in theta}
        want_loss, want_acc = direct_loss(model, at, data, mode)
        assert loss == pytest.approx(want_loss, abs=1e-10, rel=1e-10)
        assert acc == want_acc
    centre = values.loss[(coords == 0).all(1)][0]  # (0, 0): the model's own loss
    assert centre == pytest.approx(direct_loss(model, theta, data, mode)[0], abs=1e-10)


class ViewsActivations(nn.Module):
    """A conv net flattening with ``view``, which a channels-last activation refuses."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.bn, self.fc = nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2), nn.Linear(32, 3)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        return self.fc(h.view(len(h), -1))


@pytest.mark.parametrize("make, channels_last", [(small_model, True),
                                                 (lambda: ViewsActivations().double(), False)])
def test_sequential_points_layout(make, channels_last):
    """On the CPU an image model runs channels-last when it accepts that layout, else as
    given; either way every point equals the deep copy's loss in the default layout."""
    model, data = make(), batches()
    theta, d1, d2 = plane(model)
    assert slices._channels_last_runs(model, data, theta, torch.device("cpu")) is channels_last
    coords = grid_coords([np.array([-0.4, 0.6]), np.array([0.0, 0.5])])
    before = state_of(model)
    values = evaluate_points(model, F.cross_entropy, data, theta, [d1, d2], coords,
                             points="sequential")
    assert_same_state(model, before)
    for (a, b), loss in zip(coords, values.loss):
        at = {n: theta[n] + a * d1[n] + b * d2[n] for n in theta}
        assert loss == pytest.approx(direct_loss(model, at, data)[0], abs=1e-10, rel=1e-10)


def test_running_mode_differs_from_the_centres_statistics():
    """Away from the centre the stale running statistics give another loss than re-estimated
    ones: the re-estimation is not a no-op."""
    model, data = small_model(), batches()
    theta, d1, _ = plane(model)
    at = {n: theta[n] + 0.8 * d1[n] for n in theta}
    fresh = evaluate_weights(model, F.cross_entropy, data, [at], "running").loss[0]
    twin = copy.deepcopy(model).eval()
    with torch.no_grad():
        for n, p in twin.named_parameters():
            p.copy_(at[n])
        stale = sum(float(F.cross_entropy(twin(x), y)) * len(y) for x, y in data) / 48
    assert abs(fresh - stale) > 1e-3


def test_filter_normalization():
    model = small_model()
    theta = trainable_parameters(model)
    raw = random_direction(theta, 0)
    d = normalize_direction(raw, theta, "filter", "zero")
    for name, w in theta.items():
        if w.dim() > 1:
            assert torch.allclose(d[name].flatten(1).norm(dim=1), w.flatten(1).norm(dim=1),
                                  rtol=1e-12)
            cos = F.cosine_similarity(d[name].flatten(1), raw[name].flatten(1), dim=1)
            assert torch.allclose(cos, torch.ones_like(cos))  # only rescaled
        else:
            assert torch.count_nonzero(d[name]) == 0  # zero: biases and BN entries stay put
    copied = normalize_direction(raw, theta, "layer", "copy")
    for name, w in theta.items():
        if w.dim() <= 1:
            assert torch.equal(copied[name], w)
        else:
            assert float(copied[name].norm()) == pytest.approx(float(w.norm()), rel=1e-12)
    one = normalize_direction(raw, theta, "none", "filter")
    for name, w in theta.items():
        if w.dim() <= 1:
            assert float(one[name].norm()) == pytest.approx(float(w.norm()), rel=1e-12)
        else:
            assert torch.equal(one[name], raw[name])


def test_random_direction_is_seeded_and_dtype_independent():
    model = small_model()
    theta = trainable_parameters(model)
    a, b = random_direction(theta, 7), random_direction(theta, 7)
    single = random_direction({n: p.float() for n, p in theta.items()}, 7)
    for n in theta:
        assert torch.equal(a[n], b[n])
        assert torch.equal(single[n], a[n].float())
    assert not torch.equal(random_direction(theta, 8)["0.weight"], a["0.weight"])


def test_pca_recovers_a_known_plane():
    g = torch.Generator().manual_seed(0)
    shapes = {"w": (5, 4), "b": (5,)}
    end = {n: torch.randn(s, generator=g, dtype=torch.float64) for n, s in shapes.items()}
    u, v = (torch.randn(25, generator=g, dtype=torch.float64) for _ in range(2))
    steps = torch.linspace(0, 1, 8, dtype=torch.float64)
    points = [(3 * (1 - t) ** 2, torch.sin(4 * t)) for t in steps]
    trajectory = []
    for a, b in points:
        flat = torch.cat([end["w"].reshape(-1), end["b"]]) + a * u + b * v
        trajectory.append({"w": flat[:20].view(5, 4), "b": flat[20:]})
    found = pca_directions(trajectory, end)
    assert found.explained.sum() == pytest.approx(1.0, abs=1e-12)
    basis = torch.stack([torch.cat([d["w"].reshape(-1), d["b"]]) for d in found.directions], 1)
    assert torch.allclose(basis.T @ basis, torch.eye(2, dtype=torch.float64), atol=1e-12)
    for vector in (u, v):  # u and v lie in the found plane
        inside = basis @ (basis.T @ vector)
        assert torch.allclose(inside, vector, atol=1e-10)
    # the coordinates reproduce each theta_t - theta_end, and project() agrees
    np.testing.assert_allclose(project(trajectory, end, found.directions), found.coords,
                               atol=1e-10)
    for t, (a, b) in zip(found.coords, points):
        rebuilt = basis @ torch.as_tensor(t)
        want = a * u + b * v
        assert torch.allclose(rebuilt, want, atol=1e-10)


def test_hessian_directions_curvature():
    """Along a top eigenvector the slice's second difference is its eigenvalue."""
    model, data = small_model(), batches(n=1, size=32)
    x, y = data[0]
    (d1, d2), values = hessian_directions(model, F.cross_entropy, x, y, k=2, tol=1e-10)
    theta = trainable_parameters(model)
    flat = [torch.cat([d[n].reshape(-1) for n in theta]) for d in (d1, d2)]
    assert float(flat[0] @ flat[1]) == pytest.approx(0, abs=1e-8)
    assert float(flat[0].norm()) == pytest.approx(1, abs=1e-10)
    h = 1e-3
    f = evaluate_points(model, F.cross_entropy, data, theta, [d1],
                        np.array([[-h], [0.0], [h]])).loss
    assert (f[0] + f[2] - 2 * f[1]) / h ** 2 == pytest.approx(values[0], rel=1e-4)


def test_interpolation_ends_are_the_two_points():
    a, b = small_model(0), small_model(1)
    data = batches()
    start, end = trainable_parameters(a), trainable_parameters(b)
    d = interpolation_direction(start, end)
    values = evaluate_points(a, F.cross_entropy, data, start, [d], np.array([[0.0], [1.0]]))
    assert values.loss[0] == pytest.approx(direct_loss(a, start, data)[0], abs=1e-10)
    assert values.loss[1] == pytest.approx(direct_loss(a, end, data)[0], abs=1e-10)


def test_bad_choices_are_refused():
    model = small_model()
    theta = trainable_parameters(model)
    with pytest.raises(ValueError, match="normalization must be one of"):
        normalize_direction(theta, theta, "filters")
    with pytest.raises(ValueError, match="bn_mode must be one of"):
        evaluate_weights(model, F.cross_entropy, batches(), [theta], "eval")
