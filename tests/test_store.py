"""The sweep file describes itself: units and descriptions on every dataset, strings as str,
HDF5 dimension scales that netCDF readers (xarray + h5netcdf) see as named dimensions."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest
import xarray as xr

from landscape.read import read_sweep
from landscape.store import RunLog, SweepStore, pack, run_file
from landscape.store.schema import FIELDS, GROUPS

from conftest import STORE_ATTRS, add_synthetic_run, probe_record, sweep_datasets

# Attributes that HDF5's dimension-scale API writes itself (fixed-length ASCII, references).
DIMENSION_SCALE_ATTRS = {"CLASS", "NAME", "DIMENSION_LIST", "REFERENCE_LIST"}


def run_datasets(path) -> dict[str, tuple]:
    """{"/runs/<run>/<group>/<field>": (group, field, attrs, ndim, axis labels, attached scale
    names per axis)} of every run's datasets."""
    found = {}
    with h5py.File(path, "r") as f:
        for run_name, run in f["runs"].items():  # each an external link to the run's file
            for group_name, group in run.items():
                for name, ds in group.items():
                    found[f"/runs/{run_name}/{group_name}/{name}"] = (
                        group_name, name, dict(ds.attrs), ds.ndim,
                        [d.label for d in ds.dims], [[s.name for s in d.values()] for d in ds.dims])
    return found


def test_every_dataset_has_units_and_its_schema_description(instrumented_sweep, tiny_sweep):
    datasets = {**run_datasets(instrumented_sweep), **run_datasets(tiny_sweep)}
    groups = {group for group, *_ in datasets.values()}
    assert groups == {"steps", "epochs", "probe", "ics", "activations"}
    for path, (group, name, attrs, ndim, _, scales) in datasets.items():
        field = FIELDS[group][name]
        assert attrs["units"] == field.units and attrs["description"] == field.description, path
        assert field.description and len(field.dims) == ndim, path
        # every axis is a named dimension: the dataset itself is the scale, or one is attached
        for axis, dim in enumerate(field.dims):
            group_path = path.rsplit("/", 1)[0].split("/", 3)[-1]  # in the run's own file
            assert dim == name or scales[axis] == [f"/{group_path}/{dim}"], (path, axis)
    assert "0-based" in FIELDS["epochs"]["epoch"].description
    assert "absolute" in FIELDS["probe"]["eta"].description
    assert "minibatch loss" in FIELDS["steps"]["loss"].description
    with h5py.File(tiny_sweep, "r") as f:
        run = next(iter(f["runs"].values()))
        assert run["probe"].attrs["description"] == GROUPS["probe"]
        assert run["epochs/epoch"][:].tolist() == [0]  # 0-based, as described


def test_strings_come_back_as_str_from_plain_h5py(instrumented_sweep):
    seen = []

    def check(name, obj):
        for key, value in obj.attrs.items():
            if key not in DIMENSION_SCALE_ATTRS and not isinstance(value, (int, float, np.number,
                                                                           np.bool_)):
                assert isinstance(value, str), (name, key, value)
                seen.append(key)
        if isinstance(obj, h5py.Dataset) and obj.dtype.kind == "O":
            assert h5py.check_string_dtype(obj.dtype).encoding == "utf-8", name
            assert all(isinstance(v, str) for v in obj.asstr()[()]), name
            seen.append(name)

    with h5py.File(instrumented_sweep, "r") as f:
        check("/", f)
        f.visititems(check)
        for run in f["runs"].values():  # through the external links
            check(run.file.filename, run)
            run.visititems(check)
        run = next(iter(f["runs"].values()))
        assert isinstance(run.attrs["model"], str) and isinstance(run.attrs["status"], str)
        assert run["ics/layer"].asstr()[0].startswith("features.")
    assert {"command", "config", "model", "units", "description"} <= set(seen)
    assert any(name.endswith("ics/layer") for name in seen)


