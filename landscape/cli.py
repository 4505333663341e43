"""The ``landscape`` command: a thin shell over ``landscape.train.run_sweep`` and friends.

Every bad input ends in one ``error: ...`` line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
from datetime import datetime
from functools import partial
from pathlib import Path

import click
import numpy as np

from .errors import LandscapeError, os_reason
from .report.build import Resolution, default_report_path, write_report
from .report.figures import MAX_BAND_POINTS
from .report.pooled import RUN_LINES
from .report.select import Selection
from .report.grid import Facets, parse_band
from .report.summary import (RUN_TABLE_HEADER, instrument_columns, run_table_cells, summarize_run,
                             text_table)
from .store import pack as pack_sweep
from .store import read_sweep
from .store.frames import FORMATS, export_tables
from .train import (MAX_RUNS_UNASKED, RayOptions, SweepConfig, SweepInterrupted, check_size,
                    load_experiment, merge, out_of_memory, resumed_config, run_sweep,
                    run_sweep_ray)
from .data import load_dataset
from .train.distributed import import_ray
from .train.experiment import check_slices_have_weights, load_slices, run_slices
from .train.slicing import SliceSettings, slice_run
from .train.snapshots import WeightSchedule, describe_plan
from .version import DISTRIBUTION, __version__

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_RUNS_FAILED = 1  # a Ray sweep finished, some of its runs failed


def _float_list(option: str, text: str) -> tuple[float, ...]:
    """'0.05,0.1' -> (0.05, 0.1); every item must be a positive, finite number."""
    items = [t.strip() for t in text.split(",")]
    if not text.strip() or all(not t for t in items):
        raise LandscapeError(f"{option} is empty; give comma-separated positive numbers")
    values = []
    for item in items:
        try:
            value = float(item)
        except ValueError:
            raise LandscapeError(f"{option}: {item!r} is not a number") from None
        if not math.isfinite(value) or value <= 0:
            raise LandscapeError(f"{option}: {item!r} must be a positive, finite number")
        values.append(value)
    return tuple(values)


def _axis(option: str, text: str, convert, kind: str):
    """One value or a comma-separated list of an axis (``--seed 0,1,2``): a single value, or a
    tuple of them. Only the spelling is checked here; ``SweepConfig.validate`` checks values."""
    items = [t.strip() for t in str(text).split(",")]
    if not items or any(not t for t in items):
        raise LandscapeError(f"{option}: {text!r} is not a comma-separated list of {kind}s")
    values = []
    for item in items:
        try:
            values.append(convert(item))
        except ValueError:
            raise LandscapeError(f"{option}: {item!r} is not {'an' if kind[0] in 'aeiou' else 'a'} "
                                 f"{kind}") from None
    return values[0] if len(values) == 1 else tuple(values)


def _name_list(option: str, text: str) -> tuple[str, ...]:
    items = tuple(t.strip() for t in text.split(",") if t.strip())
    if not items:
        raise LandscapeError(f"{option} is empty; give comma-separated names")
    return items


def _json_object(option: str, text: str) -> dict:
    """'{"depth": 18}' -> {"depth": 18}: a JSON object (its values checked by the sweep)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise LandscapeError(f"{option}: not JSON ({error})") from None
    if not isinstance(value, dict):
        raise LandscapeError(f"{option} must be a JSON object ({{\"name\": value, ...}}), got "
                             f"{text!r}")
    return value


def _default_out() -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"sweep-{stamp}.h5"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version=__version__, prog_name="landscape")
def cli():
    """Measure how BatchNorm changes the optimization landscape (Santurkar et al., 2018)."""


# The Hessian's spectrum, per-layer curvature, ranks and depth (train/hessian_instruments.py).
HESSIAN_OPTIONS = (
    click.option("--spectrum-every", type=int, default=None,
                 help="Steps between Hessian spectral-density probes (SLQ on fixed Hessian sets) "
                      "[default: off]."),
    click.option("--spectrum-iterations", type=int, default=100, show_default=True,
                 help="Lanczos steps per spectral density (PyHessian's 100)."),
    click.option("--hessian-samples", type=int, default=4096, show_default=True,
                 help="Training images in each fixed Hessian set of the spectrum probe."),
    click.option("--hessian-repeats", type=int, default=1, show_default=True,
                 help="Independent Hessian sets per spectrum probe (the spread of lambda_max, "
                      "trace and outliers)."),
    click.option("--hessian-bn", type=click.Choice(["batch", "running", "both"]),
                 default="batch", show_default=True,
                 help="BN in the spectrum's Hessian: each batch's statistics (train mode), the "
                      "running ones (eval mode), or both."),
    click.option("--layer-curvature-every", type=int, default=None,
                 help="Steps between per-layer Hessian-block probes (top eigenvalue, trace) "
                      "[default: off]."),
    click.option("--layer-trace-samples", type=int, default=10, show_default=True,
                 help="Hutchinson vectors per layer block."),
    click.option("--rank-every", type=int, default=None,
                 help="Steps between per-layer gradient-norm and representation-rank probes "
                      "(step 0 included) [default: off]."),
    click.option("--depth", default=None,
                 help="Hidden layers of the course models (mlp, mlp_bn, cnn, cnn_bn); a list "
                      "sweeps [default: each model's own, 2]."),
)


