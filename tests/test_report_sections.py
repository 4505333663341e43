"""The report's table of sections (report/build.py: SECTIONS): computed numbers, anchors, and
the table of figures in docs/report.md kept in step with it."""

import re
from pathlib import Path

import pytest

from conftest import add_synthetic_run
from landscape.report.build import (LETTER, NUMBER, SECTIONS, UNNUMBERED, build_report,
                                    section_labels)
from landscape.store import SweepStore, read_sweep

DOCS = Path(__file__).resolve().parents[1] / "docs" / "report.md"


def test_a_number_with_several_rows_is_lettered_and_a_single_row_stays_bare():
    places = [UNNUMBERED, NUMBER, LETTER, NUMBER, NUMBER, LETTER, LETTER, UNNUMBERED, NUMBER]
    assert section_labels(places) == ["", "1a", "1b", "2", "3a", "3b", "3c", "", "4"]


@pytest.mark.parametrize("places, message", [
    ([LETTER, NUMBER], "needs a numbered section above it"),
    ([UNNUMBERED, LETTER], "needs a numbered section above it"),
    ([NUMBER, "sub"], "got 'sub'"),
])
def test_a_table_that_cannot_be_numbered_is_refused_in_one_line(places, message):
    with pytest.raises(ValueError, match=message) as error:
        section_labels(places)
    assert "\n" not in str(error.value)


def _figure_table_labels() -> list[str]:
    """The labels of docs/report.md's table of figures ('| 1a. Loss across …|' rows)."""
    return re.findall(r"^\| (\d+[a-z]?)\. ", DOCS.read_text(encoding="utf-8"), re.M)


def test_the_docs_table_of_figures_has_one_row_per_numbered_section_in_order():
    labels = [label for label in section_labels([s.place for s in SECTIONS]) if label]
    assert labels == _figure_table_labels()


def test_the_docs_name_every_anchor_with_its_label():
    docs = " ".join(DOCS.read_text(encoding="utf-8").split())  # lines joined
    for spec, label in zip(SECTIONS, section_labels([s.place for s in SECTIONS])):
        assert f"`{spec.anchor}`" + (f" ({label})" if label else "") in docs, spec.anchor
    assert len({s.anchor for s in SECTIONS}) == len(SECTIONS)


def test_a_section_left_out_keeps_the_others_labels(tmp_path):
    """A file without the per-layer split (2c), the mode statistics (4c) or any instrument
    (6-9): those sections are absent, every other one has its label and anchor, in order."""
    path = tmp_path / "plain.h5"
    store = SweepStore(path, config={"lrs": [0.1]}, command="synthetic")
    add_synthetic_run(store, "vgg_a", 0.1, 40)
    add_synthetic_run(store, "vgg_a_bn", 0.1, 40)
    page = build_report([read_sweep(path)])
    shown = re.findall(r'<section id="([^"]+)"><h2>([^<]*)</h2>', page)
    labels = dict(zip([s.anchor for s in SECTIONS], section_labels([s.place for s in SECTIONS])))
    titles = {s.anchor: s.title.replace("'", "&#x27;") for s in SECTIONS}
    assert [anchor for anchor, _ in shown] == ["findings", "loss-grid", "loss-probe", "grad-grid",
                                               "grad-probe", "beta", "training", "grid", "runs"]
    for anchor, heading in shown:
        label = labels[anchor]
        assert heading == (f"{label}. {titles[anchor]}" if label else titles[anchor])
    assert [heading.split(".")[0] for _, heading in shown[1:]] == [
        "1a", "1b", "2a", "2b", "3", "4a", "4b", "5"]
    for anchor, _ in shown:  # the navigation links every section by its anchor
        assert f'<a href="#{anchor}">' in page
