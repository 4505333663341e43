"""The sweep file describes itself: units and descriptions on every dataset, strings as str,
HDF5 dimension scales that netCDF readers (xarray + h5netcdf) see as named dimensions."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import xarray as xr

from landscape.read import read_sweep
from landscape.store import SweepStore
from landscape.store.schema import FIELDS, GROUPS

from conftest import add_synthetic_run, probe_record

# Attributes that HDF5's dimension-scale API writes itself (fixed-length ASCII, references).
DIMENSION_SCALE_ATTRS = {"CLASS", "NAME", "DIMENSION_LIST", "REFERENCE_LIST"}


def run_datasets(path) -> dict[str, tuple]:
    """{"/runs/<run>/<group>/<field>": (group, field, attrs, ndim, axis labels, attached scale
    names per axis)} of every run's datasets."""
    found = {}
    with h5py.File(path, "r") as f:
        for run in f["runs"].values():
            for group_name, group in run.items():
                for name, ds in group.items():
                    found[f"{run.name}/{group_name}/{name}"] = (
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
            assert dim == name or scales[axis] == [f"{path.rsplit('/', 1)[0]}/{dim}"], (path, axis)
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
        run = next(iter(f["runs"].values()))
        assert isinstance(run.attrs["model"], str) and isinstance(run.attrs["status"], str)
        assert run["ics/layer"].asstr()[0].startswith("features.")
    assert {"command", "config", "model", "units", "description"} <= set(seen)
    assert any(name.endswith("ics/layer") for name in seen)


def test_xarray_opens_every_group_with_named_dimensions(tiny_sweep, instrumented_sweep):
    sweep = read_sweep(tiny_sweep)
    run = sweep.runs[0]
    group = f"runs/{run.name}"
    with xr.open_dataset(tiny_sweep, engine="h5netcdf", group=f"{group}/probe") as probe:
        assert probe["loss"].dims == ("step", "eta") and probe["grad_diff"].dims == ("step", "eta")
        assert probe["beta"].dims == ("step",)
        np.testing.assert_array_equal(probe["eta"].values, run.probe.eta)
        np.testing.assert_array_equal(probe["step"].values, run.probe.step)
        np.testing.assert_array_equal(probe["loss"].values, run.probe.loss)
        assert probe["eta"].attrs["units"] == "1"
        assert "absolute" in probe["eta"].attrs["description"]
    with xr.open_dataset(tiny_sweep, engine="h5netcdf", group=f"{group}/steps") as steps:
        assert set(steps.dims) == {"step"} and steps["loss"].dims == ("step",)
        np.testing.assert_array_equal(steps["loss"].values, run.steps.loss)
    with xr.open_dataset(tiny_sweep, engine="h5netcdf", group=f"{group}/epochs") as epochs:
        assert epochs["test_acc"].dims == ("epoch",) and epochs["seconds"].attrs["units"] == "s"
        assert epochs["seconds"].dtype == np.float64  # "s" is not decoded as a timedelta

    instrumented = read_sweep(instrumented_sweep).runs[0]
    group = f"runs/{instrumented.name}"
    with xr.open_dataset(instrumented_sweep, engine="h5netcdf", group=f"{group}/ics") as ics:
        assert ics["l2"].dims == ("step", "layer") and ics["layer_index"].dims == ("layer",)
        assert list(ics["layer"].values) == list(instrumented.ics.layer)
        np.testing.assert_array_equal(ics["cosine"].values, instrumented.ics.cosine)
    with xr.open_dataset(instrumented_sweep, engine="h5netcdf",
                         group=f"{group}/activations") as acts:
        assert acts["hist"].dims == ("step", "layer", "bin")
        assert acts["bin_edges"].dims == ("bin_edges",)
        edges = instrumented.activations.bin_edges
        np.testing.assert_allclose(acts["bin"].values, (edges[:-1] + edges[1:]) / 2)
        # a selection by name: the layer #10 histogram at the last probed step
        last = acts["hist"].sel(layer=instrumented.activations.layer[-1]).isel(step=-1)
        np.testing.assert_array_equal(last.values, instrumented.activations.hist[-1, -1])


def test_a_file_being_appended_to_keeps_its_dimension_scales(tmp_path):
    path = tmp_path / "growing.h5"
    store = SweepStore(path, config={}, command="growing")
    log = add_synthetic_run(store, "vgg_a", 0.1, 10)  # probes at steps 0 and 5
    group = f"runs/{log.name}/probe"
    for flush, step in enumerate((10, 15, 20), start=1):
        log.add_probe(probe_record(step, log.eta, np.arange(1.0, 5.0), np.ones(4), 20.0))
        store.flush(log)
        with xr.open_dataset(path, engine="h5netcdf", group=group) as probe:
            assert probe["loss"].dims == ("step", "eta")
            assert probe.sizes == {"step": 2 + flush, "eta": 4}
            assert probe["step"].values[-1] == step
    with h5py.File(path, "r") as f:
        loss = f[group]["loss"]
        assert loss.maxshape == (None, 4)  # still resizable
        assert [s.name for s in loss.dims[0].values()] == [f"/{group}/step"]


def test_declare_refuses_a_field_the_schema_does_not_describe(tmp_path):
    store = SweepStore(tmp_path / "s.h5", config={}, command="")
    log = store.run("r", eta=[0.1], model="vgg_a", lr=0.1, seed=0)
    with pytest.raises(ValueError, match="not described"):
        log.declare("ics", {"step": (np.int64, ()), "mystery": (np.float64, (2,))})
    with pytest.raises(ValueError, match="not described"):
        log.declare("my_probe", {"step": (np.int64, ())})