def hessian_options(command):
    for option in reversed(HESSIAN_OPTIONS):
        command = option(command)
    return command


def hessian_values(given: dict) -> dict:
    """``SweepConfig`` fields of the options in ``HESSIAN_OPTIONS``."""
    values = dict(given)
    values["depth"] = None if given["depth"] is None else _axis("--depth", given["depth"], int,
                                                                "integer")
    return values


@cli.command()
@click.option("--models", default="vgg_a,vgg_a_bn", show_default=True,
              help="Comma-separated model names, or import paths module:callable of functions "
                   "returning a torch.nn.Module.")
@click.option("--model-kwargs", default=None,
              help="Keyword arguments of the models given as module:callable, as a JSON object: "
                   "'{\"depth\": 18}'.")
@click.option("--lrs", default="0.1", show_default=True, help="Comma-separated learning rates.")
@click.option("--epochs", type=int, default=20, show_default=True, help="Epochs per run.")
@click.option("--steps", type=int, default=None, help="Steps per run (overrides --epochs).")
@click.option("--batch-size", default="128", show_default=True,
              help="Minibatch size, or a comma-separated list to sweep.")
@click.option("--momentum", default="0", show_default=True,
              help="Heavy-ball momentum of --optimizer sgd (a list sweeps).")
@click.option("--weight-decay", default="0", show_default=True,
              help="L2 weight decay (decoupled for adamw); a list sweeps.")
@click.option("--dropout", default="0", show_default=True,
              help="Dropout rate of the model's dropout layers (mlp*, cnn*, vgg_a*: classifier); "
                   "0 = none; a list sweeps.")
@click.option("--optimizer", default="sgd", show_default=True,
              help="sgd, adam, adamw, adagrad, adadelta, adamax or rmsprop, or a comma-separated "
                   "list to sweep.")
@click.option("--nesterov", is_flag=True, default=False,
              help="Nesterov momentum for --optimizer sgd (needs --momentum above 0).")
@click.option("--activation", default="relu", show_default=True,
              help="The image models' nonlinearity: relu, gelu, mish, elu, leaky_relu, selu, "
                   "silu, sigmoid or tanh; a list sweeps.")
@click.option("--loss", default="cross_entropy", show_default=True,
              help="The classification loss: cross_entropy, mse, bce, hinge or focal (README: "
                   "definitions); a list sweeps.")
@click.option("--label-smoothing", default="0", show_default=True,
              help="Label smoothing in [0, 1): targets (1 - e) one-hot + e/C (not with hinge); "
                   "a list sweeps.")
@click.option("--probe-every", type=int, default=100, show_default=True,
              help="Steps between landscape probes.")
@click.option("--probe-dtype", type=click.Choice(["float32", "float64"]), default=None,
              help="The landscape probe's arithmetic (on copies; training is unchanged) "
                   "[default: float64 for the deep linear network, float32 otherwise].")
@click.option("--etas", default="0.5,1,2,4", show_default=True,
              help="Probe step sizes, as multiples of the run's learning rate.")
@click.option("--dataset", default="cifar10", show_default=True,
              help="cifar10 (torchvision, downloaded when online), cifar10-mini (bundled), "
                   "gaussian-linear (the deep linear network's data; --batch-size 1000), or PATH.npz "
                   "(x_train (N,3,32,32) uint8, y_train, x_test, y_test; labels 0-9).")
@click.option("--data-root", default=None, help="Where CIFAR-10 lives [default: ~/.cache/landscape/data].")
@click.option("--augment", is_flag=True, help="Random crop (pad 4) and horizontal flip.")
@click.option("--width", type=float, default=1.0, show_default=True,
              help="Scale every channel count (0.25 for light CPU runs).")
@click.option("--seed", "--seeds", "seed", default="0", show_default=True,
              help="Seed (initial weights, minibatch order), or a list: --seeds 0,1,2,3,4.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--precision", default="tf32", show_default=True,
              help="Training arithmetic on a GPU: fp32, tf32 or bf16 (autocast). Probes are float32.")