def test_xarray_opens_every_group_with_named_dimensions(tiny_sweep, instrumented_sweep, tmp_path):
    """netCDF readers open a run's own file (h5netcdf does not follow the sweep file's external
    links), and a packed sweep's runs as groups of the one file."""
    sweep = read_sweep(tiny_sweep)
    run = sweep.runs[0]
    source, group = run_file(tiny_sweep, run.name), ""
    with xr.open_dataset(source, engine="h5netcdf", group=f"{group}probe") as probe:
        assert probe["loss"].dims == ("step", "eta") and probe["grad_diff"].dims == ("step", "eta")
        assert probe["beta"].dims == ("step",)
        np.testing.assert_array_equal(probe["eta"].values, run.probe.eta)
        np.testing.assert_array_equal(probe["step"].values, run.probe.step)
        np.testing.assert_array_equal(probe["loss"].values, run.probe.loss)
        assert probe["eta"].attrs["units"] == "1"
        assert "absolute" in probe["eta"].attrs["description"]
    with xr.open_dataset(source, engine="h5netcdf", group=f"{group}steps") as steps:
        assert set(steps.dims) == {"step"} and steps["loss"].dims == ("step",)
        np.testing.assert_array_equal(steps["loss"].values, run.steps.loss)
    with xr.open_dataset(source, engine="h5netcdf", group=f"{group}epochs") as epochs:
        assert epochs["test_acc"].dims == ("epoch",) and epochs["seconds"].attrs["units"] == "s"
        assert epochs["seconds"].dtype == np.float64  # "s" is not decoded as a timedelta

    instrumented = read_sweep(instrumented_sweep).runs[0]
    packed = pack(instrumented_sweep, tmp_path / "packed.h5")
    group = f"runs/{instrumented.name}"
    with xr.open_dataset(packed, engine="h5netcdf", group=f"{group}/ics") as ics:
        assert ics["l2"].dims == ("step", "layer") and ics["layer_index"].dims == ("layer",)
        assert list(ics["layer"].values) == list(instrumented.ics.layer)
        np.testing.assert_array_equal(ics["cosine"].values, instrumented.ics.cosine)
    with xr.open_dataset(packed, engine="h5netcdf", group=f"{group}/activations") as acts:
        assert acts["hist"].dims == ("step", "layer", "bin")
        assert acts["bin_edges"].dims == ("bin_edges",)
        edges = instrumented.activations.bin_edges
        np.testing.assert_allclose(acts["bin"].values, (edges[:-1] + edges[1:]) / 2)
        # a selection by name: the layer #10 histogram at the last probed step
        last = acts["hist"].sel(layer=instrumented.activations.layer[-1]).isel(step=-1)
        np.testing.assert_array_equal(last.values, instrumented.activations.hist[-1, -1])


def test_a_file_being_appended_to_keeps_its_dimension_scales(tmp_path):
    """Flushes go to the run's journal: its file (what netCDF readers open) holds a prefix of
    the rows, with its scales, until the run ends; then all of them."""
    path = tmp_path / "growing.h5"
    store = SweepStore(path, config={}, command="growing")
    log = add_synthetic_run(store, "vgg_a", 0.1, 10)  # probes at steps 0 and 5
    for step in (10, 15, 20):
        log.add_probe(probe_record(step, log.eta, np.arange(1.0, 5.0), np.ones(4), 20.0))
        store.flush(log)
        with xr.open_dataset(run_file(path, log.name), engine="h5netcdf", group="probe") as probe:
            assert probe["loss"].dims == ("step", "eta")
            assert 2 <= probe.sizes["step"] <= 5 and probe.sizes["eta"] == 4
            assert list(probe["step"].values) == [0, 5, 10, 15, 20][:probe.sizes["step"]]
        assert read_sweep(path).runs[0].probe.step[-1] == step  # the journal's rows too
    log.set_attrs(status="completed")
    store.flush(log)
    with xr.open_dataset(run_file(path, log.name), engine="h5netcdf", group="probe") as probe:
        assert probe.sizes == {"step": 5, "eta": 4}
    with h5py.File(path, "r") as f:
        loss = f[f"runs/{log.name}/probe/loss"]
        assert loss.maxshape == (None, 4)  # still resizable
        assert [s.name for s in loss.dims[0].values()] == ["/probe/step"]


def test_declare_refuses_a_field_the_schema_does_not_describe(tmp_path):
    store = SweepStore(tmp_path / "s.h5", config={}, command="")
    log = store.run("r", eta=[0.1], model="vgg_a", lr=0.1, seed=0)
    with pytest.raises(ValueError, match="not described"):
        log.declare("ics", {"step": (np.int64, ()), "mystery": (np.float64, (2,))})
    with pytest.raises(ValueError, match="not described"):
        log.declare("my_probe", {"step": (np.int64, ())})


