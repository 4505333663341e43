"""Hard stops of a real ``python -m landscape run``: kill -9, SIGTERM, a write that fails.

The stress test kills the sweep again and again, after 1-3 checkpoints, in turn: as soon as a
file is being rewritten (a run's compaction, the index), as soon as a journal has begun to
grow (a flush's record half-written), as soon as a checkpoint write has begun
(``LANDSCAPE_WRITE_PAUSE`` stretches each of them, so the kill lands inside), or at a random
instant -- while a reader polls the sweep. After each
kill the file must open with h5py with no torn row, ``landscape info`` and ``landscape plot``
must read it, and ``--resume`` goes on; the final file must equal the uninterrupted sweep.
``LANDSCAPE_STRESS_KILLS`` sets the number of kills (5 by default; 30 or more by hand).
"""

from __future__ import annotations

import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import pytest

from conftest import one_cpu_thread
from landscape.cli import main
from landscape.store import WRITE_PAUSE_ENV, read_sweep, runs_dir
from landscape.store.journal import read_records
from landscape.train.checkpoint import checkpoint_dir
from resume_util import assert_same_sweep, assert_whole, write_tiny_npz

KILLS = int(os.environ.get("LANDSCAPE_STRESS_KILLS", "5"))
REPO = Path(__file__).resolve().parents[1]


def sweep_args(npz: Path, steps: int) -> list[str]:
    return ["run", "--dataset", str(npz), "--models", "vgg_a_bn", "--lrs", "0.05,0.1",
            "--width", "0.0625", "--steps", str(steps), "--batch-size", "16", "--probe-every", "5",
            "--momentum", "0.9", "--augment", "--device", "cpu", "--grid", "sequential"]


def environment(pause: float = 0.0) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1",  # one thread, as the reference
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env[WRITE_PAUSE_ENV] = str(pause) if pause else ""
    return env


def start(args: list[str], pause: float = 0.0, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "landscape"] + args, env=environment(pause),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.fixture(scope="module")
def npz(tmp_path_factory) -> Path:
    return write_tiny_npz(tmp_path_factory.mktemp("data") / "tiny.npz")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, npz):
    """The uninterrupted sweep of ``steps`` steps a run (made once per length)."""
    made = {}

    def make(steps: int) -> Path:
        if steps not in made:
            out = tmp_path_factory.mktemp("reference") / "sweep.h5"
            with one_cpu_thread():
                assert main(sweep_args(npz, steps) + ["--out", str(out)]) == 0
            made[steps] = out
        return made[steps]

    return make


def version(path: Path) -> tuple[int, int, int] | None:
    """Which version of the file is there: a rewrite makes a new inode (and a new mtime), an
    append a new size."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def wait_for(condition, proc: subprocess.Popen) -> bool:
    """Poll until ``condition()``, or until the process ended (False)."""
    while not condition():
        if proc.poll() is not None:
            return False
        time.sleep(0.001)
    return True


def sweep_version(out: Path) -> tuple:
    """Which version of the sweep is there: its index's, each run file's and journal's."""
    files = [out] + sorted(runs_dir(out).glob("*.h5")) + sorted(runs_dir(out).glob("*.journal-*"))
    return tuple((path.name, version(path)) for path in files)


def wait_commits(path: Path, proc: subprocess.Popen, commits: int) -> bool:
    """Wait until the sweep was written ``commits`` times, or the process ended (False)."""
    seen = [sweep_version(path)]

    def committed() -> bool:
        now = sweep_version(path)
        if now != seen[-1]:
            seen.append(now)
        return len(seen) > commits

    return wait_for(committed, proc)


def rewriting(out: Path) -> bool:
    """A file of the sweep is being rewritten: a temporary copy is there."""
    return any(out.parent.glob(f".{out.name}.tmp-*")) or any(runs_dir(out).glob(".*.tmp-*"))


def journal_sizes(out: Path) -> dict:
    return {p.name: p.stat().st_size for p in runs_dir(out).glob("*.journal-*")
            if p.exists()}


def torn_journals(out: Path) -> int:
    """Journals that end in part of a record (a kill inside an append)."""
    return sum(read_records(p)[1] < p.stat().st_size for p in runs_dir(out).glob("*.journal-*"))


