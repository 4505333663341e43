"""The report's spectrum, per-layer curvature and depth sections and their Findings rows."""

import numpy as np
import pytest

from landscape.cli import main
from landscape.read import read_sweep
from landscape.report.findings import FAILS, HOLDS, UNMEASURED
from landscape.report.spectral_findings import (SPECTRAL_CLAIMS, growth_factor,
                                                last_hidden_rank, spectral_findings)
from test_spectrum_sweep import HESSIAN, sweep


@pytest.fixture(scope="module")
def depth_file(tmp_path_factory):
    settings = {**HESSIAN, "depth": (1, 3), "layer_curvature_every": None,
                "layer_trace_samples": 10, "steps": 1}
    return sweep(tmp_path_factory.mktemp("spectral") / "d.h5", **settings)


def test_findings_are_computed_from_the_file(depth_file):
    runs = read_sweep(depth_file).runs
    (where, found), = spectral_findings(runs)
    assert where.family == "mlp" and [f.claim for f in found] == list(SPECTRAL_CLAIMS)
    assert all(f.verdict in (HOLDS, FAILS) for f in found)
    bn = [r for r in runs if r.norm == "batch"]
    plain = [r for r in runs if r.norm == "none"]
    counts = lambda rs, mode: np.concatenate([r.spectrum.outliers[r.spectrum.rows(mode)]  # noqa
                                              for r in rs])
    with_bn, without = np.median(counts(bn, "batch")), np.median(counts(plain, "batch"))
    assert f"median outliers {with_bn:g} with BN vs {without:g} without" in found[0].numbers
    assert found[0].verdict == (HOLDS if with_bn < without else FAILS)
    running = np.median(counts(bn, "running"))
    assert found[1].verdict == (HOLDS if running > with_bn else FAILS)
    ratios = sorted((len(r.ranks.layer), growth_factor(r)) for r in bn)
    g = bn[0].ranks.grad_norm[0]
    assert growth_factor(bn[0])[0] == pytest.approx(g[0] / g[-1])
    grows = all(f > 1 for _, (_, f) in ratios) and ratios[1][1][0] > ratios[0][1][0]
    assert found[2].verdict == (HOLDS if grows else FAILS)
    assert "2 layers" in found[2].numbers and "4 layers" in found[2].numbers
    keeps = all(last_hidden_rank(b) > last_hidden_rank(p) for b, p in
                zip(sorted(bn, key=lambda r: len(r.ranks.layer)),
                    sorted(plain, key=lambda r: len(r.ranks.layer))))
    assert found[3].verdict == (HOLDS if keeps else FAILS)


def test_claims_without_their_instrument_are_not_measured(tmp_path):
    runs = read_sweep(sweep(tmp_path / "r.h5", models=("mlp_bn",), steps=1, rank_every=1,
                            depth=2)).runs
    (_, found), = spectral_findings(runs)
    assert [f.verdict for f in found] == [UNMEASURED, UNMEASURED, found[2].verdict, UNMEASURED]
    assert "--spectrum-every" in found[0].numbers and "--hessian-bn both" in found[1].numbers
    assert spectral_findings(read_sweep(sweep(tmp_path / "p.h5", models=("mlp",), steps=1,
                                              depth=2)).runs) == []


def test_report_draws_the_sections_and_rows(depth_file, tmp_path, capsys):
    page = tmp_path / "r.html"
    assert main(["plot", str(depth_file), "-o", str(page)]) == 0, capsys.readouterr().err
    text = page.read_text()
    for anchor in ("spectrum", "outliers", "depth"):
        assert f'id="{anchor}"' in text
    assert 'id="layer-curvature"' not in text  # the instrument was off
    for claim in SPECTRAL_CLAIMS:
        assert claim.replace("'", "&#x27;") in text or claim in text
