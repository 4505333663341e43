"""The plan of a sweep (``landscape.train.plan``): which runs train together and how, decided
once from the settings; what the registry says of a model's random draws; and the bounds on
function size that keep ``landscape/`` readable."""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from landscape.data import load_dataset
from landscape.errors import LandscapeError
from landscape.models import MODELS, ModelSpec, build_model, draws_random, is_stochastic
from landscape.models.registry import register_model
from landscape.train import (SweepConfig, TrainerContext, fit, plan_resume, plan_sweep,
                             run_name, sweep_runs)

ROOT = Path(__file__).resolve().parents[1] / "landscape"
MAX_LINES, MAX_PARAMETERS = 80, 10


def small_config(**settings) -> SweepConfig:
    return SweepConfig(**{**dict(models=("vgg_a", "vgg_a_bn"), lrs=(0.05, 0.1), steps=24,
                                 probe_every=8, batch_size=16, dataset="cifar10-mini",
                                 width=0.125, device="cpu"), **settings})


def groups(config: SweepConfig, on_gpu: bool) -> list[tuple]:
    return [(g.cell.seed, g.cell.batch_size, g.cell.dropout, g.cell.optimizer, g.model,
             tuple(g.lrs)) for g in plan_sweep(config, on_gpu=on_gpu)]


def test_the_plan_keeps_a_gpu_grid_together_and_splits_the_rest():
    """One rule for every executor (a Ray unit is one of these groups)."""
    lrs = (0.05, 0.1)
    assert groups(small_config(grid="auto"), True) == \
        [(0, 16, 0.0, "sgd", "vgg_a", lrs), (0, 16, 0.0, "sgd", "vgg_a_bn", lrs)]
    assert groups(small_config(grid="batched"), False) == \
        [(0, 16, 0.0, "sgd", "vgg_a", lrs), (0, 16, 0.0, "sgd", "vgg_a_bn", lrs)]
    # every cell of the axes, in a local sweep's order (the last axis varying fastest)
    assert groups(small_config(models=("vgg_a",), seed=(0, 1), batch_size=(16, 32)), True) == \
        [(s, b, 0.0, "sgd", "vgg_a", lrs) for s in (0, 1) for b in (16, 32)]
    for config, on_gpu in ((small_config(), False), (small_config(grid="sequential"), True),
                           (small_config(weight_stats=True), True)):
        assert groups(config, on_gpu) == \
            [(0, 16, 0.0, "sgd", m, (lr,)) for m in ("vgg_a", "vgg_a_bn") for lr in lrs]
    # dropout (random draws) and adam train run by run
    assert groups(small_config(models=("vgg_a",), dropout=0.2), True) == \
        [(0, 16, 0.2, "sgd", "vgg_a", (lr,)) for lr in lrs]
    assert groups(small_config(models=("vgg_a",), optimizer="adam"), True) == \
        [(0, 16, 0.0, "adam", "vgg_a", (lr,)) for lr in lrs]


def test_every_run_is_planned_once_under_its_one_name():
    config = small_config(models=("mlp", "mlp_bn"), lrs=(0.01, 0.02, 0.03), seed=(0, 1),
                          dropout=(0.0, 0.2), grid="batched")
    planned = [run for g in plan_sweep(config) for run in g.runs]
    assert [r.name for r in planned] == [r.name for r in sweep_runs(config)]
    assert len({r.name for r in planned}) == config.run_count() == 24
    for run in planned:
        assert run.name == run_name(run.model, run.lr, run.cell.seed, dropout=run.cell.dropout)
        assert run.cell.dropout in (0.0, 0.2) and run.cell.models == config.models
    modes = {(g.model, g.cell.dropout): g.mode for g in plan_sweep(config)}
    assert modes[("mlp", 0.0)] == "batched" and modes[("mlp", 0.2)] == "sequential"


def test_a_group_split_keeps_its_order_and_a_lone_batched_run_is_sequential():
    (group,) = plan_sweep(small_config(models=("vgg_a",), lrs=(0.1, 0.2, 0.3), grid="batched"))
    parts = group.split(2)
    assert [p.lrs for p in parts] == [[0.1, 0.2], [0.3]]
    assert [p.mode for p in parts] == ["batched", "sequential"]
    (graphed,) = plan_sweep(small_config(models=("vgg_a",), lrs=(0.1, 0.2)), on_gpu=True)
    assert [p.mode for p in graphed.split(1)] == ["streams", "streams"]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_registry_says_which_models_draw_random_numbers(name):
    """``draws_random`` reads the registration (every model registered by the package says);
    it must agree with the modules built."""
    assert MODELS[name].random is not None
    rates = (0.0, 0.3) if MODELS[name].dropout else (0.0,)
    for rate in rates:
        with torch.device("meta"):
            model = build_model(name, width=0.0625, dropout=rate)
        assert draws_random(name, rate) == is_stochastic(model), (name, rate)


