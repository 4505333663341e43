"""Claims beyond Santurkar et al., judged from the file (plain numpy on ``read_sweep``'s runs).

Runs are compared as in ``findings``: the same architecture (``model_family``), learning rate
and every other setting but the normalization, the seed -- and the depth (``--depth``), which
these claims are about. Each claim is "not measured here" when the runs lack the instrument
it needs, saying which. Rules (docs/report.md says the same):

1. BN removes the Hessian's outliers (Ghorbani et al. 2019): over every spectrum row in BN
   mode ``batch`` (probed steps, Hessian sets, seeds, depths), BN's median outlier count is
   below the median without BN.
2. With population statistics the outliers return: the BN runs' median outlier count with
   BN on its running statistics (``--hessian-bn running|both``) is above the median with
   batch statistics, at the same probed steps.
3. BN's gradients grow with depth at initialization (Yang et al. 2019): at step 0 the BN
   runs' per-layer growth factor (||g_1|| / ||g_L||)^(1/(L - 1)) -- ||g_l|| the gradient norm
   of weight layer l's weight, L the weight layers -- is above 1 at every depth measured
   (median over seeds); with two depths or more, ||g_1|| / ||g_L|| also rises with depth.
4. BN keeps the rank (Daneshmand et al. 2020): at step 0, the effective rank of the last
   hidden representation (the output of weight layer L - 1), as a fraction of its largest
   possible value, is higher with BN than without at every depth measured.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Sequence

import numpy as np

from ..store import RunData
from .findings import FAILS, HOLDS, UNMEASURED, Comparison, Finding, comparisons

SPECTRAL_CLAIMS = ("BN removes the Hessian's outliers",
                   "with population statistics the outliers return",
                   "BN's gradients grow with depth at init",
                   "BN keeps the rank")
IGNORED = ("model", "norm", "lr", "depth")  # what a comparison's runs may differ in, and seed


def _outlier_counts(runs: Sequence[RunData], mode: str) -> np.ndarray:
    parts = [r.spectrum.outliers[r.spectrum.rows(mode)] for r in runs if r.spectrum is not None]
    return np.concatenate(parts) if parts else np.zeros(0)


def _outliers_claim(without: list[RunData], with_bn: list[RunData]) -> Finding:
    claim = SPECTRAL_CLAIMS[0]
    bn, plain = _outlier_counts(with_bn, "batch"), _outlier_counts(without, "batch")
    if not len(bn) or not len(plain):
        return Finding(claim, UNMEASURED, "needs --spectrum-every on runs with and without BN")
    share = {name: np.median(np.concatenate([r.spectrum.grad_in_outliers[r.spectrum.rows(
        "batch")] for r in runs])) for name, runs in (("bn", with_bn), ("plain", without))}
    verdict = HOLDS if np.median(bn) < np.median(plain) else FAILS
    return Finding(claim, verdict,
                   f"median outliers {np.median(bn):g} with BN vs {np.median(plain):g} without "
                   f"({len(bn)} vs {len(plain)} densities); gradient share in the outliers' "
                   f"eigenspace {share['bn']:.3g} vs {share['plain']:.3g}")


def _population_claim(with_bn: list[RunData]) -> Finding:
    claim = SPECTRAL_CLAIMS[1]
    batch, running = _outlier_counts(with_bn, "batch"), _outlier_counts(with_bn, "running")
    if not len(batch) or not len(running):
        return Finding(claim, UNMEASURED, "needs BN runs with --spectrum-every and "
                                          "--hessian-bn both")
    verdict = HOLDS if np.median(running) > np.median(batch) else FAILS
    return Finding(claim, verdict, f"BN runs' median outliers {np.median(running):g} on running "
                                   f"statistics vs {np.median(batch):g} on batch statistics "
                                   f"({len(running)} densities each)")


def _at_init(runs: Sequence[RunData]) -> dict[int, list[RunData]]:
    """Runs with a rank probe at step 0, by their number of weight layers."""
    out: dict[int, list[RunData]] = defaultdict(list)
    for r in runs:
        if r.ranks is not None and len(r.ranks.step) and r.ranks.step[0] == 0:
            out[len(r.ranks.layer)].append(r)
    return dict(sorted(out.items()))


def growth_factor(run: RunData) -> tuple[float, float]:
    """(||g_1|| / ||g_L||, its per-layer factor) at step 0."""
    g = run.ranks.grad_norm[0]
    ratio = g[0] / g[-1] if g[-1] > 0 else math.inf
    return ratio, ratio ** (1 / max(len(g) - 1, 1))


def _growth_claim(with_bn: list[RunData]) -> Finding:
    claim = SPECTRAL_CLAIMS[2]
    depths = _at_init(with_bn)
    if not depths:
        return Finding(claim, UNMEASURED, "needs BN runs with --rank-every")
    ratios = {d: np.median([growth_factor(r)[0] for r in at]) for d, at in depths.items()}
    factors = {d: np.median([growth_factor(r)[1] for r in at]) for d, at in depths.items()}
    grows = all(f > 1 for f in factors.values())
    if len(ratios) > 1:
        grows &= bool(np.all(np.diff(list(ratios.values())) > 0))
    return Finding(claim, HOLDS if grows else FAILS, "; ".join(
        f"{d} layers: ‖g₁‖/‖g_L‖ {ratios[d]:.3g}, per layer ×{factors[d]:.3g}" for d in depths))


def last_hidden_rank(run: RunData) -> float:
    """Effective rank of the output of weight layer L - 1 at step 0, over its largest value."""
    r = run.ranks
    col = max(len(r.layer) - 2, 0)
    return float(r.effective_rank[0, col] / max(r.size[0, col], 1))


def _rank_claim(without: list[RunData], with_bn: list[RunData]) -> Finding:
    claim = SPECTRAL_CLAIMS[3]
    bn, plain = _at_init(with_bn), _at_init(without)
    shared = sorted(bn.keys() & plain.keys())
    if not shared:
        return Finding(claim, UNMEASURED, "needs --rank-every on runs of one depth with and "
                                          "without BN")
    pairs = {d: (np.median([last_hidden_rank(r) for r in bn[d]]),
                 np.median([last_hidden_rank(r) for r in plain[d]])) for d in shared}
    keeps = all(b > p for b, p in pairs.values())
    return Finding(claim, HOLDS if keeps else FAILS, "effective rank of the last hidden layer / "
                   "its largest at init, with vs without BN: " + "; ".join(
                       f"{d} layers {b:.3g} vs {p:.3g}" for d, (b, p) in pairs.items()))


def spectral_findings(runs: Sequence[RunData]) -> list[tuple[Comparison, list[Finding]]]:
    """The four claims for every group of runs that measured any of their instruments."""
    measured = [r for r in runs if r.spectrum is not None or r.ranks is not None]
    out = []
    for where, at in comparisons(measured, IGNORED).items():
        without = [r for r in at if r.norm == "none"]
        with_bn = [r for r in at if r.norm == "batch"]
        out.append((where, [_outliers_claim(without, with_bn), _population_claim(with_bn),
                            _growth_claim(with_bn), _rank_claim(without, with_bn)]))
    return out
