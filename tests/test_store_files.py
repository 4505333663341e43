"""The store's files: a file per run, its journal, compactions, locks, packing, older files.

Real HDF5 files and real processes throughout: a writer process flushing while this one reads,
journals cut at every byte, a stored file of the previous release.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr

from landscape.cli import main
from landscape.errors import LandscapeError
from landscape.store import RunWriter, SweepStore, pack, read_sweep, run_file, runs_dir
from landscape.store.journal import append_record, encode, read_records
from landscape.store.runfile import journals

from conftest import STORE_ATTRS, sweep_datasets

REPO = Path(__file__).resolve().parents[1]
SCHEMA2 = REPO / "tests" / "data" / "sweep-schema2.h5"  # written by the release before run files


def add_steps(log, start: int, stop: int) -> None:
    """Steps whose every value is a function of the step: a reader can check each row."""
    step = np.arange(start, stop)
    log.add_steps(step=step, epoch=step // 100, loss=step * 0.5, grad_norm=step + 1.0,
                  grad_diff=step * 2.0, beta_consecutive=step * 3.0)


def new_run(tmp_path, name="r"):
    store = SweepStore(tmp_path / "s.h5", config={}, command="test")
    return store, store.run(name, eta=[0.1, 0.2], model="vgg_a", lr=0.1, seed=0)


def test_a_record_roundtrips_and_a_torn_or_changed_one_is_never_read(tmp_path):
    block = {"name": "r", "eta": np.array([0.1, 0.2]), "attrs": {"status": "running", "lr": 0.1,
                                                               "flag": True, "none": None},
             "rows": {"steps": {"loss": np.arange(5.0), "step": np.arange(5)},
                      "ics": {"l2": np.ones((3, 2), np.float32)}},
             "extra": {"ics": {"fields": {"l2": (np.dtype(np.float32), (2,))},
                               "constants": {"layer": ["a", "b"]}}}}
    path = tmp_path / "j"
    first, second = encode(block), encode({**block, "attrs": {"status": "completed"}})
    append_record(path, first)
    append_record(path, second)
    (got, again), size = read_records(path)
    assert size == len(first) + len(second)
    np.testing.assert_array_equal(got["rows"]["steps"]["loss"], block["rows"]["steps"]["loss"])
    assert got["rows"]["steps"]["step"].dtype == np.int64
    assert got["rows"]["ics"]["l2"].dtype == np.float32 and got["rows"]["ics"]["l2"].shape == (3, 2)
    assert got["attrs"] == block["attrs"] and again["attrs"] == {"status": "completed"}
    assert got["extra"]["ics"]["fields"]["l2"][0] == np.dtype(np.float32)
    data = path.read_bytes()
    for cut in range(len(first), len(data)):  # a kill anywhere inside the second record
        path.write_bytes(data[:cut])
        records, size = read_records(path)
        assert len(records) == 1 and size == len(first)
    for at in (len(first) + 25, len(data) - 1):  # a changed byte: the CRC fails
        changed = bytearray(data)
        changed[at] ^= 0xFF
        path.write_bytes(bytes(changed))
        assert len(read_records(path)[0]) == 1
    assert read_records(tmp_path / "none") == ([], 0)


def test_a_flush_appends_to_the_journal_and_the_file_is_rewritten_only_when_due(tmp_path):
    store, log = new_run(tmp_path)
    path = run_file(store.path, "r")
    rewrites, last = 0, os.stat(path).st_ino
    for start in range(0, 2000, 10):
        add_steps(log, start, start + 10)
        store.flush(log)
        inode = os.stat(path).st_ino
        rewrites, last = rewrites + (inode != last), inode
        journal = sum(p.stat().st_size for p in journals(path))
        assert journal <= path.stat().st_size + 2000  # never much past the file: compacted
        assert len(read_sweep(store.path).runs[0].steps.step) == start + 10
    assert 1 <= rewrites <= 12, rewrites  # each at least doubles the file: a handful, not 200
    with h5py.File(store.path, "r") as f:  # plain h5py: a whole prefix, up to the last rewrite
        steps = f["runs/r/steps/step"][()]
        assert 0 < len(steps) <= 2000 and np.array_equal(steps, np.arange(len(steps)))
        assert len(f["runs/r/steps/loss"]) == len(steps)
    log.set_attrs(status="completed")
    store.flush(log)
    assert not journals(path) and not (path.parent / "r.h5.lock").exists()
    with h5py.File(store.path, "r") as f:  # an ended run: one plain file with every row
        np.testing.assert_array_equal(f["runs/r/steps/loss"][()], np.arange(2000) * 0.5)
        assert f["runs/r"].attrs["status"] == "completed"


def test_a_run_whose_writer_is_gone_reads_stale_and_continues_whole(tmp_path, capsys):
    store, log = new_run(tmp_path)
    add_steps(log, 0, 30)
    store.flush(log)
    assert not read_sweep(store.path).runs[0].stale  # its writer holds its lock
    with pytest.raises(LandscapeError, match="in use by another writer"):
        RunWriter(runs_dir(store.path)).run("r", eta=[0.1, 0.2])  # a second writer
    store.close()  # as a kill leaves it: status running, nobody writing
    run = read_sweep(store.path).runs[0]
    assert run.stale and run.status == "running" and len(run.steps.step) == 30
    assert main(["info", str(store.path)]) == 0
    out = capsys.readouterr().out
    assert " stale " in out and f"landscape run --resume {store.path}" in out
    again = SweepStore.reopen(store.path)  # what --resume does: the journal compacted away
    assert again.run_attrs["r"]["status"] == "running" and not journals(run_file(store.path, "r"))
    log = again.run("r", eta=[0.1, 0.2])
    assert log.rows_in_file["steps"] == 30
    add_steps(log, 30, 40)
    log.set_attrs(status="completed")
    again.flush(log)
    np.testing.assert_array_equal(read_sweep(store.path).runs[0].steps.step, np.arange(40))


WRITER = textwrap.dedent("""
    import sys, numpy as np
    from landscape.store import SweepStore
    store = SweepStore(sys.argv[1], config={}, command="writer")
    logs = [store.run(f"r{i}", eta=[0.1, 0.2], model="vgg_a", lr=0.1, seed=i) for i in range(3)]
    for start in range(0, 6000, 20):
        for log in logs:
            step = np.arange(start, start + 20)
            log.add_steps(step=step, epoch=step // 100, loss=step * 0.5, grad_norm=step + 1.0,
                          grad_diff=step * 2.0, beta_consecutive=step * 3.0)
            store.flush(log)
    for log in logs:
        log.set_attrs(status="completed")
    store.flush()