@click.option("--grid", default="auto", show_default=True,
              help="streams (GPU): each run a CUDA graph, runs on concurrent streams; batched: "
                   "all learning rates as one vmapped model; sequential: one eager run after "
                   "another; auto: streams on a GPU where the model allows, else sequential.")
@click.option("--compile", "compile_", is_flag=True,
              help="torch.compile the training forward pass (CPU only; probes stay eager).")
@click.option("--out", default=None, help="HDF5 file to write [default: runs/sweep-<time>.h5].")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
@click.option("--ics-every", type=int, default=None,
              help="Steps between internal-covariate-shift probes [default: off].")
@click.option("--ics-layers", default=None,
              help="ICS layers: names or 1-based indices of conv/linear layers [default: k//2, k-1].")
@click.option("--activations-every", type=int, default=None,
              help="Steps between activation-distribution probes [default: off].")
@click.option("--activation-layers", default=None,
              help="Layers for --activations-every: names or 1-based indices [default: all].")
@click.option("--sharpness-every", type=int, default=None,
              help="Steps between Hessian sharpness probes (top eigenvalues, trace, gHg) "
                   "[default: off].")
@click.option("--sharpness-k", type=int, default=1, show_default=True,
              help="How many of the largest Hessian eigenvalues each sharpness probe finds.")
@click.option("--trace-samples", type=int, default=0, show_default=True,
              help="Hutchinson vectors for the Hessian trace per sharpness probe (0: no trace).")
@click.option("--weight-stats/--no-weight-stats", default=None,
              help="Record weight norms, effective learning rate and angular update of every "
                   "weight layer at every step [default: on with --sharpness-every, else off].")
@click.option("--lr-schedule", default="constant", show_default=True,
              help="Learning-rate schedule (torch's): constant, step, cosine, exponential, "
                   "linear or plateau; a list sweeps. All but plateau step every optimizer step.")
@click.option("--lr-step-size", type=int, default=None,
              help="step: steps between decays [default: a third of the run's steps].")
@click.option("--lr-step-gamma", type=float, default=0.1, show_default=True,
              help="step: the factor of each decay.")
@click.option("--lr-exp-gamma", type=float, default=None,
              help="exponential: the factor per step [default: 0.01^(1/steps), 1%% at the end].")
@click.option("--lr-eta-min", type=float, default=0.0, show_default=True,
              help="cosine: the learning rate it anneals to by the run's last step.")
@click.option("--lr-end-factor", type=float, default=0.0, show_default=True,
              help="linear: from 1x the learning rate to this multiple over the run.")
@click.option("--lr-plateau-factor", type=float, default=0.1, show_default=True,
              help="plateau: the factor of each reduction (on the epoch's training loss).")
@click.option("--lr-patience", type=int, default=10, show_default=True,
              help="plateau: epochs without improvement before a reduction.")
@click.option("--ray", "use_ray", is_flag=True,
              help="Run the sweep's runs as Ray tasks on a local Ray instance (pip install "
                   f"\"{DISTRIBUTION}[ray]\"); the driver writes the one --out file.")
@click.option("--ray-address", default=None,
              help="Run on an existing Ray cluster: HOST:PORT of its head node, or auto "
                   "(implies --ray).")
@click.option("--ray-gpus-per-task", type=float, default=None,
              help="GPUs each Ray task asks for (fractions share a GPU) [default: 1 where the "
                   "cluster has GPUs, else 0].")
@click.option("--ray-cpus-per-task", type=float, default=None,
              help="CPUs each Ray task asks for, and its torch threads [default: 1].")
@click.option("--max-retries", type=int, default=None,
              help="With --ray: times a unit whose worker died starts again before its runs "
                   "are marked failed [default: 2].")
@click.option("--resume", "resume_file", default=None, type=click.Path(dir_okay=True),
              help="Continue the sweep in FILE with its stored settings (completed runs kept, "
                   "the rest from their last checkpoint); --models/--lrs/--seeds given here add runs.")
@click.option("--checkpoint-every", type=int, default=None,
              help="Steps between checkpoints (FILE.checkpoints/) [default: every epoch]; "
                   "SIGINT/SIGTERM also checkpoint.")
@click.option("--keep-checkpoints", is_flag=True,
              help="Keep each run's last checkpoint when it completes (removed otherwise).")
@click.option("--tensorboard", type=click.Path(file_okay=False), default=None,
              help="Also write every recorded scalar as TensorBoard events, one run directory "
                   "per run under DIR, as the sweep goes (needs the tensorboard extra).")
@click.option("--save-weights-every", type=int, default=None,
              help="Keep each run's parameters and buffers every N steps, as safetensors files "
                   "in OUT.runs/<run>.weights/ (the first and last step always) [default: off].")
