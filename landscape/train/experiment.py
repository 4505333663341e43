"""Experiment files: ``landscape run --config experiments/<file>.toml [--light] [--variant V]``.

A file (TOML, read with the standard library's ``tomllib``) has::

    description = "Fig. 1: ..."       # what the experiment is (optional)
    paper = "83% vs 80% ..."          # what the paper reports (optional)
    [run]                             # the paper's setting: SweepConfig fields, plus `out`
    models = ["vgg_a", "vgg_a_bn"]    # or "mypackage.nets:ResNet18", called with
    model_kwargs = {depth = 18}       # these keyword arguments (a table)
    lrs = [0.1, 0.5]
    steps = 15000
    [light]                           # overrides of [run] for a CPU, chosen with --light
    width = 0.25
    dataset = "cifar10-mini"
    steps = 300
    [variant.curvature]               # named overrides, chosen with --variant curvature,
    sharpness_every = 50              # applied after [run] (and [light] with --light)
    weight_stats = true

    [[slice]]                         # after training, `landscape slice OUT --run RUN` for
    id = "random"                     # every run (or those in `runs`): keys are the fields of
    direction = "random"              # train.slicing.SliceSettings (grid = [21, 21],
    grid = [21, 21]                   # range = [-1, 1], ...), `runs` and `id`; needs the
    [slice_light]                     # runs' weights (save_weights_every / _at); overrides of
    grid = [11, 11]                   # every [[slice]] with --light

Keys of ``[run]`` and ``[light]`` are the fields of ``train.config.SweepConfig`` (``batch_size``,
``probe_every``, ``ics_layers``, ...) and ``out``; values are checked against the field's
type (an integer is accepted where a float is expected). A variant without its own ``out``
writes next to the file's ``out`` with ``-<variant>`` before the suffix. Options given on the command line
override the file. Unknown keys, wrong types and unreadable files raise ``LandscapeError``.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py

from ..errors import LandscapeError
from .config import SweepConfig
from .slicing import Slice, SliceSettings, slice_run

TOP_LEVEL = {"description": str, "paper": str, "run": dict, "light": dict, "variant": dict,
             "slice": list, "slice_light": dict}
EXTRA_KEYS = {"out": str}  # run keys that are not SweepConfig fields
SLICE_EXTRA_KEYS = {"runs": Sequence[str], "id": str}  # slice keys that are not settings


def _field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(SweepConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(SweepConfig)} | EXTRA_KEYS


def _describe(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _convert(value, hint, where: str):
    """``value`` as type ``hint`` (int, float, str, bool, X | None, Sequence[X], a dict), or
    raise."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        for option in options:
            try:
                return _convert(value, option, where)
            except LandscapeError:
                pass
        raise LandscapeError(f"{where} must be {_describe(hint)}, got {value!r}")
    if origin is dict:  # a table of keyword arguments (model_kwargs), taken as TOML gives it
        if not isinstance(value, dict):
            raise LandscapeError(f"{where} must be a table, got {value!r}")
        return dict(value)
    if origin is tuple and typing.get_args(hint)[-1] is not Ellipsis:  # fixed length
        items = typing.get_args(hint)
        if not isinstance(value, list) or len(value) != len(items):
            raise LandscapeError(f"{where} must be a list of {len(items)}, got {value!r}")
        return tuple(_convert(v, t, f"{where}[{i}]") for i, (v, t) in enumerate(zip(value, items)))
    if origin is not None and issubclass(origin, Sequence):
        if not isinstance(value, list):
            raise LandscapeError(f"{where} must be a list ({_describe(hint)}), got {value!r}")
        item = typing.get_args(hint)[0]  # Sequence[X], tuple[X, ...]
        return tuple(_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and type(value) is hint:
        return value
    raise LandscapeError(f"{where} must be {_describe(hint)}, got {value!r}")


def _section(table: dict, where: str, types_: dict[str, Any]) -> dict[str, Any]:
    values = {}
    for key, value in table.items():
        if key not in types_:
            raise LandscapeError(f"{where}: unknown key {key!r}; known keys: {', '.join(types_)}")
        values[key] = _convert(value, types_[key], f"{where}.{key}")
    return values


def load_experiment(path: str | Path, light: bool = False,
                    variant: str | None = None) -> dict[str, Any]:
    """The ``[run]`` values of an experiment file, updated by ``[light]`` when ``light`` and
    then by ``[variant.<variant>]`` when a variant is named."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise LandscapeError(f"--config {path}: no such file") from None
    except IsADirectoryError:
        raise LandscapeError(f"--config {path} is a directory") from None
    except tomllib.TOMLDecodeError as exc:
        raise LandscapeError(f"--config {path}: not valid TOML ({exc})") from None
    for key, value in doc.items():
        if key not in TOP_LEVEL:
            raise LandscapeError(f"{path}: unknown key {key!r}; known keys: {', '.join(TOP_LEVEL)}")
        if not isinstance(value, TOP_LEVEL[key]):
            kind = {dict: "a table", list: "a list of tables"}.get(TOP_LEVEL[key], "a string")
            raise LandscapeError(f"{path}: {key} must be {kind}, got {value!r}")
    field_types = _field_types()
    values = _section(doc.get("run", {}), f"{path} [run]", field_types)
    light_values = _section(doc.get("light", {}), f"{path} [light]", field_types)
    variants = {name: _section(table, f"{path} [variant.{name}]", field_types)
                if isinstance(table, dict) else _not_a_table(path, name, table)
                for name, table in doc.get("variant", {}).items()}
    if light:
        if "light" not in doc:
            raise LandscapeError(f"--light: {path} has no [light] section")
        values.update(light_values)
    if variant is not None:
        if variant not in variants:
            known = ", ".join(variants) or "none"
            raise LandscapeError(f"--variant {variant}: {path} has no [variant.{variant}] "
                                 f"section (variants: {known})")
        if "out" in values and "out" not in variants[variant]:
            out = Path(values["out"])
            values["out"] = str(out.with_name(f"{out.stem}-{variant}{out.suffix}"))
        values.update(variants[variant])
    return values


def _not_a_table(path: Path, name: str, value) -> dict:
    raise LandscapeError(f"{path}: variant.{name} must be a table, got {value!r}")


def merge(file_values: dict[str, Any], cli_values: dict[str, Any], given: set[str]) -> dict[str, Any]:
    """CLI defaults < the file < options given on the command line.

    ``--epochs`` given on the command line also clears a ``steps`` set by the file (steps
    override epochs), unless ``--steps`` is given too.
    """
    merged = {**cli_values, **file_values, **{k: cli_values[k] for k in given if k in cli_values}}
    if "epochs" in given and "steps" not in given:
        merged["steps"] = None
    return merged


@dataclass(frozen=True)
class ExperimentSlice:
    """One ``[[slice]]`` of an experiment file: its settings, the runs it slices (None:
    every run of the sweep) and its id (None: the next free ``slice-N``)."""

    settings: SliceSettings
    runs: tuple[str, ...] | None = None
    id: str | None = None


def load_slices(path: str | Path, light: bool = False) -> list[ExperimentSlice]:
    """The ``[[slice]]`` tables of an experiment file (updated by ``[slice_light]`` when
    ``light``), each checked; [] when it has none."""
    path = Path(path)
    with path.open("rb") as f:  # load_experiment has read it: its errors are said there
        doc = tomllib.load(f)
    hints = typing.get_type_hints(SliceSettings)
    types_ = {f.name: hints[f.name] for f in dataclasses.fields(SliceSettings)}
    override = _section(doc.get("slice_light", {}), f"{path} [slice_light]", types_)
    found = []
    for i, table in enumerate(doc.get("slice", [])):
        where = f"{path} [[slice]] {i + 1}"
        if not isinstance(table, dict):
            raise LandscapeError(f"{where} must be a table, got {table!r}")
        values = _section(table, where, types_ | SLICE_EXTRA_KEYS)
        runs, slice_id = values.pop("runs", None), values.pop("id", None)
        settings = SliceSettings(**(values | override if light else values))
        try:
            settings.check()
        except LandscapeError as error:
            raise LandscapeError(f"{where}: {error}") from None
        found.append(ExperimentSlice(settings, runs, slice_id))
    return found


def check_slices_have_weights(slices: Sequence[ExperimentSlice], config: SweepConfig) -> None:
    """Before training: slices need the runs' saved weights."""
    if slices and config.save_weights_every is None and not config.save_weights_at:
        raise LandscapeError("the experiment's [[slice]] tables slice the runs' saved weights: "
                             "set save_weights_every or save_weights_at in it")


def run_slices(sweep: str | Path, slices: Sequence[ExperimentSlice]
               ) -> Iterator[tuple[str, Path, str, Slice]]:
    """Each ``[[slice]]`` of a trained sweep, run by run (``train.slicing.slice_run``): yields
    (run, the file written, the slice's id, the slice) as each is written."""
    with h5py.File(sweep, "r", locking=False) as f:
        every_run = list(f["runs"])
    for spec in slices:
        for run in spec.runs or every_run:
            path, slice_id, result = slice_run(str(sweep), run, spec.settings, spec.id)
            yield run, path, slice_id, result