def checkpoints_of(out: Path) -> dict:
    return {p.name: version(p) for p in checkpoint_dir(out).glob("*.pt")}


class Poller(threading.Thread):
    """Reads the file over and over while it is written and killed: raw h5py (no torn group)
    and ``read_sweep``; counts reads and keeps the first failure."""

    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.path, self.reads, self.failure, self.running = path, 0, None, True

    def run(self) -> None:
        while self.running and self.failure is None:
            if self.path.exists():
                try:
                    assert_whole(self.path)
                    read_sweep(self.path)
                    self.reads += 1
                except Exception as error:  # noqa: BLE001 - reported by the test
                    self.failure = error
            time.sleep(0.01)


def test_kill_9_at_random_instants_then_resume(tmp_path, npz, reference):
    """At least KILLS kills of the real CLI at random instants; the file survives each, is
    read by h5py, ``info`` and ``plot``; the resumed sweep equals the uninterrupted one."""
    steps = 4 * KILLS + 12  # more than the kills let through (~6 steps a session, 2 runs)
    out, rng = tmp_path / "sweep.h5", random.Random(16)
    first = sweep_args(npz, steps) + ["--out", str(out), "--checkpoint-every", "2"]
    poller = Poller(out)
    poller.start()
    kills, in_commit, in_journal, in_checkpoint, sessions = 0, 0, 0, 0, 0
    started = time.perf_counter()
    while True:
        proc = start(first if sessions == 0 else
                     ["run", "--resume", str(out), "--checkpoint-every", "2"], pause=0.02)
        sessions += 1
        # Training goes on for 1-3 checkpoints, then the kill comes, in turn: as soon as a
        # commit of the file or a checkpoint write has begun (its temporary file is there), or
        # at a random instant.
        where = ("commit", "journal", "checkpoint", "anywhere")[kills % 4]
        seen = [checkpoints_of(out)]

        def checkpointed(times=rng.randint(1, 3)) -> bool:
            if checkpoints_of(out) != seen[-1]:
                seen.append(checkpoints_of(out))
            return len(seen) > times

        before: list[dict] = []  # the journals' sizes when the wait began

        def appending() -> bool:  # a journal grew: the first half of a record is written
            now = journal_sizes(out)
            grew = bool(before) and any(size > before[0].get(name, 0)
                                        for name, size in now.items())
            before[:] = [now]
            return grew

        writing = {"commit": lambda: rewriting(out),
                   "journal": appending,
                   "checkpoint": lambda: any(checkpoint_dir(out).glob(".*.tmp-*")),
                   "anywhere": lambda: time.sleep(rng.uniform(0.0, 0.2)) or True}[where]
        if kills < KILLS and wait_for(checkpointed, proc) and wait_for(writing, proc):
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
            if proc.returncode != -signal.SIGKILL:
                continue  # it finished first
            kills += 1
            in_commit += rewriting(out)
            in_journal += torn_journals(out) > 0
            in_checkpoint += any(checkpoint_dir(out).glob(".*.tmp-*"))
            assert_whole(out)
            with one_cpu_thread():
                assert main(["info", str(out)]) == 0
                if kills % 10 == 1:  # a report (slower) after some of them
                    assert main(["plot", str(out), "-o", str(tmp_path / "r.html"),
                                 "--overwrite"]) == 0
            continue
        _, err = proc.communicate()
        assert proc.returncode == 0, err
        break
    poller.running = False
    poller.join()
    print(f"\n{kills} kills ({in_commit} inside a file rewrite, {in_journal} inside a journal "
          f"append, {in_checkpoint} inside a checkpoint write), {sessions} sessions, "
          f"{poller.reads} reads while writing, {time.perf_counter() - started:.0f} s")
    assert kills >= KILLS
    # kills did land inside each kind of write
    assert KILLS < 4 or (in_commit and in_journal and in_checkpoint), (in_commit, in_journal)
    assert poller.failure is None, poller.failure
    assert poller.reads > 0
    assert_same_sweep(out, reference(steps))
    assert not checkpoint_dir(out).exists()
    assert not rewriting(out) and not journal_sizes(out)  # every run one whole file