@click.option("--save-weights-at", default=None,
              help="Keep each run's weights at these steps, e.g. 0,100,1000 (with or without "
                   "--save-weights-every) [default: off].")
@click.option("--config", "config_file", default=None,
              help="Experiment file (experiments/*.toml); options given here override it.")
@click.option("--light", is_flag=True, help="With --config: the file's light (CPU) variant.")
@click.option("--variant", default=None,
              help="With --config: apply the file's [variant.NAME] section (e.g. curvature).")
@click.option("--yes", is_flag=True, help=f"Run a sweep of more than {MAX_RUNS_UNASKED:,} runs.")
@hessian_options
def run(models, model_kwargs, lrs, epochs, steps, batch_size, momentum, weight_decay, dropout, optimizer,
        nesterov, activation, loss, label_smoothing,
        probe_every, probe_dtype, etas, dataset, data_root, augment, width, seed, device,
        precision, grid, compile_, out, overwrite, ics_every, ics_layers, activations_every,
        activation_layers, sharpness_every, sharpness_k, trace_samples, weight_stats, config_file,
        resume_file, checkpoint_every, keep_checkpoints, light, variant, yes, use_ray,
        ray_address, ray_gpus_per_task, ray_cpus_per_task, max_retries, lr_schedule,
        lr_step_size, lr_step_gamma, lr_exp_gamma, lr_eta_min, lr_end_factor, lr_plateau_factor,
        lr_patience, tensorboard, save_weights_every, save_weights_at, **hessian):
    """Train every model at every learning rate and every value of the listed axes (seed,
    batch size, momentum, weight decay, dropout, optimizer, activation, loss, label smoothing,
    learning-rate schedule),
    probing the landscape; write one HDF5 file."""
    values = dict(models=_name_list("--models", models),
                  model_kwargs=model_kwargs and _json_object("--model-kwargs", model_kwargs),
                  lrs=_float_list("--lrs", lrs),
                  epochs=epochs, steps=steps,
                  batch_size=_axis("--batch-size", batch_size, int, "integer"),
                  momentum=_axis("--momentum", momentum, float, "number"),
                  weight_decay=_axis("--weight-decay", weight_decay, float, "number"),
                  dropout=_axis("--dropout", dropout, float, "number"),
                  optimizer=_axis("--optimizer", optimizer, str, "name"),
                  nesterov=nesterov,
                  activation=_axis("--activation", activation, str, "name"),
                  loss=_axis("--loss", loss, str, "name"),
                  label_smoothing=_axis("--label-smoothing", label_smoothing, float, "number"),
                  probe_every=probe_every, probe_dtype=probe_dtype,
                  etas=_float_list("--etas", etas), dataset=dataset, data_root=data_root,
                  augment=augment, width=width, seed=_axis("--seed", seed, int, "integer"),
                  device=device, precision=precision,
                  grid=grid, compile=compile_, ics_every=ics_every,
                  ics_layers=ics_layers and _name_list("--ics-layers", ics_layers),
                  activations_every=activations_every,
                  activation_layers=activation_layers and _name_list("--activation-layers",
                                                                     activation_layers),
                  sharpness_every=sharpness_every, sharpness_k=sharpness_k,
                  trace_samples=trace_samples, weight_stats=weight_stats,
                  lr_schedule=_axis("--lr-schedule", lr_schedule, str, "name"),
                  lr_step_size=lr_step_size, lr_step_gamma=lr_step_gamma,
                  lr_exp_gamma=lr_exp_gamma, lr_eta_min=lr_eta_min, lr_end_factor=lr_end_factor,
                  lr_plateau_factor=lr_plateau_factor, lr_patience=lr_patience,
                  save_weights_every=save_weights_every,
                  save_weights_at=save_weights_at and _steps_list("--save-weights-at",
                                                                  save_weights_at),
                  **hessian_values(hessian))
    ctx = click.get_current_context()
    given = {name for name in ctx.params
             if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE}
    ray = _ray_options(use_ray, ray_address, ray_gpus_per_task, ray_cpus_per_task, max_retries)
    if ray is not None:
        ray.validate()
        import_ray()
    if resume_file is not None:
        values = {name.rstrip("_"): values[name.rstrip("_")] for name in given
                  if name.rstrip("_") in values}
        return _resume(Path(resume_file), values, given, ray, yes,
                       dict(checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints,
                            tensorboard=tensorboard))
    if config_file is not None:
        values = merge(load_experiment(config_file, light, variant), {**values, "out": out},
                       given)
        out = values.pop("out")
    elif light:
        raise LandscapeError("--light selects the light variant of an experiment: give --config FILE")
    elif variant is not None:
        raise LandscapeError("--variant selects a variant of an experiment: give --config FILE")
    config = SweepConfig(**values)
    if ray is None:  # on Ray, where the runs train is the cluster's to say: run_sweep_ray
        config.validate()  # validates the settings once it knows
    slices = _experiment_slices(config_file, light, config)
    check_size(config, yes)
    out_path = _out_path(out, overwrite)
    _train(config, out_path, ray, overwrite=overwrite, checkpoint_every=checkpoint_every,
           keep_checkpoints=keep_checkpoints, allow_large=yes, tensorboard=tensorboard,
           **_announce_weights(config, out_path, ray))
    _slice_runs(out_path, slices)


