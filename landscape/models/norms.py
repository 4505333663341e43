"""Normalizers, registered into ``landscape.models.NORMS`` where they are defined.

| norm            | after each hidden conv / linear layer                              |
|-----------------|--------------------------------------------------------------------|
| ``none``        | nothing (``nn.Identity``)                                          |
| ``batch``       | BatchNorm (``nn.BatchNorm2d`` / ``nn.BatchNorm1d``, affine)        |
| ``noisy_batch`` | BatchNorm, then ``NoiseInjection`` (Algorithm 1)                   |
| ``noise``       | ``NoiseInjection`` only (the same noise, no BN)                    |
| ``l1``, ``l2``, ``linf`` | ``LpBatchNorm(p=1, 2, inf)``                              |
| ``layer``       | LayerNorm (``GroupNorm(1, c)`` after convs); not in the paper      |
| ``group``       | GroupNorm, G = gcd(c, min(32, c // 2)) groups; not in the paper    |
| ``ghost_batch`` | Ghost BatchNorm (``GhostBatchNorm``): BN over sub-batches of 32    |

**Noise (Algorithm 1).** For activations a of shape (N, C) or (N, C, H, W), at every training
forward pass and for each layer: per unit c, mu_c ~ U(-n_mu, n_mu) and sigma_c ~ U(1, n_sigma);
per sample, unit (and, in conv layers, position: height and width count as batch dimensions)
m ~ U(mu_c - r_mu, mu_c + r_mu) and s ~ N(sigma_c, r_sigma); the output is s * a + m.
Defaults n_mu = 0.5, n_sigma = 1.25, r_mu = r_sigma = 0.1. Nothing happens in eval mode.

Reproducibility and "no trace": each noise layer keeps a buffer ``noise_key = [seed, draws]``.
A training forward seeds a fresh generator with (seed, draws) and increments ``draws``; the
seed is ``torch.initial_seed() * 1000 + layer index``, i.e. the run's ``--seed`` (a run
seeds torch right before building the model) -- the global RNG is never consumed, so the
initial weights equal those of the model without noise. Because the key is a buffer, probes
(which run on clones of the buffers) see the same noise draw at every point they evaluate
and leave the training noise stream untouched.

**lp batch normalization (section 3.3).** Per unit, over the batch (and positions):

    y = gamma * (x - mean_B x) / S_p + beta,
    S_p = (mean_B |x|^p + eps)^(1/p)   for p = 1, 2,      S_inf = max_B |x| + eps,

with the lp "norm" measured on x *before* the mean is subtracted, eps = 1e-5. For p = 2 and a
zero-mean input, S_2 = sqrt(var_B x + eps): exactly BN's scaling. Running averages of the mean
and S_p (momentum 0.1, as BN) replace the batch statistics in eval mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .registry import Norm, register_norm


@dataclass(frozen=True)
class NoiseParams:
    n_mu: float = 0.5
    n_sigma: float = 1.25
    r_mu: float = 0.1
    r_sigma: float = 0.1


NOISE_DEFAULTS = NoiseParams()


def draw_noise(shape: torch.Size | tuple, generator: torch.Generator,
               params: NoiseParams = NOISE_DEFAULTS, device=None, dtype=torch.float32):
    """(m, s, mu, sigma) of Algorithm 1 for activations of ``shape``; unit axis 1."""
    c = shape[1]

    def uniform(size, lo, hi):
        return lo + (hi - lo) * torch.rand(size, generator=generator, device=device, dtype=dtype)

    mu = uniform((c,), -params.n_mu, params.n_mu)
    sigma = uniform((c,), 1.0, params.n_sigma)
    per_unit = (1, c) + (1,) * (len(shape) - 2)
    m = mu.view(per_unit) + uniform(tuple(shape), -params.r_mu, params.r_mu)
    s = sigma.view(per_unit) + params.r_sigma * torch.randn(tuple(shape), generator=generator,
                                                            device=device, dtype=dtype)
    return m, s, mu, sigma


class NoiseInjection(nn.Module):
    """a -> s * a + m in training mode (Algorithm 1); the identity in eval mode."""

    def __init__(self, num_features: int, params: NoiseParams = NOISE_DEFAULTS):
        super().__init__()
        self.num_features = num_features
        self.params = params
        self.register_buffer("noise_key", torch.zeros(2, dtype=torch.int64))  # [seed, draws]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        seed, draws = (int(v) for v in self.noise_key.tolist())
        generator = torch.Generator(device=x.device)
        generator.manual_seed((seed * 1_000_003 + draws) % (2 ** 63))
        with torch.no_grad():
            self.noise_key[1] += 1
        m, s, _, _ = draw_noise(x.shape, generator, self.params, x.device)
        return s.to(x.dtype) * x + m.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, {self.params}"


def seed_noise(model: nn.Module, seed: int) -> nn.Module:
    """Give every ``NoiseInjection`` of ``model`` its own stream: seed * 1000 + its index."""
    seed = seed % (2 ** 40)  # torch.initial_seed() may be any 64-bit number
    layers = [m for m in model.modules() if isinstance(m, NoiseInjection)]
    for i, m in enumerate(layers):
        m.noise_key.copy_(torch.tensor([seed * 1000 + i, 0], dtype=torch.int64))
    return model


def lp_scale(x: torch.Tensor, p: float, dims: list[int], eps: float) -> torch.Tensor:
    """S_p of the module docstring, per unit (reduced over ``dims``)."""
    if math.isinf(p):
        return x.abs().amax(dim=dims) + eps
    return (x.abs().pow(p).mean(dim=dims) + eps).pow(1.0 / p)


class LpBatchNorm(nn.Module):
    """Batch normalization by the batch lp norm (see the module docstring for the formula)."""

    def __init__(self, num_features: int, p: float, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        if not (p >= 1):
            raise ValueError(f"LpBatchNorm: p must be >= 1, got {p}")
        self.num_features, self.p, self.eps, self.momentum = num_features, float(p), eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_scale", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = [0] + list(range(2, x.ndim))
        per_unit = (1, -1) + (1,) * (x.ndim - 2)
        if self.training:
            mean = x.mean(dim=dims)
            scale = lp_scale(x, self.p, dims, self.eps)
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
                self.running_scale.lerp_(scale.detach().to(self.running_scale.dtype), self.momentum)
        else:
            mean, scale = self.running_mean, self.running_scale
        y = (x - mean.view(per_unit)) / scale.view(per_unit)
        return y * self.weight.view(per_unit) + self.bias.view(per_unit)

    def extra_repr(self) -> str:
        return f"{self.num_features}, p={self.p:g}, eps={self.eps}, momentum={self.momentum}"


GHOST_BATCH = 32  # samples per sub-batch of Ghost BatchNorm (the ``_gbn`` models)


class GhostBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over sub-batches of ``ghost`` samples in training (see the module docstring);
    for (N, C) and (N, C, ...) inputs."""

    def __init__(self, num_features: int, ghost: int = GHOST_BATCH, **kwargs):
        super().__init__(num_features, **kwargs)
        self.ghost = ghost

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"GhostBatchNorm: expected (N, C, ...) input, got {x.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.shape[0] <= self.ghost:
            return super().forward(x)
        return torch.cat([super(GhostBatchNorm, self).forward(chunk)
                          for chunk in x.split(self.ghost)])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, ghost={self.ghost}"