def _write_parts(log, part: int) -> None:
    """Part ``part`` of a run's rows: steps, probes split by layer, an ICS group, attributes."""
    eta, steps = log.eta, np.arange(5 * part, 5 * part + 5)
    if part == 0:
        log.declare("ics", {"step": (np.int64, ()), "l2": (np.float64, (2,)),
                            "cosine": (np.float64, (2,)), "grad_norm": (np.float64, (2,))},
                    {"layer": ["features.0", "features.3"],
                     "layer_index": np.array([1, 2], np.int64)})
    log.add_steps(step=steps, epoch=steps // 10, loss=1.0 / (1 + steps), grad_norm=steps + 0.5,
                  grad_diff=np.sqrt(steps), beta_consecutive=steps * 2.0)
    record = probe_record(int(steps[0]), eta, np.arange(1.0, 5.0) * (part + 1), np.ones(4), 3.0)
    record.layer = ("features.0", "classifier.0")
    record.grad_diff_layer = np.arange(8.0).reshape(4, 2) + part
    record.grad_norm_layer = np.array([0.5, 1.5]) * (part + 1)
    log.add_probe(record)
    log.append("ics", step=int(steps[0]), l2=[0.1 * part, 0.2], cosine=[0.9, 0.8 - part / 10],
               grad_norm=[1.0, 2.0])
    log.add_epoch(epoch=part, steps=5, train_loss=2.0 - part, train_acc=0.1 * part,
                  test_loss=2.1 - part, test_acc=0.1 * part, seconds=1.0)
    log.set_attrs(steps_completed=int(steps[-1]) + 1,
                  **({"status": "completed"} if part == 2 else {}))


def _file_contents(path) -> tuple[dict, dict]:
    datasets, attrs = {}, {}
    with h5py.File(path, "r") as f:
        datasets = sweep_datasets(f)
        for run_name, run in f["runs"].items():
            def visit(name, obj, prefix=f"runs/{run_name}"):
                attrs[f"{prefix}/{name}"] = {k: v for k, v in obj.attrs.items()
                                             if k not in ("DIMENSION_LIST", "REFERENCE_LIST")}
            visit("", run)
            run.visititems(visit)
        attrs = {k.rstrip("/"): {a: v for a, v in values.items() if a not in STORE_ATTRS}
                 for k, values in attrs.items()}
    return datasets, attrs


def _nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {group: n for group, n in counts.items() if n}


def test_rows_relayed_from_a_log_in_another_process_write_the_same_file(tmp_path):
    """What a Ray worker does: its log's rows handed over (``take_pending``, pickled as they
    travel) and replayed into the writer's log (``absorb``) give the file that writing the
    same calls directly gives -- steps, probes split by layer, a declared group, attributes."""
    attrs = dict(model="vgg_a", norm="none", lr=0.1, seed=0)
    direct = SweepStore(tmp_path / "direct.h5", config={}, command="")
    relayed = SweepStore(tmp_path / "relayed.h5", config={}, command="")
    log = direct.run("r", eta=[0.05, 0.1, 0.2, 0.4], **attrs)
    worker = RunLog("r", [0.05, 0.1, 0.2, 0.4])
    worker.set_attrs(status="running", **attrs)
    for part in range(3):
        _write_parts(log, part)
        direct.flush(log)
        _write_parts(worker, part)
        # What the writer's file holds once these rows arrive: what a worker's checkpoint
        # refers to (the file's row counts, ``rows_in_file``).
        worker.rows_in_file = worker.rows_held()
        pending = pickle.loads(pickle.dumps(worker.take_pending()))
        replayed = relayed.runs.get("r") or relayed.run("r", pending["eta"])
        replayed.absorb(pending)
        assert _nonzero(replayed.rows_held()) == worker.rows_in_file
        relayed.flush(replayed)
        assert all(not values for values in worker._rows["steps"].values())  # handed over
        assert _nonzero(replayed.rows_in_file) == worker.rows_in_file == _nonzero(log.rows_in_file)
    (a, a_attrs), (b, b_attrs) = _file_contents(direct.path), _file_contents(relayed.path)
    assert a.keys() == b.keys() and "runs/r/ics/l2" in a and "runs/r/probe/grad_diff_layer" in a
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert a_attrs == b_attrs and b_attrs["runs/r"]["status"] == "completed"
    assert len(b["runs/r/steps/step"]) == 15


def test_absorb_refuses_another_runs_rows(tmp_path):
    store = SweepStore(tmp_path / "s.h5", config={}, command="")
    log = store.run("a", eta=[0.1])
    with pytest.raises(ValueError, match="replayed into run 'a'"):
        log.absorb(RunLog("b", [0.1]).take_pending())
