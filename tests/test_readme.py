"""The README's examples run as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_resnet18_probe_example_runs(capsys):
    block = next(b for b in python_blocks() if "resnet18" in b)
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)
    records = namespace["probe"].records
    assert [r.step for r in records] == [0, 5, 10]
    assert all(len(r.loss) == 4 and r.beta > 0 for r in records)
    assert len(capsys.readouterr().out.strip().splitlines()) == 3


def test_readme_quick_start_matches_ci():
    text = README.read_text(encoding="utf-8")
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert "python -m pytest -q tests" in text and "python -m pytest -q tests" in ci