def test_sigterm_checkpoints_marks_interrupted_and_says_how_to_resume(tmp_path, npz, reference):
    out = tmp_path / "sweep.h5"
    proc = start(sweep_args(npz, 24) + ["--out", str(out), "--checkpoint-every", "100"])
    assert wait_commits(out, proc, 4)  # created, run opened, its groups, ... training
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate()
    assert proc.returncode == 143, err
    assert f"landscape run --resume {out}" in err.splitlines()[-1]
    with h5py.File(out, "r") as f:
        statuses = [r.attrs["status"] for r in f["runs"].values()]
    # Nothing is left "running". On a loaded machine the signal may land between the two runs
    # (after the first completed): then nothing is interrupted and no checkpoint is left.
    assert set(statuses) <= {"completed", "interrupted"}, statuses
    interrupted = statuses.count("interrupted")
    assert interrupted <= 1
    # The stop's own checkpoint, one per interrupted run.
    assert len(list(checkpoint_dir(out).glob("*.pt"))) == interrupted
    proc = start(["run", "--resume", str(out)])
    _, err = proc.communicate()
    assert proc.returncode == 0, err
    assert_same_sweep(out, reference(24))


def test_second_process_on_the_same_file_is_refused_and_the_first_unharmed(tmp_path, npz,
                                                                           reference):
    out = tmp_path / "sweep.h5"
    first = start(sweep_args(npz, 24) + ["--out", str(out)])
    assert wait_commits(out, first, 2)
    first.send_signal(signal.SIGSTOP)  # held where it is, lock and all, while the others try
    try:
        for args in (["run", "--resume", str(out)],
                     sweep_args(npz, 24) + ["--out", str(out), "--overwrite"]):
            second = start(args)
            _, err = second.communicate()
            assert second.returncode == 2 and "in use by another sweep" in one_error_line(err)
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate()
    assert first.returncode == 0, err
    assert_same_sweep(out, reference(24))


def one_error_line(err: str) -> str:
    """The error of a failed run: one ``error:`` line, the last (progress lines above it)."""
    lines = err.splitlines()
    assert "Traceback" not in err and [line for line in lines if "error" in line] == lines[-1:], err
    assert lines[-1].startswith("error: "), err
    return lines[-1]


def limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails: EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_failing_write_is_one_line_and_the_file_keeps_its_rows(tmp_path, npz, reference):
    """Writes fail past a size (RLIMIT_FSIZE: EFBIG, the same path as a full disk's ENOSPC):
    one error line, exit 2; the file opens whole; --resume completes it."""
    out = tmp_path / "sweep.h5"
    proc = start(sweep_args(npz, 24) + ["--out", str(out), "--checkpoint-every", "4"],
                 preexec_fn=limit_file_size(600_000))
    _, err = proc.communicate()
    assert proc.returncode == 2, err
    line = one_error_line(err)
    assert line.startswith("error: cannot write") and "File too large" in line, line
    assert_whole(out)  # plain h5py: each run file whole (the rows of its last compaction)
    assert sum(len(run.steps.step) for run in read_sweep(out).runs) > 0  # with the journals'
    proc = start(["run", "--resume", str(out)])
    _, err = proc.communicate()
    assert proc.returncode == 0, err
    assert_same_sweep(out, reference(24))


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_full_disk_is_one_line_and_the_file_keeps_its_rows(tmp_path, npz, reference):
    """A real ENOSPC: the sweep on a 1 MiB tmpfs fills it."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        out = disk / "sweep.h5"
        proc = start(sweep_args(npz, 24) + ["--out", str(out), "--checkpoint-every", "4"])
        _, err = proc.communicate()
        assert proc.returncode == 2, err
        assert "No space left on device" in one_error_line(err)
        assert_whole(out)
        rows = {run.name: len(run.steps.step) for run in read_sweep(out).runs}
        kept = tmp_path / "kept"  # the sweep's folder as it was, moved off the full disk
        shutil.copytree(disk, kept)
        kept = kept / "sweep.h5"
    finally:
        subprocess.run(["umount", str(disk)], check=True)
    assert sum(rows.values()) > 0
    proc = start(["run", "--resume", str(kept)])
    _, err = proc.communicate()
    assert proc.returncode == 0, err
    assert_same_sweep(kept, reference(24))