def _out_path(out: str | None, overwrite: bool) -> Path:
    """The sweep file to write: ``--out`` or the default, refused when it is there already
    (without ``--overwrite``) or a directory."""
    out_path = Path(out) if out else _default_out()
    if out_path.exists() and not overwrite:
        raise LandscapeError(f"{out_path} exists; pass --overwrite to replace it or choose another --out")
    if out_path.is_dir():
        raise LandscapeError(f"--out {out_path} is a directory")
    return out_path


def _slice_runs(out_path: Path, slices: list) -> None:
    for run_name, path, slice_id, result in run_slices(out_path, slices):
        _echo_slice(run_name, slice_id, result, path)


def _experiment_slices(config_file: str | None, light: bool, config: SweepConfig) -> list:
    """The experiment file's ``[[slice]]`` tables, checked before anything trains."""
    slices = load_slices(config_file, light) if config_file is not None else []
    check_slices_have_weights(slices, config)
    return slices


def _resume(path: Path, values: dict, given: set[str], ray: RayOptions | None,
            allow_large: bool, options: dict) -> None:
    """``landscape run --resume FILE``: the file's settings, new models, lrs and seeds added."""
    refused = given & {"config_file", "light", "variant", "out", "overwrite"}
    if refused:
        option = "--" + sorted(refused)[0].replace("_file", "").replace("_", "-")
        raise LandscapeError(f"{option} does not go with --resume: a resumed sweep keeps the "
                             f"settings and the file of {path}")
    if not path.is_file():
        raise LandscapeError(f"--resume {path}: no such file")
    sweep = read_sweep(path)
    # On Ray, where the runs train is the cluster's to say: run_sweep_ray validates.
    config = resumed_config(sweep.config, values, path, validate=ray is None)
    check_size(config, allow_large)
    _train(config, path, ray, resume=True, allow_large=allow_large, **options)


