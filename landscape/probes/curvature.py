"""Curvature of the loss on a batch: Hessian sharpness, trace and curvature along the gradient.

With theta the parameters, B the batch, L the loss on B, H = grad^2 L(theta) and g = grad L:

    lambda_max = the k largest (algebraic) eigenvalues of H          (sharpness)
    trace      = tr H, by Hutchinson: mean_j v_j^T H v_j, v_j Rademacher (+-1 entries)
    gHg        = g^T H g / ||g||^2                                   (curvature along the gradient)

Gradient descent on a quadratic with step size eta is stable only while lambda_max < 2 / eta
(heavy-ball momentum mu: (2 + 2 mu) / eta): the edge-of-stability line the report draws.

H is never formed: every product H v is a Hessian-vector product by double backward through
one retained graph (a forward and a backward pass on the batch, then one backward-of-backward
per product), so the k eigenvalues cost a few tens of gradient evaluations, whatever the number
of parameters. ``sharpness`` leaves no trace (``context.no_trace``): BatchNorm is in train mode
on the batch's own statistics (buffers are clones), arithmetic is float32 even inside a bf16 or
TF32 training step, parameters, ``.grad``, optimizer and the global RNG are untouched (the
random start vector and the Rademacher vectors come from a private generator seeded by
``seed``). Dropout or noise layers draw once: every product is of the same realized function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from torch import nn

from .context import LossFn, batch_loss, buffer_clones, no_trace, trainable_parameters


@dataclass
class SharpnessRecord:
    """Curvature of the loss on one batch at one point."""

    lambda_max: np.ndarray  # (k,) the k largest Hessian eigenvalues, descending
    trace: float  # Hutchinson estimate of tr H; NaN when not asked for (trace_samples = 0)
    trace_stderr: float  # its standard error: std of the samples / sqrt(samples); NaN likewise
    gHg: float  # g^T H g / ||g||^2; NaN when g = 0
    iterations: int  # Hessian-vector products the eigensolver made
    residual: np.ndarray  # (k,) ||H v - lambda v|| / |lambda| of each returned pair (unit v)
    grad_norm: float  # ||g||
    loss: float  # L(theta)
    eigenvectors: np.ndarray | None = None  # (P, k) float64, when asked (keep_vectors)
    step: int | None = None  # training step, when taken inside a training loop


class HessianOperator:
    """H v for flat vectors v, by double backward through one retained graph.

    Built inside ``no_trace``: one forward and backward pass at ``params`` on the batch with
    ``create_graph=True``; every ``matvec`` is then one backward pass of the gradient.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor,
                 targets: torch.Tensor, params: dict[str, torch.Tensor]):
        self._leaves = [p.detach().requires_grad_(True) for p in params.values()]
        names = list(params)
        # batch_loss: any input shape (tuples, keyword arguments, accumulated Batches) and the
        # probe's one set of random draws, like every other probe.
        self.loss = batch_loss(model, loss_fn, inputs, targets, dict(zip(names, self._leaves)),
                               buffer_clones(model))
        grads = torch.autograd.grad(self.loss, self._leaves, create_graph=True,
                                    allow_unused=True)
        self._grads = [torch.zeros_like(p) if g is None else g
                       for p, g in zip(self._leaves, grads)]
        self._connected = [g.requires_grad for g in self._grads]  # a zero gradient has H = 0
        self.shapes = [p.shape for p in self._leaves]
        self.sizes = [p.numel() for p in self._leaves]
        self.size = sum(self.sizes)
        self.dtype, self.device = self._leaves[0].dtype, self._leaves[0].device
        self.products = 0

    def gradient(self) -> torch.Tensor:
        return torch.cat([g.detach().reshape(-1) for g in self._grads])

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return [t.view(s) for t, s in zip(flat.split(self.sizes), self.shapes)]

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """H v for a flat (P,) tensor v on the parameters' device and dtype."""
        self.products += 1
        outputs = [g for g, c in zip(self._grads, self._connected) if c]
        tangents = [t for t, c in zip(self.split(v), self._connected) if c]
        leaves = self._leaves
        hv = torch.autograd.grad(outputs, leaves, grad_outputs=tangents, retain_graph=True,
                                 allow_unused=True)
        return torch.cat([torch.zeros(p.numel(), dtype=self.dtype, device=self.device)
                          if h is None else h.reshape(-1) for p, h in zip(leaves, hv)])