""")


def test_a_reader_polling_a_writing_process_never_sees_a_torn_or_wrong_row(tmp_path):
    """A real writer process flushes 3 runs 300 times each (journal records and compactions);
    this process reads all the while: every read is a whole prefix, every value right."""
    out = tmp_path / "s.h5"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH",
                                                                                   "")])}
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(out)], env=env)
    reads, lengths = 0, set()
    try:
        while writer.poll() is None or reads == 0:
            if out.exists():
                with h5py.File(out, "r", locking=False) as f:
                    names = list(f["runs"])
                for run in read_sweep(out).runs if names else []:
                    steps = run.steps
                    n = len(steps.step)
                    assert np.array_equal(steps.step, np.arange(n)), run.name
                    assert np.array_equal(steps.loss, np.arange(n) * 0.5), run.name
                    assert np.array_equal(steps.beta_consecutive, np.arange(n) * 3.0), run.name
                    lengths.add(n)
                reads += 1
            time.sleep(0.002)
    finally:
        writer.wait(timeout=120)
    assert writer.returncode == 0
    assert reads > 20 and len(lengths) > 3, (reads, len(lengths))  # it read mid-sweep
    assert [len(r.steps.step) for r in read_sweep(out).runs] == [6000] * 3


def test_a_sweep_packs_into_one_file_and_its_folder_moves(tmp_path):
    store, log = new_run(tmp_path)
    add_steps(log, 0, 50)
    store.flush(log)  # in the journal: packing takes it too
    packed = pack(store.path, tmp_path / "one.h5")
    with pytest.raises(LandscapeError, match="exists"):
        pack(store.path, packed)
    a, b = read_sweep(store.path).runs[0], read_sweep(packed).runs[0]
    np.testing.assert_array_equal(a.steps.loss, b.steps.loss)
    assert a.attrs == b.attrs and len(b.steps.step) == 50
    with h5py.File(packed, "r") as f:
        assert f.attrs["layout"] == "one-file" and isinstance(f["runs/r"], h5py.Group)
        assert not set(STORE_ATTRS) & set(f["runs/r"].attrs)
    with xr.open_dataset(packed, engine="h5netcdf", group="runs/r/steps") as steps:
        np.testing.assert_array_equal(steps["loss"].values, a.steps.loss)
    log.set_attrs(status="completed")
    store.flush(log)
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.move(store.path, moved / "s.h5")
    shutil.move(runs_dir(store.path), moved / "s.h5.runs")
    with h5py.File(moved / "s.h5", "r") as f:  # plain h5py through the relative links
        np.testing.assert_array_equal(f["runs/r/steps/loss"][()], a.steps.loss)
    os.rename(moved / "s.h5", moved / "t.h5")  # renamed with its folder: landscape still reads it
    os.rename(moved / "s.h5.runs", moved / "t.h5.runs")
    np.testing.assert_array_equal(read_sweep(moved / "t.h5").runs[0].steps.loss, a.steps.loss)


def test_a_file_of_the_previous_release_reads_and_resumes_as_run_files(tmp_path, capsys):
    """tests/data/sweep-schema2.h5: two CNN runs with probes, ICS and sharpness, written as
    one file by the release before run files. Every command reads it; reopening it (what
    --resume does) turns it into run files with the same numbers."""
    old = tmp_path / "old.h5"
    shutil.copy(SCHEMA2, old)
    before = read_sweep(old)
    assert [r.name for r in before.runs] == ["cnn-lr0.1-seed0", "cnn_bn-lr0.1-seed0"]
    assert all(r.status == "completed" and len(r.steps.step) == 6 for r in before.runs)
    assert before.runs[0].ics is not None and before.runs[0].curvature is not None
    with h5py.File(old, "r") as f:
        raw = sweep_datasets(f)
        assert f.attrs["schema"] == 2 and "layout" not in f.attrs
    assert main(["info", str(old)]) == 0
    assert main(["export", str(old), "-o", str(tmp_path / "tables")]) == 0
    assert main(["plot", str(old), "-o", str(tmp_path / "old.html")]) == 0
    SweepStore.reopen(old)
    with h5py.File(old, "r") as f:
        assert f.attrs["layout"] == "run-files"
        assert isinstance(f["runs"].get("cnn-lr0.1-seed0", getlink=True), h5py.ExternalLink)
        now = sweep_datasets(f)
    assert now.keys() == raw.keys()
    for key, value in raw.items():
        np.testing.assert_array_equal(now[key], value, err_msg=key)
    after = read_sweep(old)
    for a, b in zip(before.runs, after.runs):
        assert a.attrs == b.attrs
        np.testing.assert_array_equal(a.probe.loss, b.probe.loss)
        np.testing.assert_array_equal(a.ics.l2, b.ics.l2)
    with xr.open_dataset(run_file(old, "cnn_bn-lr0.1-seed0"), engine="h5netcdf",
                         group="probe") as probe:  # dimension scales made anew
        assert probe["loss"].dims == ("step", "eta")


def test_a_new_sweep_refuses_a_runs_folder_left_by_another(tmp_path):
    store, log = new_run(tmp_path)
    store.close()
    os.unlink(store.path)  # the file gone, its runs' folder left
    with pytest.raises(LandscapeError, match="s.h5.runs exists"):
        SweepStore(store.path, config={}, command="")
    SweepStore(store.path, config={}, command="", overwrite=True)
    assert not list(runs_dir(store.path).iterdir())