def _train(config, out_path: Path, ray: RayOptions | None, **options) -> None:
    """Run the sweep (on Ray with ``ray``) with a progress bar; the summary table, or how it
    stopped."""
    bar = _SweepProgress()
    resume_hint = f"resume with: landscape run --resume {shlex.quote(str(out_path))}"
    try:
        sweep = run_sweep if ray is None else partial(run_sweep_ray, options=ray)
        summaries = sweep(config, str(out_path),
                          command=shlex.join(["landscape"] + sys.argv[1:]),
                          on_progress=bar.update, **options)
    except SweepInterrupted as stop:
        bar.close()
        click.echo(f"{stop}: runs checkpointed and marked interrupted in {out_path}; "
                   f"{resume_hint}", err=True)
        sys.exit(stop.exit_code)
    except KeyboardInterrupt:
        bar.close()
        click.echo(f"interrupted; partial results kept in {out_path}; {resume_hint}", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as error:  # noqa: BLE001
        bar.close()
        if not out_of_memory(error):
            raise
        raise LandscapeError(f"out of {config.device} memory ({type(error).__name__}); runs so far "
                             f"are kept in {out_path}; try a smaller --batch-size or --width") from None
    bar.close()
    click.echo(_summary_table(summaries))
    click.echo(f"wrote {out_path}")
    failed = [s for s in summaries if s.error is not None]
    for s in failed:
        click.echo(f"failed: {s.name}: {s.error}", err=True)
    if failed:  # the sweep went on past them (Ray); the exit status still says so
        raise click.exceptions.Exit(EXIT_RUNS_FAILED)


def _steps_list(option: str, text: str) -> tuple[int, ...]:
    """'0,100,1000' -> (0, 100, 1000): whole numbers >= 0."""
    steps = _axis(option, text, int, "integer")
    steps = steps if isinstance(steps, tuple) else (steps,)
    if any(s < 0 for s in steps):
        raise LandscapeError(f"{option}: steps are counted from 0, got {text!r}")
    return steps


def _announce_weights(config, out_path: Path, ray) -> dict:
    """With --save-weights-*: the snapshots' size printed before the sweep starts (the data
    loaded for it, then handed to the sweep); the sweep's extra options."""
    if WeightSchedule.of(config) is None or ray is not None:  # Ray refuses them itself
        return {}
    data = load_dataset(config.dataset, config.data_root)
    click.echo(describe_plan(config, data, str(out_path)))
    return {"data": data}


def _ray_options(use_ray: bool, address, gpus, cpus, max_retries) -> RayOptions | None:
    """The Ray options, when the sweep runs on Ray (--ray or --ray-address); else None, and
    a Ray option given alone is refused."""
    if use_ray or address is not None:
        return RayOptions(address=address, gpus_per_task=gpus,
                          cpus_per_task=1.0 if cpus is None else cpus,
                          max_retries=2 if max_retries is None else max_retries)
    for option, value in (("--ray-gpus-per-task", gpus), ("--ray-cpus-per-task", cpus),
                          ("--max-retries", max_retries)):
        if value is not None:
            raise LandscapeError(f"{option} applies to Ray sweeps: add --ray (or --ray-address)")
    return None


class _SweepProgress:
    """``click.progressbar`` over the whole sweep's steps, fed by ``run_sweep``'s progress calls.

    On a terminal: one redrawn line (bar, percentage, run, epoch, step, loss). Without one,
    click prints only the label, so the label names the run: one line per run start.
    """

    def __init__(self):
        self.bar = None

    def update(self, p) -> None:
        label = f"run {p.run_index + 1}/{p.runs_total} {p.run}"
        if self.bar is None:
            self.bar = click.progressbar(length=p.runs_total * p.steps_total, label=label,
                                         file=sys.stderr, item_show_func=self._describe,
                                         show_eta=True, width=24)
            self.bar.__enter__()
        elif label != self.bar.label:
            self.bar.label = label
            self.bar.render_progress()
        done = p.run_index * p.steps_total + p.step if p.sweep_step is None else p.sweep_step
        self.bar.update(done - self.bar.pos, current_item=p)

    @staticmethod
    def _describe(p) -> str | None:
        if p is None:
            return None
        loss = "" if p.loss is None else f" loss {p.loss:.4f}"
        return f"epoch {p.epoch + 1} step {p.step}/{p.steps_total}{loss}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


def _summary_table(summaries) -> str:
    rows = [("run", "status", "test acc", "median beta", "seconds")]
    for s in summaries:
        status = s.status if s.diverged_step is None else f"{s.status}@{s.diverged_step}"
        acc = "-" if math.isnan(s.final_test_acc) else f"{s.final_test_acc:.4f}"
        beta = "-" if math.isnan(s.median_beta) else f"{s.median_beta:.3g}"
        rows.append((s.name, status, acc, beta, f"{s.seconds:.1f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


# ---------------------------------------------------------------------------------------
# Reading sweep files: `landscape plot` (HTML report) and `landscape info` (one screen).
# Both open files read-only without locking, so they work on a sweep still being written.
# ---------------------------------------------------------------------------------------

def _points(text: str) -> int | None:
    """``--points``: a whole number, or 'all' (None: every point)."""
    if text.strip().lower() == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise LandscapeError(f"--points must be a whole number >= 1 or 'all', got {text!r}") \
            from None


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=True))
@click.option("-o", "--out", default=None,
              help="HTML file to write [default: the first file with .html, next to it].")
@click.option("--overwrite", is_flag=True, help="Replace an existing -o file.")
@click.option("--smooth", type=int, default=1, show_default=True,
              help="Also draw band edges smoothed over N points (the raw band stays).")
@click.option("--title", default=None, help="Page title [default: the input file names].")
@click.option("--band", default="10,90", show_default=True,
              help="Seed band: LOW,HIGH percent quantiles over seeds (min-max where fewer than "
                   "5 runs; 0,100: always min-max).")
@click.option("--color", default=None,
              help="Axis that colours the faceted figure (model, lr, dropout, batch_size, ...) "
                   "[default: model].")
@click.option("--panel", default=None,
              help="Axis whose values split the faceted figure into panels [default: none].")
@click.option("--best", type=int, default=None,
              help="Draw only the K settings with the lowest final test loss (median over "
                   "seeds) in the training curves and the faceted figure [default: all].")
@click.option("--runs", "run_patterns", multiple=True, metavar="PATTERN",
              help="Draw only the runs whose name matches a shell pattern (commas separate "
                   "patterns; repeatable), e.g. 'vgg_a_bn-lr0.1-*'. Only those are read.")
@click.option("--where", multiple=True, metavar="KEY=VALUE,...",
              help="Draw only the runs with these settings, e.g. lr=0.1,model=vgg_a_bn "
                   "(VALUE|VALUE: either; repeatable).")
@click.option("--points", default=str(MAX_BAND_POINTS), show_default=True,
              help="Pixel columns each per-step series is drawn at (its extremes kept in "
                   "each); 'all' draws every point (WebGL beyond 5,000).")
@click.option("--run-lines", type=int, default=RUN_LINES, show_default=True,
              help="A figure of more runs than this draws one line per setting (the median "
                   "over its seeds and their band) instead of one per run.")
def plot(files, out, overwrite, smooth, title, band, color, panel, best, run_patterns, where,
         points, run_lines):
    """Write one offline HTML report (Fig. 1 and Fig. 4 of the paper) from sweep files."""
    facets = Facets(color=color, panel=panel, best=best, quantiles=parse_band(band))
    out_path = Path(out) if out else default_report_path(files[0])
    written = write_report(files, out_path, smooth=smooth, overwrite=overwrite, title=title,
                           facets=facets, selection=Selection.parse(run_patterns, where),
                           resolution=Resolution(_points(points), run_lines))
    moved = "" if out or written.parent == Path(files[0]).parent else \
        f" (the folder of {files[0]} is not writable)"
    click.echo(f"wrote {written}{moved}")


@cli.command()
@click.argument("file", type=click.Path(dir_okay=True))
def info(file):
    """Summarize a sweep file: runs, status, steps, probes, final accuracies."""
    sweep = read_sweep(file)
    rows = [summarize_run(r) for r in sweep.runs]
    statuses = ", ".join(f"{sum(r.status == s for r in rows)} {s}"
                         for s in dict.fromkeys(r.status for r in rows))
    click.echo(f"{sweep.path}: landscape {sweep.landscape_version}, created {sweep.created}, "
               f"{len(rows)} runs" + (f" ({statuses})" if rows else ""))
    click.echo(f"command: {sweep.command or '-'}")
    extra_header, extra_cells = instrument_columns(rows)  # ICS / activation probe counts
    click.echo(text_table(RUN_TABLE_HEADER + extra_header,
                          [run_table_cells(r) + extra for r, extra in zip(rows, extra_cells)]))
    stale = [r.name for r in rows if r.status == "stale"]
    if stale:
        click.echo(f"stale: {len(stale)} run{'s' * (len(stale) > 1)} marked running that no "
                   f"process writes (its writer was killed): landscape run --resume {file} "
                   "continues them")


@cli.command()
@click.argument("file", type=click.Path(dir_okay=True))
@click.option("--format", "file_format", type=click.Choice(FORMATS), default="csv",
              show_default=True, help="parquet needs the pyarrow package.")
@click.option("-o", "--out", default=None,
              help="Folder for the tables [default: FILE's name without suffix + '-tables', "
                   "next to it].")
@click.option("--overwrite", is_flag=True, help="Replace tables already in the folder.")
def export(file, file_format, out, overwrite):
    """Write a sweep file as tidy tables (steps, probes, epochs, ...), one row per run x step,
    per run x probe x eta, per run x epoch, each with every run attribute as a column."""
    for path in export_tables(file, out, file_format, overwrite):
        click.echo(f"wrote {path}")


@cli.command()
@click.argument("sweep", type=click.Path(dir_okay=True))
@click.option("-o", "--out", required=True, help="The one file to write.")
@click.option("--overwrite", is_flag=True, help="Replace an existing -o file.")
def pack(sweep, out, overwrite):
    """Write a sweep (its index SWEEP and run files SWEEP.runs/) as one self-contained HDF5
    file, to share: the same groups and attributes under /runs/<name>, read by every
    landscape command, plain h5py and xarray (group="runs/<name>/probe")."""
    read_sweep(sweep)  # one line if it is not a sweep
    click.echo(f"wrote {pack_sweep(sweep, out, overwrite)}")


def _grid_shape(text: str) -> tuple[int, ...]:
    """'51' -> (51,), '41x41' -> (41, 41)."""
    try:
        return tuple(int(n) for n in text.lower().split("x"))
    except ValueError:
        raise LandscapeError(f"--grid takes N or NxM, got {text!r}") from None


def _range(text: str) -> tuple[float, float]:
    """'-1:1' -> (-1.0, 1.0)."""
    try:
        low, high = (float(v) for v in text.split(":"))
    except ValueError:
        raise LandscapeError(f"--range takes LOW:HIGH, got {text!r}") from None
    return low, high


@cli.command(name="slice")
@click.argument("sweep", type=click.Path(dir_okay=False))
@click.option("--run", "run_name", required=True, help="The run whose saved weights to slice.")
@click.option("--direction", default="random", show_default=True,
              help="random (Gaussian, seeded), pca (the first two principal components of the "
                   "run's saved trajectory), hessian (the top Hessian eigenvectors at --at, "
                   "on the first evaluation batch), interpolate (a line to --to).")
@click.option("--at", type=int, default=None,
              help="The saved step at the centre [default: the last saved].")
@click.option("--to", default=None,
              help="interpolate: the far end, a saved STEP of this run, another RUN (its last "
                   "saved step) or RUN@STEP (same model: two seeds, two learning rates).")
@click.option("--normalization", default=None,
              help="filter (Li et al.: each output filter of a direction scaled to that "
                   "filter's norm in the weights), layer (each tensor), none "
                   "[default: filter for random and hessian; pca and interpolate: none].")
@click.option("--bn-params", default="zero", show_default=True,
              help="The direction on biases and BatchNorm's gamma, beta (parameters with one "
                   "axis): zero (they stay put), filter (scaled to their norm), copy (the "
                   "direction equals the weights there: Li's CLI default, unless --xignore "
                   "biasbn).")
@click.option("--bn-mode", default="batch", show_default=True,
              help="batch: train mode, each evaluation batch's own statistics (the function "
                   "the optimizer sees); running: eval mode, running statistics re-estimated "
                   "at every point on the evaluation set.")
@click.option("--samples", type=int, default=4096, show_default=True,
              help="Training images in the fixed evaluation set (the first N).")
@click.option("--test", is_flag=True, help="Also the test loss at every point.")
@click.option("--grid", "grid_text", default="21x21", show_default=True,
              help="Points: N (a line) or NxM (a plane); interpolate: N.")
@click.option("--range", "range_text", default=None,
              help="Coordinates LOW:HIGH along each direction [default: -1:1; interpolate "
                   "-0.5:1.5; pca: 1.25 x the trajectory's reach].")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the random directions (d1: SEED, d2: SEED+1) and of Lanczos.")
@click.option("--batch-size", type=int, default=None,
              help="Evaluation batch size [default: the run's training batch size].")
@click.option("--points", default="auto", show_default=True,
              help="sequential, vmap (stacked weights, chunks of points), auto (vmap on a GPU).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--id", "slice_id", default=None, help="The slice's name [default: slice-N].")
@click.option("-o", "--out", default=None,
              help="Write into this HDF5 file instead of the run's file [default: the run's "
                   "file; SWEEP.slices.h5 when the sweep is read-only].")
def slice_(sweep, run_name, direction, at, to, normalization, bn_params, bn_mode, samples, test,
           grid_text, range_text, seed, batch_size, points, device, slice_id, out):
    """A 1D or 2D slice of the loss around one run's saved weights (Li et al. 2018), written
    under /runs/<run>/slices/<id> with every setting as attributes."""
    grid = _grid_shape(grid_text)
    if direction == "interpolate" and grid_text == "21x21":
        grid = (21,)
    settings = SliceSettings(direction=direction, at=at, to=to, normalization=normalization,
                             bn_params=bn_params, bn_mode=bn_mode, samples=samples, test=test,
                             grid=grid, range=range_text and _range(range_text), seed=seed,
                             batch_size=batch_size, points=points, device=device)
    path, name, result = slice_run(sweep, run_name, settings, slice_id, out)
    _echo_slice(run_name, name, result, path)


def _echo_slice(run_name: str, slice_id: str, result, path: Path) -> None:
    loss = result.arrays["loss"]
    click.echo(f"{slice_id}: {result.attrs['direction']} slice of {run_name} at step "
               f"{result.attrs['center_step']}, grid {'x'.join(map(str, loss.shape))}, "
               f"bn-mode {result.attrs['bn_mode']} ({result.attrs['bn_mode_means']}); loss "
               f"{np.nanmin(loss):.4g} to {np.nanmax(loss):.4g}")
    click.echo(f"wrote {path}")


def main(argv=None) -> int:
    """Console entry point: click's own errors and ours become one line and exit code 2."""
    try:
        # Without standalone mode click returns the code of a click.exceptions.Exit raised
        # inside a command (a Ray sweep whose runs failed), and a command's value otherwise.
        code = cli.main(args=argv, prog_name="landscape", standalone_mode=False)
    except click.exceptions.Exit as e:  # --help, --version
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return EXIT_INTERRUPTED
    except click.ClickException as e:
        click.echo(f"error: {e.format_message()}", err=True)
        return EXIT_USAGE
    except LandscapeError as e:
        click.echo(f"error: {e}", err=True)
        return EXIT_USAGE
    except OSError as e:  # a file or folder that cannot be read or written, wherever it surfaced
        where = f"{e.filename}: " if e.filename else ""
        click.echo(f"error: {where}{os_reason(e)}", err=True)
        return EXIT_USAGE
    return code if isinstance(code, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