def _top_eigenpairs(op: HessianOperator, k: int, tol: float,
                    v0: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The k largest algebraic eigenpairs of H by ARPACK's implicitly restarted Lanczos."""
    def matvec(x: np.ndarray) -> np.ndarray:
        v = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64).reshape(-1))
        return op.matvec(v.to(op.device, op.dtype)).to("cpu", torch.float64).numpy()

    linear = LinearOperator((op.size, op.size), matvec=matvec, dtype=np.float64)
    # Few Lanczos vectors (ncv): each is one Hessian-vector product before the first restart,
    # and a warm start (the last probe's eigenvector) usually converges in the first cycle.
    ncv = min(op.size, max(2 * k + 1, k + 8))
    # Restarts: ARPACK's own default (10 P), at least 100; tol is what stops it (on VGG-A a
    # warm-started probe took 10-15 products, one or two cycles: benchmarks/RESULTS.md).
    maxiter = max(100, 10 * op.size)
    start = v0.to("cpu", torch.float64).numpy()
    try:
        values, vectors = eigsh(linear, k=k, which="LA", tol=tol, ncv=ncv, maxiter=maxiter,
                                v0=start)
    except ArpackNoConvergence as partial:  # keep what converged; the residual says the rest
        values, vectors = partial.eigenvalues, partial.eigenvectors
        if len(values) < k:
            raise RuntimeError(f"sharpness: Lanczos found {len(values)} of {k} eigenvalues "
                               f"in {maxiter} restarts") from partial
    order = np.argsort(values)[::-1]
    return values[order], vectors[:, order]


def _dense_eigenpairs(op: HessianOperator, k: int) -> tuple[np.ndarray, np.ndarray]:
    """All of H by P products, for models with too few parameters for Lanczos (P <= k + 1)."""
    eye = torch.eye(op.size, dtype=op.dtype, device=op.device)
    dense = torch.stack([op.matvec(e) for e in eye], 1).to("cpu", torch.float64)
    values, vectors = torch.linalg.eigh((dense + dense.T) / 2)
    return values.flip(0)[:k].numpy(), vectors.flip(1)[:, :k].numpy()


