"""Assemble one self-contained HTML page: plotly.js inlined once, then every section.

The page needs no network and no server: it opens from a file, offline, years later.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Sequence

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

PLOTLY_CONFIG = {"displaylogo": False, "responsive": True,
                 "toImageButtonOptions": {"format": "svg"}}

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0 auto;
       max-width: 1300px; padding: 0 24px 48px; color: #222; }
h1 { margin-bottom: 4px; } h2 { margin: 36px 0 4px; border-bottom: 1px solid #ddd; }
p.definition { margin: 4px 0 8px; color: #444; }
p.note { margin: 4px 0; padding: 4px 8px; background: #fff7e0; border-left: 3px solid #e0b000; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f4f4f4; } th[data-order="up"]::after { content: " ▲"; }
th[data-order="down"]::after { content: " ▼"; } th.text, td.text { text-align: left; }
table.sortable td { white-space: nowrap; }
tr.diverged td { background: #fde8e8; } tr.running td { background: #fff7e0; }
tr.holds td:nth-child(3) { color: #17692c; font-weight: bold; } tr.fails td:nth-child(3) { color: #a11; font-weight: bold; }
tr.holds-everywhere td:nth-child(2) { color: #17692c; font-weight: bold; }
tr.fails-everywhere td:nth-child(2) { color: #a11; font-weight: bold; }
tr.unmeasured td:nth-child(3), tr.short td:nth-child(3) { color: #777; }
pre { background: #f7f7f7; padding: 8px; overflow-x: auto; font-size: 12px; }
nav a { margin-right: 14px; }
input.table-filter { width: 420px; margin: 6px 0; padding: 3px 6px; font-size: 13px; }
span.table-count { color: #666; font-size: 13px; }
"""


@dataclass(frozen=True)
class Section:
    """A titled part of the page: a definition line, then a figure or raw HTML."""

    anchor: str
    heading: str
    definition: str  # HTML
    figure: go.Figure | None = None
    body: str = ""  # HTML, used when there is no figure


def figure_div(fig: go.Figure, div_id: str) -> str:
    """A figure as a <div> and the script that draws it, without plotly.js itself."""
    return pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=div_id,
                       config=PLOTLY_CONFIG, default_width="100%",
                       default_height=f"{fig.layout.height or 460}px")


def table_html(header: Sequence[str], rows: Sequence[Sequence[str]],
               row_classes: Sequence[str] | None = None, text_columns: int = 1,
               sortable: bool = False) -> str:
    """An escaped HTML table; the first ``text_columns`` columns are left-aligned;
    ``sortable``: a click on a header sorts by that column (``SORT_SCRIPT``)."""
    row_classes = row_classes or [""] * len(rows)
    head = "".join(f'<th class="text">{html.escape(h)}</th>' if i < text_columns
                   else f"<th>{html.escape(h)}</th>" for i, h in enumerate(header))
    body = []
    for cells, css in zip(rows, row_classes):
        tds = "".join(f'<td class="text">{html.escape(c)}</td>' if i < text_columns
                      else f"<td>{html.escape(c)}</td>" for i, c in enumerate(cells))
        body.append(f'<tr class="{css}">{tds}</tr>')
    css = ' class="sortable"' if sortable else ""
    return f"<table{css}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


# Sorts a table.sortable by the clicked column: numbers as numbers ("-" and other text
# after them), text as text; a second click reverses. Above it, a filter box: rows that
# contain every word typed (in any cell, or their status: "diverged") stay. Plain JS: the page
# stays offline. Each cell's sort key and each row's text are read once, rows move in one
# DocumentFragment: a 1,000-row table sorts in ~10 ms and filters in ~3 ms (measured in
# headless Chromium, ``tests/test_report_scale.py``), so the page never freezes.
SORT_SCRIPT = """<script>
document.querySelectorAll("table.sortable").forEach(table => {
  const body = table.tBodies[0];
  const rows = [...body.rows];
  const texts = rows.map(row => (row.textContent + " " + row.className).toLowerCase());
  const keys = [];  // per column: each row's key, read on the first sort by it
  const keyOf = (row, column) => {
    const text = row.cells[column].textContent.trim();
    const number = /^[-+]?[0-9.]+(e[-+]?[0-9]+)?$/i.test(text) ? parseFloat(text) : NaN;
    return {text, number};
  };
  table.querySelectorAll("thead th").forEach((th, column) => {
    th.style.cursor = "pointer";
    th.title = "sort by this column";
    th.addEventListener("click", () => {
      const up = th.dataset.order !== "up";
      table.querySelectorAll("thead th").forEach(h => delete h.dataset.order);
      th.dataset.order = up ? "up" : "down";
      keys[column] = keys[column] || new Map(rows.map(row => [row, keyOf(row, column)]));
      const sorted = [...rows].sort((ra, rb) => {
        const a = keys[column].get(ra), b = keys[column].get(rb);
        const an = !isNaN(a.number), bn = !isNaN(b.number);
        if (an && bn) return up ? a.number - b.number : b.number - a.number;
        if (an !== bn) return an ? -1 : 1;  // numbers before text ("-": no value)
        return up ? a.text.localeCompare(b.text) : b.text.localeCompare(a.text);
      });
      const moved = document.createDocumentFragment();
      sorted.forEach(row => moved.appendChild(row));
      body.appendChild(moved);
    });
  });
  const filter = document.createElement("input");
  filter.type = "search";
  filter.className = "table-filter";
  filter.placeholder = "filter: rows with every word (e.g. vgg_a_bn 0.1 diverged)";
  const shown = document.createElement("span");
  shown.className = "table-count";
  shown.textContent = ` ${rows.length} rows`;
  table.before(filter, shown);
  filter.applyFilter = () => {  // a property, for the benchmark to time it
    const words = filter.value.toLowerCase().split(/\\s+/).filter(Boolean);
    let count = 0;
    rows.forEach((row, i) => {
      const keep = words.every(word => texts[i].includes(word));
      row.hidden = !keep;
      count += keep;
    });
    shown.textContent = ` ${count} of ${rows.length} rows`;
  };
  let pending;  // filter once typing pauses, not at every key
  filter.addEventListener("input", () => {
    clearTimeout(pending);
    pending = setTimeout(filter.applyFilter, 120);
  });
});
</script>"""


def render_page(title: str, intro: str, sections: Sequence[Section]) -> str:
    """The whole report as one HTML string, plotly.js inlined once in <head>."""
    nav = " ".join(f'<a href="#{s.anchor}">{html.escape(s.heading)}</a>' for s in sections)
    parts = []
    for s in sections:
        content = figure_div(s.figure, f"fig-{s.anchor}") if s.figure is not None else s.body
        parts.append(f'<section id="{s.anchor}"><h2>{html.escape(s.heading)}</h2>'
                     f'<p class="definition">{s.definition}</p>{content}</section>')
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style>"
            f'<script type="text/javascript">{get_plotlyjs()}</script></head>\n'
            f"<body><h1>{html.escape(title)}</h1>{intro}<nav>{nav}</nav>\n"
            + "\n".join(parts) + f"\n{SORT_SCRIPT}</body></html>\n")