def group_count(channels: int) -> int:
    return math.gcd(channels, min(32, max(1, channels // 2)))


def _noisy(bn):
    return lambda c: nn.Sequential(bn(c), NoiseInjection(c))


register_norm("none", Norm(conv=lambda c: nn.Identity(), linear=lambda c: nn.Identity()))
register_norm("batch", Norm(conv=nn.BatchNorm2d, linear=nn.BatchNorm1d))
register_norm("noisy_batch", Norm(conv=_noisy(nn.BatchNorm2d), linear=_noisy(nn.BatchNorm1d),
                                  random=True))
register_norm("noise", Norm(conv=NoiseInjection, linear=NoiseInjection, random=True))
for _name, _p in (("l1", 1), ("l2", 2), ("linf", math.inf)):
    register_norm(_name, Norm(conv=lambda c, p=_p: LpBatchNorm(c, p),
                              linear=lambda c, p=_p: LpBatchNorm(c, p)))
register_norm("layer", Norm(conv=lambda c: nn.GroupNorm(1, c), linear=nn.LayerNorm))
register_norm("group", Norm(conv=lambda c: nn.GroupNorm(group_count(c), c),
                            linear=lambda c: nn.GroupNorm(group_count(c), c)))
register_norm("ghost_batch", Norm(conv=GhostBatchNorm, linear=GhostBatchNorm))

# How a model's name says its normalization (``vgg_a_bn``, ``resnet20_gn``, ...): suffix -> norm.
NORM_SUFFIXES = {"": "none", "_bn": "batch", "_noisy_bn": "noisy_batch", "_noise": "noise",
                 "_l1": "l1", "_l2": "l2", "_linf": "linf", "_ln": "layer", "_gn": "group",
                 "_gbn": "ghost_batch"}