def top_eigenpairs(op: HessianOperator, k: int, tol: float,
                   start: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The k largest eigenpairs of ``op``: Lanczos (ARPACK), or dense for P <= k + 1."""
    if k + 1 >= op.size:
        return _dense_eigenpairs(op, k)
    return _top_eigenpairs(op, k, tol, start)


def sharpness(model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor,
              k: int = 1, trace_samples: int = 0, tol: float = 1e-3, seed: int = 0,
              v0: np.ndarray | torch.Tensor | None = None,
              keep_vectors: bool = False) -> SharpnessRecord:
    """The k largest Hessian eigenvalues, Hutchinson's trace and gHg of the loss on a batch.

    Eigensolver: ARPACK's implicitly restarted Lanczos (``scipy.sparse.linalg.eigsh``,
    ``which="LA"``) on a ``LinearOperator`` whose matvec is a Hessian-vector product, as the
    edge-of-stability code does. Why: it is the standard, maintained Lanczos with restarts and
    a relative-accuracy stopping rule (``tol``: each Ritz value to ``tol`` relative), handles
    k > 1 and clustered or negative spectra, and needs no tuning; ``torch.lobpcg`` is meant for
    generalized positive-definite problems (H is indefinite) and needs n >= 3k and a good
    block start, and power iteration (PyHessian) converges at the rate lambda_2 / lambda_1,
    with no guarantee at a given tolerance. The Lanczos vectors live on the host in float64;
    the products run on the model's device in its dtype (one host round trip per product:
    negligible next to a backward pass on a CPU, and a probe every N steps on a GPU).

    ``tol`` is ARPACK's relative accuracy of the eigenvalues; ``residual`` reports
    ||H v - lambda v|| / |lambda| of each returned pair (one more product per pair).
    ``v0`` warm-starts Lanczos (a sweep passes the previous probe's top eigenvector: the top
    eigenvector moves slowly, so fewer products); otherwise the start is a random vector from
    ``seed``. ``trace_samples`` > 0 adds Hutchinson's estimate with that many Rademacher
    vectors (one product each). The model, its ``.grad``, buffers and the RNG are untouched.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"sharpness: k must be a positive integer, got {k!r}")
    if isinstance(trace_samples, bool) or not isinstance(trace_samples, int) or trace_samples < 0:
        raise ValueError(f"sharpness: trace_samples must be an integer >= 0, got {trace_samples!r}")
    if not (isinstance(tol, (int, float)) and 0 <= tol < 1):
        raise ValueError(f"sharpness: tol must be in [0, 1), got {tol!r}")
    params = trainable_parameters(model)
    if not params:
        raise ValueError("sharpness: the model has no trainable parameters")
    size = sum(p.numel() for p in params.values())
    if k > size:
        raise ValueError(f"sharpness: k = {k} exceeds the number of parameters ({size})")
    device = next(iter(params.values())).device
    generator = torch.Generator().manual_seed(seed)  # private: the global RNG is never drawn
    with no_trace(model, device):
        op = HessianOperator(model, loss_fn, inputs, targets, params)
        # Drawn even when v0 is given, so that the Rademacher vectors depend on seed alone.
        start = torch.randn(op.size, generator=generator, dtype=torch.float64)
        if v0 is not None:
            start = torch.as_tensor(v0, dtype=torch.float64).reshape(-1)
        if start.numel() != op.size:
            raise ValueError(f"sharpness: v0 has {start.numel()} entries, the model "
                             f"{op.size} parameters")
        values, vectors = top_eigenpairs(op, k, tol, start)
        iterations = op.products
        residual = _residuals(op, values, vectors)
        g = op.gradient()
        g_norm = float(torch.linalg.vector_norm(g))
        gHg = math.nan
        if g_norm > 0:
            unit = g / g_norm
            gHg = float(unit @ op.matvec(unit))
        trace, trace_stderr = hutchinson(op, trace_samples, generator)
        loss = float(op.loss.detach())
    return SharpnessRecord(lambda_max=values.astype(np.float64), trace=trace,
                           trace_stderr=trace_stderr, gHg=gHg, iterations=iterations,
                           residual=residual, grad_norm=g_norm, loss=loss,
                           eigenvectors=vectors if keep_vectors else None)


def _residuals(op: HessianOperator, values: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    out = []
    for value, vector in zip(values, vectors.T):
        v = torch.from_numpy(np.ascontiguousarray(vector)).to(op.device, op.dtype)
        v = v / torch.linalg.vector_norm(v)
        r = float(torch.linalg.vector_norm(op.matvec(v) - float(value) * v))
        out.append(r / abs(value) if value != 0 else r)
    return np.asarray(out, np.float64)


def hutchinson(op: HessianOperator, samples: int, generator: torch.Generator
                ) -> tuple[float, float]:
    """mean_j v_j^T H v_j over Rademacher v_j, and its standard error (NaN for 1 sample)."""
    if samples == 0:
        return math.nan, math.nan
    values = []
    for _ in range(samples):
        v = torch.randint(0, 2, (op.size,), generator=generator).to(op.device, op.dtype) * 2 - 1
        values.append(float(v @ op.matvec(v)))
    estimates = np.asarray(values)
    stderr = float(estimates.std(ddof=1) / math.sqrt(samples)) if samples > 1 else math.nan
    return float(estimates.mean()), stderr
