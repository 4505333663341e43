"""The report's Findings (report/findings.py) and learning phases (report/phases.py), on
hand-made sweep files whose values make each claim hold, or fail, by construction."""

import math

import numpy as np
import pytest

from conftest import probe_record
from landscape.cli import main
from landscape.report.build import build_report
from landscape.report.findings import (CLAIMS, DEPTH_CLAIM, FAILS, HOLDS, MIN_PROBES, MIN_STEPS,
                                       TOO_SHORT, UNMEASURED, findings, model_family)
from landscape.report.phases import phase_median, stall_step
from landscape.report.summary import summarize_run
from landscape.store import SweepStore, read_sweep

LR = 0.1
# Long enough to be judged (findings.MIN_STEPS steps and MIN_PROBES probes while learning).
STEPS = 2_000
PROBE_EVERY = 50
EPOCH_STEPS = 100
ICS_EVERY = 100


def add_run(store, model, norm, *, loss_spread=1.0, grad_diff=10.0, beta=20.0, grad_norm=None,
            stall_at=None, after_beta=None, test_acc=0.8, ics=None, diverge=False,
            optimizer="sgd", steps=STEPS, probe_every=PROBE_EVERY, ics_every=ICS_EVERY,
            **settings):
    """A run of ``steps`` steps probed every ``probe_every``: loss band [2, 2 + loss_spread]
    over eta, grad_diff rows rising to ``grad_diff``, beta_eff ``beta`` (an array: per probe). With
    ``stall_at``, the gradient norm drops to 1e-4 of its start from that step on and beta_eff
    becomes ``after_beta`` there. ``ics``: (l2, cosine) at every ICS step and layer."""
    eta = np.array([0.5, 1.0, 2.0, 4.0]) * LR
    suffix = "".join(f"-{k}{v:g}" for k, v in settings.items())  # settings: more attributes
    log = store.run(f"{model}-lr{LR:g}-seed0{suffix}", eta=eta, model=model, norm=norm, lr=LR,
                    seed=0, batch_size=32, optimizer=optimizer, momentum=0.0, **settings)
    step = np.arange(steps)
    norms = np.ones(steps) if grad_norm is None else np.asarray(grad_norm, float)
    if stall_at is not None:
        norms = np.where(step >= stall_at, 1e-4, norms)
    loss = np.full(steps, np.inf) if diverge else 2.0 + 0 * step
    log.add_steps(step=step, epoch=step // EPOCH_STEPS, loss=loss, grad_norm=norms,
                  grad_diff=np.ones(steps), beta_consecutive=np.ones(steps))
    probed = range(0, steps, probe_every)
    betas = np.broadcast_to(np.asarray(beta, float), (len(probed),))
    for i, s in enumerate(probed):
        b = after_beta if stall_at is not None and s >= stall_at else betas[i]
        log.add_probe(probe_record(s, eta, 2.0 + loss_spread * np.array([0, 0.2, 0.5, 1.0]),
                                   grad_diff * np.array([0.25, 0.5, 0.75, 1.0]), b))
    for e in range(steps // EPOCH_STEPS):
        log.add_epoch(epoch=e, steps=EPOCH_STEPS, train_loss=1.0, train_acc=test_acc, test_loss=1.0,
                      test_acc=test_acc, seconds=1.0)
    if ics is not None:
        log.declare("ics", {"step": (np.int64, ()), "l2": (np.float64, (2,)),
                            "cosine": (np.float64, (2,)), "grad_norm": (np.float64, (2,))},
                    {"layer": ["features.4", "features.12"], "layer_index": np.array([5, 10])})
        for s in range(0, steps, ics_every):
            log.append("ics", step=s, l2=np.full(2, ics[0]), cosine=np.full(2, ics[1]),
                       grad_norm=np.ones(2))
    if diverge:
        log.set_attrs(status="diverged", diverged_step=0, steps_completed=steps, seconds=1.0)
    else:
        log.set_attrs(status="completed", steps_completed=steps, seconds=1.0)
    store.flush(log)


def sweep(tmp_path, *runs):
    path = tmp_path / "hand-made.h5"
    store = SweepStore(path, config={"lrs": [LR]}, command="hand-made", overwrite=True)
    for model, norm, kwargs in runs:
        add_run(store, model, norm, **kwargs)
    return read_sweep(path)


def verdicts(sweep_file):
    ((where, found),) = findings(sweep_file.runs)
    assert where.lr == LR and [f.claim for f in found] == list(CLAIMS)
    return {f.claim: f for f in found}


SPIKES = np.where(np.arange(STEPS // PROBE_EVERY) == 7, 45.0, 20.0)  # near 2/LR, one spike


def test_every_claim_holds_when_the_numbers_say_so(tmp_path):
    s = sweep(tmp_path,
              ("vgg_a", "none", dict(loss_spread=3.0, grad_diff=80.0, beta=SPIKES, test_acc=0.78,
                                     ics=(1.0, 0.9))),
              ("vgg_a_bn", "batch", dict(loss_spread=0.4, grad_diff=25.0, beta=19.0,
                                         test_acc=0.83, ics=(2.0, 0.5))),
              ("vgg_a_noisy_bn", "noisy_batch", dict(test_acc=0.81)),
              ("vgg_a_l2", "l2", dict(loss_spread=0.5, test_acc=0.82)))
    found = verdicts(s)
    assert all(f.verdict == HOLDS for f in found.values()), found
    assert "0.4 with BN vs 3 without" in found[CLAIMS[0]].numbers
    assert "25 with BN vs 80 without" in found[CLAIMS[1]].numbers
    assert "0.95 × edge 20" in found[CLAIMS[2]].numbers and "peak 45 without" in \
        found[CLAIMS[2]].numbers


def test_every_claim_fails_when_the_numbers_say_so(tmp_path):
    s = sweep(tmp_path,
              ("vgg_a", "none", dict(loss_spread=0.4, grad_diff=25.0, beta=19.0, test_acc=0.83,
                                     ics=(2.0, 0.5))),
              ("vgg_a_bn", "batch", dict(loss_spread=3.0, grad_diff=80.0, beta=SPIKES,
                                         test_acc=0.80, ics=(1.0, 0.9))),
              ("vgg_a_noisy_bn", "noisy_batch", dict(test_acc=0.10)),
              ("vgg_a_l2", "l2", dict(loss_spread=0.5, test_acc=0.82)))
    found = verdicts(s)
    assert [found[c].verdict for c in CLAIMS] == [FAILS] * 6, found


def test_beta_far_from_the_edge_fails_even_with_spikes_without_bn(tmp_path):
    s = sweep(tmp_path, ("vgg_a", "none", dict(beta=SPIKES * 10)),
              ("vgg_a_bn", "batch", dict(beta=5.0)))  # 5 = 0.25 x 2/LR: not near the edge
    assert verdicts(s)[CLAIMS[2]].verdict == FAILS


@pytest.mark.parametrize("optimizer,verdict", [("sgd", HOLDS), ("SGD", HOLDS),
                                               ("adam", UNMEASURED), ("adamw", UNMEASURED)])
def test_the_stability_edge_claim_knows_sgd_by_either_spelling(optimizer, verdict, tmp_path):
    """Runs write ``sgd`` (files from before the optimizer axis: ``SGD``); both are SGD, with
    the edge 2/LR. (Before: only ``SGD`` was, so every new sweep's claim read "not measured".)"""
    s = sweep(tmp_path, ("vgg_a", "none", dict(beta=SPIKES, optimizer=optimizer)),
              ("vgg_a_bn", "batch", dict(beta=19.0, optimizer=optimizer)))
    assert verdicts(s)[CLAIMS[2]].verdict == verdict


def test_claims_without_their_runs_are_not_measured(tmp_path):
    found = verdicts(sweep(tmp_path, ("vgg_a_bn", "batch", {})))
    assert all(f.verdict == UNMEASURED for f in found.values())
    assert "with and without BN" in found[CLAIMS[0]].numbers
    found = verdicts(sweep(tmp_path, ("vgg_a", "none", {}), ("vgg_a_bn", "batch", {})))
    assert found[CLAIMS[3]].verdict == UNMEASURED and "--ics-every" in found[CLAIMS[3]].numbers


# The gradient norm drops to 1e-4 at STALL: its trailing median over 1% of the steps (20)
# is below 1% of the start from the drop's 11th step on, the step the rule reports.
STALL, STALL_SEEN = 1_000, 1_010


def test_findings_compare_the_phase_where_both_learn(tmp_path):
    """Without BN the run stalls at step 1,010 and its beta_eff collapses to 1 there: over
    the whole run its median beta would sit below BN's; while both learn it is above."""
    s = sweep(tmp_path, ("vgg_a", "none", dict(beta=SPIKES * 1.5, stall_at=STALL,
                                               after_beta=1.0)),
              ("vgg_a_bn", "batch", dict(beta=20.0)))
    without = s.runs[0]
    assert stall_step(without) == STALL_SEEN and stall_step(s.runs[1]) is None
    assert np.median(without.probe.beta) < 20  # the mixed median the phases avoid
    found = verdicts(s)[CLAIMS[2]]
    assert found.verdict == HOLDS
    assert f"probed steps < {STALL_SEEN} (both learning)" in found.numbers
    row = summarize_run(without)
    assert (row.stall_step, row.median_beta, row.median_beta_after) == (STALL_SEEN, 30.0, 1.0)


def test_stall_step_rule(tmp_path):
    rng = np.random.default_rng(0)
    noisy = np.exp(rng.normal(0, 0.5, STEPS))  # minibatch noise around 1
    dip = np.where((np.arange(STEPS) >= 600) & (np.arange(STEPS) < 800), 1e-4, 1.0)
    s = sweep(tmp_path, ("vgg_a", "none", dict(grad_norm=noisy, stall_at=STALL)),
              ("vgg_a_bn", "batch", dict(grad_norm=dip)),  # dips, then learns again
              ("vgg_a_l1", "l1", dict(diverge=True, stall_at=200)))
    assert [stall_step(r) for r in s.runs] == [STALL_SEEN, None, None]


def test_phase_median():
    steps, values = np.arange(6), np.array([1.0, 2, np.nan, 10, 20, 30])
    assert phase_median(steps, values, 3) == 1.5
    assert phase_median(steps, values, 3, after=True) == 20
    assert math.isnan(phase_median(steps, values, 0))


def test_report_opens_with_the_findings_and_info_shows_phases(tmp_path, capsys):
    s = sweep(tmp_path, ("vgg_a", "none", dict(loss_spread=3.0, stall_at=STALL,
                                               after_beta=2.0)),
              ("vgg_a_bn", "batch", dict(loss_spread=0.4)))
    page = build_report([s])
    first = page.index('<section id="')
    assert page[first:].startswith('<section id="findings">')
    assert CLAIMS[0] in page and ">holds<" in page and ">not measured here<" in page
    assert main(["info", str(s.path)]) == 0
    out = capsys.readouterr().out
    assert "stops learning" in out and "median β after" in out
    line = next(x for x in out.splitlines() if x.startswith("vgg_a-lr0.1"))
    assert f" {STALL_SEEN} " in line


def test_claims_compare_one_architecture_under_one_setting(tmp_path):
    """A course grid (MLP and CNN, with and without BN, two dropout rates): each row compares
    a network with its own BN twin under the same dropout, never the MLP with the CNN+BN."""
    s = sweep(tmp_path, *[(model, norm, dict(loss_spread=spread, dropout=dropout))
                          for dropout in (0.0, 0.2)
                          for model, norm, spread in (("mlp", "none", 3.0), ("mlp_bn", "batch", 1.0),
                                                      ("cnn", "none", 1.0), ("cnn_bn", "batch", 2.0))])
    rows = findings(s.runs)
    assert [(w.family, w.lr, w.settings) for w, _ in rows] == [
        ("cnn", LR, ("dropout 0",)), ("cnn", LR, ("dropout 0.2",)),
        ("mlp", LR, ("dropout 0",)), ("mlp", LR, ("dropout 0.2",))]
    band = {w.family: f for w, found in rows for f in found if f.claim == CLAIMS[0]}
    assert band["mlp"].verdict == HOLDS and "1 with BN vs 3 without" in band["mlp"].numbers
    assert band["cnn"].verdict == FAILS and "2 with BN vs 1 without" in band["cnn"].numbers
    assert "mlp, lr 0.1, dropout 0.2" in build_report([s])


@pytest.mark.parametrize("model, family", [("vgg_a", "vgg_a"), ("vgg_a_bn", "vgg_a"),
                                           ("vgg_a_noisy_bn", "vgg_a"), ("vgg_a_linf", "vgg_a"),
                                           ("mlp_bn", "mlp"), ("cnn", "cnn"), ("dln_bn", "dln")])
def test_model_family_is_the_name_without_its_normalization(model, family):
    assert model_family(model) == family


# ---- too short to judge: the rule's two sides ----

LONG_ENOUGH = dict(steps=MIN_STEPS, probe_every=MIN_STEPS // MIN_PROBES)  # 1,000 steps, 20 probes


def _holding_pair(**length):
    """Runs whose numbers make the landscape claims hold, of the given length."""
    return (("vgg_a", "none", dict(loss_spread=3.0, grad_diff=80.0, beta=SPIKES[0], **length)),
            ("vgg_a_bn", "batch", dict(loss_spread=0.4, grad_diff=25.0, beta=19.0, **length)))


def test_runs_of_exactly_the_minimum_are_judged(tmp_path):
    found = verdicts(sweep(tmp_path, *_holding_pair(**LONG_ENOUGH)))
    assert [found[c].verdict for c in CLAIMS[:2]] == [HOLDS, HOLDS]


@pytest.mark.parametrize("length, have, enough", [
    (dict(steps=MIN_STEPS - 1, probe_every=MIN_STEPS // MIN_PROBES),  # probes 0 … 950
     f"{MIN_STEPS - 1} steps and {MIN_PROBES} probed steps per run",
     f"--epochs {MIN_STEPS // EPOCH_STEPS} ({EPOCH_STEPS} steps each)"),
    (dict(steps=STEPS, probe_every=STEPS // (MIN_PROBES - 1) + 1),  # 19 probes in 2,000 steps
     f"{STEPS:,} steps and {MIN_PROBES - 1} probed steps per run",
     f"--probe-every {STEPS // MIN_PROBES}"),
])
def test_one_step_or_probe_fewer_is_too_short_with_why_and_what_would_do(tmp_path, length,
                                                                         have, enough):
    found = verdicts(sweep(tmp_path, *_holding_pair(**length)))
    for claim in CLAIMS[:3]:
        assert found[claim].verdict == TOO_SHORT, found[claim]
        numbers = found[claim].numbers
        assert numbers.startswith(have) and f"needs {MIN_STEPS:,} and {MIN_PROBES}" in numbers
        assert f"enough here: {enough}" in numbers
    assert "So far: median loss band width" in found[CLAIMS[0]].numbers
    assert "0.4 with BN vs 3 without" in found[CLAIMS[0]].numbers  # the numbers stay readable
    assert found[CLAIMS[3]].verdict == UNMEASURED  # no ICS runs: still "not measured here"


def test_a_run_that_stops_learning_early_is_too_short_and_more_steps_would_not_help(tmp_path):
    plain, bn = _holding_pair()
    s = sweep(tmp_path, (plain[0], plain[1], dict(plain[2], stall_at=500, after_beta=1.0)), bn)
    found = verdicts(s)[CLAIMS[0]]
    assert found.verdict == TOO_SHORT
    assert "before a run stops learning at step 510" in found.numbers
    assert "more steps do not help a run that stops learning" in found.numbers


def test_ics_needs_as_many_ics_steps(tmp_path):
    def pair(ics_every):
        return (("vgg_a", "none", dict(ics=(2.0, 0.5), ics_every=ics_every)),
                ("vgg_a_bn", "batch", dict(ics=(1.0, 0.9), ics_every=ics_every)))
    assert verdicts(sweep(tmp_path, *pair(STEPS // MIN_PROBES)))[CLAIMS[3]].verdict == FAILS
    found = verdicts(sweep(tmp_path, *pair(STEPS // (MIN_PROBES - 1) + 1)))[CLAIMS[3]]
    assert found.verdict == TOO_SHORT and f"{MIN_PROBES - 1} probed steps" in found.numbers
    assert f"--ics-every {STEPS // MIN_PROBES}" in found.numbers


def test_accuracy_claims_need_the_steps_but_no_probes(tmp_path):
    def runs(steps):
        return [(m, n, dict(test_acc=acc, steps=steps, probe_every=steps))  # one probe each
                for m, n, acc in (("vgg_a_bn", "batch", 0.8), ("vgg_a_noisy_bn", "noisy_batch",
                                                                 0.79))]
    assert verdicts(sweep(tmp_path, *runs(MIN_STEPS)))[CLAIMS[4]].verdict == HOLDS
    found = verdicts(sweep(tmp_path, *runs(MIN_STEPS - 100)))[CLAIMS[4]]
    assert found.verdict == TOO_SHORT and "probed" not in found.numbers.split(". So far")[0]
    assert f"{MIN_STEPS - 100} steps per run; needs {MIN_STEPS:,} while" in found.numbers


def test_too_short_is_drawn_grey_not_red(tmp_path):
    page = build_report([sweep(tmp_path, *_holding_pair(steps=200, probe_every=10))])
    assert page.count('<tr class="short">') == 3  # the three landscape claims
    assert '<tr class="fails">' not in page and f">{TOO_SHORT}<" in page
    style = page[page.index("<style>"):page.index("</style>")]
    assert "tr.short td:nth-child(3) { color: #777; }" in style


def test_bn_smooths_the_landscape_at_every_depth_across_resnet_depths(tmp_path):
    """ResNet-20 and ResNet-56 with and without BN: the depth row holds when BN's loss band
    and predictiveness are the narrower at both depths, and fails when one depth is not."""
    narrow, wide = dict(loss_spread=0.4, grad_diff=25.0), dict(loss_spread=3.0, grad_diff=80.0)
    s = sweep(tmp_path, ("resnet20", "none", wide), ("resnet20_bn", "batch", narrow),
              ("resnet56", "none", wide), ("resnet56_bn", "batch", narrow))
    rows = findings(s.runs)
    assert [where.family for where, _ in rows] == ["resnet20", "resnet56", "resnet20/56"]
    (depth,) = rows[-1][1]
    assert depth.claim == DEPTH_CLAIM and depth.verdict == HOLDS, depth
    assert "ResNet-20: loss band 0.4 with BN vs 3 without, predictiveness 25 vs 80" \
        in depth.numbers
    assert "ResNet-56: loss band 0.4 with BN vs 3 without" in depth.numbers
    s = sweep(tmp_path, ("resnet20", "none", wide), ("resnet20_bn", "batch", narrow),
              ("resnet56", "none", narrow), ("resnet56_bn", "batch", wide))
    assert findings(s.runs)[-1][1][0].verdict == FAILS  # not at depth 56
    s = sweep(tmp_path, ("resnet20", "none", wide), ("resnet20_bn", "batch", narrow))
    assert all(f.claim != DEPTH_CLAIM for _, found in findings(s.runs) for f in found)