class _Jittery(torch.nn.Module):
    """A model with dropout of its own, registered without saying so."""

    def __init__(self, width: float = 1.0, num_classes: int = 10):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.5),
                                       torch.nn.Linear(3 * 32 * 32, num_classes))

    def forward(self, x):
        return self.net(x)


def test_an_undeclared_model_is_looked_at_and_a_wrong_declaration_refused_in_one_line():
    """A model registered without ``random=`` (a script's) is built on the meta device to see
    whether it draws: it trains run by run. One that declares ``random=False`` but draws is
    refused, in one line, where the grid is fitted to the device."""
    name = "jittery_test_model"
    register_model(name, ModelSpec(_Jittery, "none"))
    try:
        config = small_config(models=(name,), grid="batched")
        assert draws_random(name) and {g.mode for g in plan_sweep(config)} == {"sequential"}
        MODELS[name] = replace(MODELS[name], random=False)  # declared, wrongly
        (group,) = plan_sweep(config)
        assert group.mode == "batched"  # what the registration says
        with pytest.raises(LandscapeError, match="random=True") as raised:
            fit(group, load_dataset("cifar10-mini"), TrainerContext(torch.device("cpu")))
        assert "\n" not in str(raised.value)
    finally:
        del MODELS[name]


def test_a_resumed_plan_continues_checkpoints_as_groups_and_keeps_complete_runs(tmp_path):
    from landscape.train import build_trainer, save_checkpoint
    from landscape.train.checkpoint import LoopPosition

    config = small_config(models=("vgg_a",), lrs=(0.05, 0.1, 0.2), grid="batched")
    names = [r.name for r in sweep_runs(config)]
    (group,) = plan_sweep(config)
    grid = group.split(2)[0]  # the first two runs, trained together, saved mid-run
    data = load_dataset("cifar10-mini")
    path = tmp_path / "grid.pt"
    save_checkpoint(path, build_trainer(grid, data, TrainerContext(torch.device("cpu"))),
                    LoopPosition(step=3), {n: {"steps": 3} for n in grid.names}, grid.names)
    attrs = {names[0]: {"status": "interrupted", "grid": "batched"},
             names[1]: {"status": "interrupted", "grid": "batched"},
             names[2]: {"status": "completed"}}
    plan = plan_resume(config, attrs, {names[0]: path, names[1]: path}, on_gpu=False)
    assert plan.kept == {names[2]} and plan.fresh == set()
    (continued,) = plan.continued
    assert continued.names == names[:2] and continued.mode == "batched"
    assert continued.checkpoint == path and plan.truncate[names[0]] == {"steps": 3}
    assert plan_sweep(config, plan) == [continued]
    # a lost unit's runs alone: the same two functions
    lost = plan_resume(config, {names[1]: {"status": "running"}}, {}, False, only=[names[1]])
    assert [g.names for g in plan_sweep(config, lost)] == [[names[1]]]


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _parameters(node) -> int:
    args = node.args
    names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
    count = len(names) + (args.vararg is not None) + (args.kwarg is not None)
    return count - (bool(names) and names[0] in ("self", "cls"))


def _is_click_command(node) -> bool:
    return any(isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute)
               and d.func.attr == "command" for d in node.decorator_list)


def test_functions_fit_on_a_screen_and_take_a_settings_object_not_a_wide_signature():
    """No function in ``landscape/`` over 80 lines; none but the CLI's click commands with
    more than 10 parameters."""
    long, wide = [], []
    for path in sorted(ROOT.rglob("*.py")):
        for node in _functions(path):
            where = f"{path.relative_to(ROOT.parent)}:{node.lineno} {node.name}"
            if node.end_lineno - node.lineno + 1 > MAX_LINES:
                long.append(where)
            if _parameters(node) > MAX_PARAMETERS and not _is_click_command(node):
                wide.append(where)
    assert long == [] and wide == []


def test_the_size_check_finds_a_planted_long_and_wide_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    planted = tmp_path / "planted.py"
    planted.write_text(f"def long():\n{body}\n\n\ndef wide(a, b, c, d, e, f, g, h, i, j, k):\n"
                       "    pass\n\n\nclass C:\n    def m(self, a, b, c, d, e, f, g, h, i, j):\n"
                       "        pass\n")
    found = {n.name: (n.end_lineno - n.lineno + 1, _parameters(n)) for n in _functions(planted)}
    assert found == {"long": (MAX_LINES + 1, 0), "wide": (2, 11), "m": (2, 10)}
