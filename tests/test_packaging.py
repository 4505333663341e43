"""The distribution's name (``batchnorm-landscape``: the index's ``landscape`` is another
project) and the version the package reports without asking pip under either name."""

import ast
import re
from pathlib import Path

import landscape
from landscape.cli import main
from landscape.report.summary import library_versions
from landscape.version import DISTRIBUTION, __version__

ROOT = Path(__file__).resolve().parents[1]


def setup_keywords() -> dict:
    """The literal keyword arguments of setup.py's ``setup(...)`` call, read with ``ast``."""
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call)
                and getattr(n.func, "id", None) == "setup")
    return {k.arg: k.value.value for k in call.keywords if isinstance(k.value, ast.Constant)}


def test_setup_names_the_distribution_and_the_version_the_package_reports():
    keywords = setup_keywords()
    assert keywords["name"] == DISTRIBUTION == "batchnorm-landscape"
    assert keywords["version"] == __version__ == landscape.__version__


def test_version_and_report_need_no_distribution_metadata(capsys):
    """``landscape --version`` and a report's versions name the code that runs, whatever pip
    holds under the old or the new distribution name."""
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"landscape, version {__version__}\n"
    assert library_versions()["landscape"] == __version__


def test_install_lines_name_the_distribution_not_the_index_s_landscape():
    """Every `pip install ...landscape...` the docs, the code and CI give names the
    distribution (a bare `landscape` there would install the unrelated project)."""
    files = [ROOT / "README.md", ROOT / ".ci" / "run", *(ROOT / "docs").glob("*.md"),
             *(ROOT / "landscape").rglob("*.py")]
    wrong = [f"{path.relative_to(ROOT)}: {m.group(0)}" for path in files
             for m in re.finditer(r"pip install [\"']?landscape\b", path.read_text("utf-8"))]
    assert wrong == []
    assert f"`pip install {DISTRIBUTION}`" in (ROOT / "README.md").read_text("utf-8")
