"""The paper's claims, judged on the runs of a report (plain numpy on ``read_sweep``'s runs).

Each claim compares runs that differ only in their normalization and seed: the same
architecture (``model_family``: VGG-A, the MLP, the CNN, the DLN), learning rate and every other
setting (dropout, batch size, optimizer, ...), *without BN* (norm ``none``), *with BN* (norm
``batch``), *noisy BN* (``noisy_batch``) and *ℓp* (``l1``, ``l2``, ``linf``). Landscape
measures are medians over the probed steps before the first of the compared runs stops
learning (``phases.common_learning_end``), pooled over seeds. A claim the runs cannot speak to
is "not measured here", with what it needs. Rules (docs/report.md says the same):

1. BN narrows the loss band along the gradient: median over probed steps of
   max_η L(θ − ηg) − min_η L(θ − ηg) is smaller with BN than without.
2. BN's gradients are more predictive: median over probed steps of max_η ‖∇L(θ − ηg) − g‖
   is smaller with BN than without.
3. β_eff sits near 2/LR with BN and spikes without: BN's median β_eff lies within a factor 2
   of the stability edge (2 + 2μ)/LR (plain or heavy-ball SGD), and the peak β_eff without BN
   is higher than the peak with BN.
4. BN does not reduce internal covariate shift: it holds unless BN has both a smaller median
   ‖G − G′‖ and a larger median cos(G, G′) (over ICS steps and layers) than the run without BN.
5. Noisy BN still trains: final test accuracy of noisy BN at least BN's minus 5 points.
6. ℓp normalizers behave like BN: every ℓp run's final test accuracy is at least BN's minus
   5 points, and (when a run without BN is there) its loss band along the gradient is
   narrower than that run's.

Too short to judge (``shortfall``): the paper makes these claims over 15,000 steps of VGG
(10,000 of the DLN), probed every 100 (50) steps, and its earliest reference values (Fig. 4)
are read over steps 1,000-3,000: 20 probed steps. A claim is judged only when every compared
run has at least ``MIN_STEPS`` = 1,000 training steps before the first of them stops learning
and, for a landscape or ICS claim, ``MIN_PROBES`` = 20 probed steps among them (accuracy
claims: 1,000 steps). Before, a network may not have left its initialization: in the quick
start (width 0.25, 78 steps) VGG-A at LR 0.05 goes from minibatch loss 2.31 to 2.28 (chance:
ln 10 = 2.30), and its loss band along the gradient is 42 times narrower than VGG-A+BN's, the
flat start of a network that has not begun to learn, not the landscape the paper compares.
The verdict then says "too short to judge", why, what would be enough, and the numbers so far.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..store import RunData
from .bands import last_finite, max_over_eta, spread_over_eta
from .phases import common_learning_end
from .pools import optimizer, scheduled, setting_key, setting_text, told_apart

HOLDS, FAILS, UNMEASURED = "holds", "does not hold", "not measured here"
TOO_SHORT = "too short to judge"
MIN_STEPS = 1_000  # training steps while the compared runs learn: the paper's values start at 1k
MIN_PROBES = 20  # probed steps among them: the paper's steps 1k-3k at a probe every 100
ACCURACY_MARGIN = 0.05  # "trains about as well": within 5 percentage points of BN
EDGE_FACTOR = 2.0  # "near 2/LR": within a factor 2
LP_NORMS = ("l1", "l2", "linf")

CLAIMS = ("BN narrows the loss band along the gradient",
          "BN's gradients are more predictive",
          "effective β sits near 2/LR with BN and spikes without",
          "BN does not reduce internal covariate shift",
          "Noisy BN still trains",
          "ℓp normalizers behave like BN")


# Across the CIFAR ResNets of one setting (issue 27): the first two claims at every depth.
DEPTH_CLAIM = "BN smooths the landscape at every depth"
RESNET_DEPTH = re.compile(r"^resnet(\d+)$")  # resnet20, resnet32, resnet56 (not resnet18)

# The part of a model's name that names its normalization (models/ registers them so:
# vgg_a, vgg_a_bn, vgg_a_noisy_bn, ..., mlp_bn, cnn_bn, dln_bn); what is left is the architecture.
NORM_SUFFIX = re.compile(r"_(bn|noisy_bn|noise|l1|l2|linf|ln|gn|gbn)$")


def model_family(model: str) -> str:
    """'vgg_a_bn' -> 'vgg_a', 'mlp_bn' -> 'mlp', 'cnn' -> 'cnn'."""
    return NORM_SUFFIX.sub("", model)


@dataclass(frozen=True)
class Comparison:
    """Which runs a row of findings compares: one architecture at one learning rate, with the
    other settings they share (those that vary across the report's runs) spelled out."""

    lr: float
    family: str
    settings: tuple[str, ...] = ()  # 'dropout 0.2', 'batch size 256', ...

    def text(self, families: int) -> str:
        parts = ([self.family] if families > 1 else []) + [f"lr {self.lr:g}", *self.settings]
        return ", ".join(parts)


@dataclass(frozen=True)
class Finding:
    claim: str
    verdict: str  # HOLDS, FAILS, UNMEASURED or TOO_SHORT
    numbers: str  # what the verdict rests on, or what a measurement would need


@dataclass(frozen=True)
class Probed:
    """An instrument whose probed steps a claim's medians are over, and its option."""

    option: str  # what sets its spacing: --probe-every, --ics-every
    steps: Callable[[RunData], np.ndarray]


LANDSCAPE = Probed("--probe-every", lambda r: r.probe.step)
ICS = Probed("--ics-every", lambda r: r.ics.step)


def _steps_per_epoch(run: RunData) -> int:
    per_epoch = run.attrs.get("steps_per_epoch")
    if per_epoch:
        return int(per_epoch)
    epochs = np.asarray(run.steps.epoch)
    return int(np.bincount(epochs[epochs >= 0]).max()) if (epochs >= 0).any() else 0


def shortfall(runs: Sequence[RunData], end: float = math.inf, probed: Probed | None = None
              ) -> str | None:
    """Why ``runs`` are too short to judge a claim (module docstring) and what would be
    enough, or None: every run has ``MIN_STEPS`` training steps before ``end`` (the first
    step at which one of them stops learning) and, with ``probed``, ``MIN_PROBES`` probed
    steps of that instrument among them."""
    steps = [int(np.count_nonzero(np.asarray(r.steps.step) < end)) for r in runs]
    probes = ([int(np.count_nonzero(np.asarray(probed.steps(r)) < end)) for r in runs]
              if probed is not None else [])
    fewest = min(steps, default=0)
    if fewest >= MIN_STEPS and min(probes, default=MIN_PROBES) >= MIN_PROBES:
        return None
    shortest = runs[steps.index(fewest)] if runs else None
    alike = len(set(steps)) == 1 and len(set(probes)) <= 1
    have = (f"{fewest:,} steps" + (f" and {min(probes)} probed steps" if probes else "")
            + (f" before a run stops learning at step {end:g}" if math.isfinite(end) else "")
            + (" per run" if alike else " (the fewest of the compared runs)"))
    need = (f"needs {MIN_STEPS:,}" + (f" and {MIN_PROBES}" if probes else "")
            + " while the runs learn (the paper: 15,000 steps, a probe every 100)")
    if math.isfinite(end) and end < MIN_STEPS:
        return f"{have}; {need}; more steps do not help a run that stops learning"
    if fewest < MIN_STEPS and shortest is not None and (
            shortest.diverged_step is not None or shortest.status == "diverged"):
        return f"{have}; {need}; more steps do not help a run that diverged"
    enough = []
    if fewest < MIN_STEPS and shortest is not None:  # a run cut short: --steps, --epochs
        per_epoch = _steps_per_epoch(shortest)
        enough.append(f"--epochs {math.ceil(MIN_STEPS / per_epoch)} ({per_epoch} steps each)"
                      if per_epoch > 1 else f"--steps {MIN_STEPS}")
    if probes and min(probes) < MIN_PROBES:
        enough.append(f"{probed.option} {max(1, max(fewest, MIN_STEPS) // MIN_PROBES)}")
    return f"{have}; {need}" + (f"; enough here: {', '.join(enough)}" if enough else "")


def _judged(finding: Finding, *why: str | None) -> Finding:
    """``finding``, or "too short to judge" with the first reason in ``why`` (``shortfall``)
    and the numbers so far; a claim not measured stays not measured."""
    reason = next((w for w in why if w is not None), None)
    if finding.verdict == UNMEASURED or reason is None:
        return finding
    return Finding(finding.claim, TOO_SHORT, f"{reason}. So far: {finding.numbers}")


def _probe_values(runs: Sequence[RunData], end: float, per_probe: Callable[[RunData], np.ndarray]
                  ) -> np.ndarray:
    """Per-probe values of ``runs`` at probed steps before ``end``, pooled, finite only."""
    parts = [np.asarray(per_probe(r), dtype=np.float64)[r.probe.step < end] for r in runs]
    values = np.concatenate(parts) if parts else np.array([])
    return values[np.isfinite(values)]


def _median(values: np.ndarray) -> float:
    return float(np.median(values)) if len(values) else math.nan


def loss_band_width(runs: Sequence[RunData], end: float) -> float:
    return _median(_probe_values(runs, end, lambda r: spread_over_eta(r.probe.loss)))


def predictiveness_top(runs: Sequence[RunData], end: float) -> float:
    return _median(_probe_values(runs, end, lambda r: max_over_eta(r.probe.grad_diff)))


def _window(end: float) -> str:
    return "all probed steps" if math.isinf(end) else f"probed steps < {end:g} (both learning)"


def _compare(claim: str, without: list[RunData], with_bn: list[RunData], measure, what: str
             ) -> Finding:
    if not without or not with_bn:
        return Finding(claim, UNMEASURED, "needs runs with and without BN at one learning rate")
    end = common_learning_end(without + with_bn)
    a, b = measure(without, end), measure(with_bn, end)
    if not (math.isfinite(a) and math.isfinite(b)):
        return Finding(claim, UNMEASURED, f"no finite {what} before {end:g}")
    return _judged(Finding(claim, HOLDS if b < a else FAILS,
                           f"median {what}: {b:.3g} with BN vs {a:.3g} without ({_window(end)})"),
                   shortfall(without + with_bn, end, LANDSCAPE))


def _stability_edge(run: RunData, end: float) -> float | None:
    """(2 + 2 mu) / LR; under a learning-rate schedule, at the median LR(t) recorded at the
    probed steps before ``end`` (the window whose beta it is compared with)."""
    if optimizer(run) != "sgd":
        return None
    lr = run.lr
    if scheduled(run):
        rates = _probe_values([run], end, lambda r: r.probe.learning_rate)
        lr = _median(rates[rates > 0])
    return (2.0 + 2.0 * float(run.attrs.get("momentum", 0.0))) / lr


def _beta_claim(without: list[RunData], with_bn: list[RunData]) -> Finding:
    claim = CLAIMS[2]
    if not without or not with_bn:
        return Finding(claim, UNMEASURED, "needs runs with and without BN at one learning rate")
    end = common_learning_end(without + with_bn)
    edge = _stability_edge(with_bn[0], end)
    if edge is None:
        return Finding(claim, UNMEASURED, "the stability edge is known for SGD only")
    beta_bn = _probe_values(with_bn, end, lambda r: r.probe.beta)
    beta_plain = _probe_values(without, end, lambda r: r.probe.beta)
    if not len(beta_bn) or not len(beta_plain):
        return Finding(claim, UNMEASURED, f"no finite effective β before {end:g}")
    median_bn = float(np.median(beta_bn))
    near = 1 / EDGE_FACTOR <= median_bn / edge <= EDGE_FACTOR
    spikes = beta_plain.max() > beta_bn.max()
    return _judged(Finding(claim, HOLDS if near and spikes else FAILS,
                           f"with BN median {median_bn:.3g} = {median_bn / edge:.2f} × edge "
                           f"{edge:.3g} (near: within ×{EDGE_FACTOR:g}: "
                           f"{'yes' if near else 'no'}); peak {beta_plain.max():.3g} without vs "
                           f"{beta_bn.max():.3g} with BN ({_window(end)})"),
                   shortfall(without + with_bn, end, LANDSCAPE))


def _ics_values(runs: Sequence[RunData], end: float, field: str) -> float:
    parts = [np.asarray(getattr(r.ics, field))[np.asarray(r.ics.step) < end].ravel()
             for r in runs if r.ics is not None]
    values = np.concatenate(parts) if parts else np.array([])
    return _median(values[np.isfinite(values)])


def _ics_claim(without: list[RunData], with_bn: list[RunData]) -> Finding:
    claim = CLAIMS[3]
    without = [r for r in without if r.ics is not None]
    with_bn = [r for r in with_bn if r.ics is not None]
    if not without or not with_bn:
        return Finding(claim, UNMEASURED, "needs ICS probes (--ics-every) with and without BN")
    end = common_learning_end(without + with_bn)
    l2 = _ics_values(without, end, "l2"), _ics_values(with_bn, end, "l2")
    cos = _ics_values(without, end, "cosine"), _ics_values(with_bn, end, "cosine")
    if not all(math.isfinite(v) for v in l2 + cos):
        return Finding(claim, UNMEASURED, "no finite ICS values")
    reduced = l2[1] < l2[0] and cos[1] > cos[0]
    return _judged(Finding(claim, FAILS if reduced else HOLDS,
                           f"median ‖G − G′‖ {l2[1]:.3g} with BN vs {l2[0]:.3g} without; median "
                           f"cos(G, G′) {cos[1]:.3f} with BN vs {cos[0]:.3f} without "
                           f"({_window(end)})"),
                   shortfall(without + with_bn, end, ICS))


def _final_accuracy(runs: Sequence[RunData]) -> float:
    values = [last_finite(r.epochs.test_acc) for r in runs]
    values = [v for v in values if math.isfinite(v)]
    return float(np.mean(values)) if values else math.nan


def _trains_like_bn(claim: str, others: list[RunData], with_bn: list[RunData], name: str,
                    without: list[RunData] | None = None) -> Finding:
    if not others or not with_bn:
        return Finding(claim, UNMEASURED, f"needs {name} and BN runs at one learning rate")
    acc_bn = _final_accuracy(with_bn)
    if not math.isfinite(acc_bn):
        return Finding(claim, UNMEASURED, "needs test accuracies (image classification)")
    parts, ok = [], True
    for norm in dict.fromkeys(r.norm for r in others):
        group = [r for r in others if r.norm == norm]
        acc = _final_accuracy(group)
        ok &= math.isfinite(acc) and acc >= acc_bn - ACCURACY_MARGIN
        parts.append(f"{norm} test accuracy {acc:.3f}")
        if without:
            end = common_learning_end(without + group)
            width, width_plain = loss_band_width(group, end), loss_band_width(without, end)
            ok &= math.isfinite(width) and width < width_plain
            parts.append(f"{norm} loss band {width:.3g} vs {width_plain:.3g} without BN")
    parts.append(f"BN test accuracy {acc_bn:.3f} (margin {ACCURACY_MARGIN:g})")
    return _judged(Finding(claim, HOLDS if ok else FAILS, "; ".join(parts)),
                   shortfall(others + with_bn),
                   shortfall(without + others, common_learning_end(without + others), LANDSCAPE)
                   if without else None)


def comparisons(runs: Sequence[RunData], ignore: Sequence[str] = ("model", "norm", "lr")
                ) -> dict[Comparison, list[RunData]]:
    """The runs grouped so that within a group only the normalization and the seed differ
    (and the settings in ``ignore`` beyond the model, its norm and learning rate)."""
    keys = {id(r): setting_key(r, ignore) for r in runs}
    values: dict[str, set] = defaultdict(set)  # a setting's values; None: some run lacks it
    for key in keys.values():
        for name, value in key:
            values[name].add(value)
    for key in keys.values():
        for name in values.keys() - dict(key).keys():
            values[name].add(None)
    varying = sorted(name for name, seen in values.items() if len(seen) > 1)
    varying = [name for name in varying if not told_apart(name, runs, varying)]
    groups: dict[Comparison, list[RunData]] = {}
    for run in runs:
        shared = dict(keys[id(run)])
        where = Comparison(run.lr, model_family(run.model),
                           tuple(setting_text(name, shared.get(name)) for name in varying))
        groups.setdefault(where, []).append(run)
    return dict(sorted(groups.items(), key=lambda item: (item[0].family, item[0].lr,
                                                           item[0].settings)))


def depth_findings(found: dict[Comparison, list[RunData]]) -> list[tuple[Comparison,
                                                                         list[Finding]]]:
    """``DEPTH_CLAIM`` for each learning rate and setting where runs of two or more CIFAR
    ResNet depths were compared: at every depth the BN runs' loss band and gradient
    predictiveness along the gradient are the narrower (the first two claims' measures)."""
    by_setting: dict[tuple, dict[int, list[RunData]]] = {}
    for where, at in found.items():
        depth = RESNET_DEPTH.match(where.family)
        if depth:
            by_setting.setdefault((where.lr, where.settings), {})[int(depth[1])] = at
    return [(Comparison(lr, "resnet" + "/".join(map(str, sorted(depths))), settings),
             [_depth_claim(depths)])
            for (lr, settings), depths in sorted(by_setting.items()) if len(depths) > 1]


def _depth_claim(depths: dict[int, list[RunData]]) -> Finding:
    parts, smoother, short = [], True, []
    for depth, at in sorted(depths.items()):
        without, with_bn = _split(at)
        if not without or not with_bn:
            return Finding(DEPTH_CLAIM, UNMEASURED, f"needs ResNet-{depth} runs with and "
                                                    "without BN")
        end = common_learning_end(without + with_bn)
        band = loss_band_width(with_bn, end), loss_band_width(without, end)
        top = predictiveness_top(with_bn, end), predictiveness_top(without, end)
        if not all(math.isfinite(v) for v in band + top):
            return Finding(DEPTH_CLAIM, UNMEASURED, f"no finite landscape probe at depth {depth}")
        smoother &= band[0] < band[1] and top[0] < top[1]
        parts.append(f"ResNet-{depth}: loss band {band[0]:.3g} with BN vs {band[1]:.3g} "
                     f"without, predictiveness {top[0]:.3g} vs {top[1]:.3g} ({_window(end)})")
        short.append(shortfall(without + with_bn, end, LANDSCAPE))
    return _judged(Finding(DEPTH_CLAIM, HOLDS if smoother else FAILS, "; ".join(parts)), *short)


def _split(at: list[RunData]) -> tuple[list[RunData], list[RunData]]:
    return [r for r in at if r.norm == "none"], [r for r in at if r.norm == "batch"]


def findings(runs: Sequence[RunData]) -> list[tuple[Comparison, list[Finding]]]:
    """Every claim for every group of comparable runs: [(Comparison, [Finding per claim])],
    then ``DEPTH_CLAIM`` across ResNet depths (``depth_findings``)."""
    out, found = [], comparisons(runs)
    for where, at in found.items():
        by_norm = lambda *norms: [r for r in at if r.norm in norms]  # noqa: E731
        without, with_bn = by_norm("none"), by_norm("batch")
        out.append((where, [
            _compare(CLAIMS[0], without, with_bn, loss_band_width, "loss band width along the "
                     "gradient (max − min over η)"),
            _compare(CLAIMS[1], without, with_bn, predictiveness_top, "max over η of "
                     "‖∇L(θ − ηg) − g‖"),
            _beta_claim(without, with_bn),
            _ics_claim(without, with_bn),
            _trains_like_bn(CLAIMS[4], by_norm("noisy_batch"), with_bn, "noisy BN"),
            _trains_like_bn(CLAIMS[5], by_norm(*LP_NORMS), with_bn, "ℓp", without),
        ]))
    return out + depth_findings(found)
