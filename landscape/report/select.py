"""Which runs a report draws: ``--runs PATTERN`` (their names) and ``--where lr=0.1,model=vgg_a_bn``
(their settings), checked and applied before a run's data is read.

A big sweep's page pools seeds into bands per setting; a page of a few runs selected here
draws each of them (and, with ``--points all``, every step).
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..errors import LandscapeError
from .pools import SETTING_DEFAULTS, value_text


@dataclass(frozen=True)
class Selection:
    """Runs whose name matches one of ``patterns`` (shell wildcards; none: every name) and
    whose settings take one of the values ``where`` lists for each of its keys."""

    patterns: tuple[str, ...] = ()
    where: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def parse(cls, runs: Sequence[str] = (), where: Sequence[str] = ()) -> "Selection":
        """From the command line: ``--runs 'vgg_a_bn-*,vgg_a-lr0.1-*'`` (commas separate
        patterns; the option may repeat) and ``--where lr=0.1|0.2,model=vgg_a_bn``
        (``|`` separates the values a key may take)."""
        patterns = tuple(p.strip() for text in runs for p in text.split(",") if p.strip())
        conditions: dict[str, tuple[str, ...]] = {}
        for text in where:
            for part in filter(None, (p.strip() for p in text.split(","))):
                key, sep, values = part.partition("=")
                key = key.strip()
                if not sep or not key or not values.strip():
                    raise LandscapeError(f"--where {part!r}: expected KEY=VALUE (e.g. lr=0.1, "
                                         "model=vgg_a_bn, seed=0|1)")
                conditions[key] = conditions.get(key, ()) + tuple(
                    v.strip() for v in values.split("|") if v.strip())
        return cls(patterns, conditions)

    def __bool__(self) -> bool:
        return bool(self.patterns or self.where)

    def matches(self, name: str, attrs: dict[str, Any]) -> bool:
        """Whether the run ``name`` with stored attributes ``attrs`` is selected."""
        if self.patterns and not any(fnmatch.fnmatchcase(name, p) for p in self.patterns):
            return False
        values = {**SETTING_DEFAULTS, **attrs}
        return all(any(_equal(values.get(key), wanted) for wanted in allowed)
                   for key, allowed in self.where.items())

    def check(self, keys_seen: set[str], selected: int, total: int) -> None:
        """After reading: a key no run has, or nothing selected, is a one-line error."""
        unknown = sorted(set(self.where) - keys_seen - set(SETTING_DEFAULTS))
        if unknown:
            raise LandscapeError(f"--where: no run has the setting {', '.join(unknown)} (the "
                                 f"runs have: {', '.join(sorted(keys_seen))})")
        if not selected:
            raise LandscapeError(f"{self.text()} selects none of the {total} runs")

    def text(self) -> str:
        """'--runs vgg_a_bn-* --where lr=0.1': what the page says it shows."""
        where = ",".join(f"{key}={'|'.join(values)}" for key, values in self.where.items())
        return " ".join(([f"--runs {','.join(self.patterns)}"] if self.patterns else [])
                        + ([f"--where {where}"] if where else []))


def _equal(value: Any, wanted: str) -> bool:
    """A stored setting against the text given: numerically when both are numbers (lr=0.1
    matches 0.1 stored as a float), else as the report writes the value (``value_text``)."""
    if isinstance(value, (bool,)) or value is None:
        return value_text(value).lower() == wanted.lower()
    if isinstance(value, (int, float)):
        try:
            return math.isclose(float(value), float(wanted), rel_tol=1e-9, abs_tol=0.0)
        except ValueError:
            return False
    return value_text(value) == wanted
