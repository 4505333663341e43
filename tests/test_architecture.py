"""The package's layout: rooms import only the rooms below them, no cycles, explicit registries.

The layers and the no-cycle rule are declared in ``.importlinter`` (import-linter's layers and
acyclic_siblings contracts); docs/architecture.md draws them.
"""

from __future__ import annotations

import ast
import io
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "landscape"


def test_rooms_import_downward_only_and_without_cycles(monkeypatch):
    monkeypatch.chdir(ROOT)
    report = io.StringIO()
    with redirect_stdout(report):
        exit_code = lint_imports(config_filename=str(ROOT / ".importlinter"), no_cache=True,
                                 no_logo=True)
    assert exit_code == 0, report.getvalue()
    assert "2 kept, 0 broken" in report.getvalue()


def _imports_inside_functions(path: Path, root: Path = ROOT) -> list[str]:
    """Imports of the package's own modules made inside a function body (file:line)."""
    found = []
    for func in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        for node in ast.walk(func):
            if isinstance(node, ast.ImportFrom):
                own = node.level > 0 or (node.module or "").split(".")[0] == "landscape"
            elif isinstance(node, ast.Import):
                own = any(alias.name.split(".")[0] == "landscape" for alias in node.names)
            else:
                continue
            if own:
                found.append(f"{path.relative_to(root)}:{node.lineno}")
    return found


def test_no_import_of_the_package_is_tucked_inside_a_function():
    found = [hit for path in sorted(PACKAGE.rglob("*.py")) for hit in _imports_inside_functions(path)]
    assert found == [], f"imports inside functions (move them to the module's top): {found}"


def test_the_function_import_check_finds_a_planted_one(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("import os\n\n\ndef f():\n    import json\n"
                       "    from .train import SweepConfig\n    import landscape.store\n")
    assert _imports_inside_functions(planted, tmp_path) == ["planted.py:6", "planted.py:7"]


SUFFIXES = ["", "_bn", "_gbn", "_gn", "_l1", "_l2", "_linf", "_ln", "_noise", "_noisy_bn"]
MODELS = sorted(["cnn", "cnn_bn", "dln", "dln_bn", "mlp", "mlp_bn"]
                + [family + suffix for family in ("vgg_a", "resnet20", "resnet32", "resnet56",
                                                  "resnet18") for suffix in SUFFIXES])
NORMS = ["batch", "ghost_batch", "group", "l1", "l2", "layer", "linf", "noise", "noisy_batch",
         "none"]


def test_registries_are_complete_whatever_is_imported_first():
    """A fresh interpreter that imports one registering module first still sees every model."""
    for first in ("landscape.models.registry", "landscape.models.dln", "landscape.models.norms",
                  "landscape.models.vgg", "landscape.models.resnet", "landscape.models.course",
                  "landscape.train", "landscape"):
        code = (f"import importlib; importlib.import_module({first!r}); "
                "from landscape.models.registry import MODELS, NORMS; "
                "print(','.join(sorted(MODELS))); print(','.join(sorted(NORMS)))")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              cwd=ROOT, timeout=120)
        assert done.returncode == 0, done.stderr
        models, norms = done.stdout.split()
        assert models.split(",") == MODELS, first
        assert norms.split(",") == NORMS, first


# optional dependency -> the one module using it
OPTIONAL = {"ray": "landscape/train/distributed.py", "tensorboard": "landscape/train/livelog.py",
            "lightning": "landscape/integrations/lightning.py"}


def _imports_of(path: Path, name: str) -> list[tuple[int, bool]]:
    """(line, inside a function) of each import of package ``name`` in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    in_function = {id(node) for func in ast.walk(tree)
                   if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for node in ast.walk(func)}
    found = []
    for node in ast.walk(tree):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0
                 else [])
        if any(n.split(".")[0] == name for n in names):
            found.append((node.lineno, id(node) in in_function))
    return found


def test_optional_dependencies_are_imported_in_one_module_and_only_when_used():
    """The rule above (no import inside a function) is for the package's own modules. An
    optional extra (``ray``) is the exception: imported inside the function that needs it,
    in the one module that uses it, so that the package imports and runs without it."""
    for name, home in OPTIONAL.items():
        where = {str(p.relative_to(ROOT)): _imports_of(p, name) for p in sorted(PACKAGE.rglob("*.py"))}
        assert {p for p, hits in where.items() if hits} == {home}, name
        assert where[home] and all(inside for _, inside in where[home]), where[home]
    code = ("import sys; sys.modules.update({n: None for n in %r}); "
            "import landscape, landscape.cli, landscape.train, landscape.report; print('ok')"
            % sorted(OPTIONAL))  # None in sys.modules: `import ray` fails, as when uninstalled
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
