"""One run on disk: a whole HDF5 file and the journal of the flushes since it was written.

``FOLDER/NAME.h5`` is a complete, closed HDF5 file at every instant: it is only ever replaced
by a rename (a *compaction*: a copy of it that took the journal's rows). Its root attribute
``journal_generation`` (G) names its journal ``FOLDER/NAME.h5.journal-G``, which a flush
appends one record to (``journal.py``). So a flush costs what it appends, and a compaction
costs the run's file, never the sweep's. A compaction is due when the journal has grown to
``COMPACT_RATIO`` times the file (the file at least doubles between two, so all of them
together write the final file about twice), and when the run ends: a finished run is one
plain HDF5 file with no journal, readable by anything.

A reader takes the file (any generation: each is whole) and that generation's journal up to
its last whole record (``RunView``): a consistent view however the writer's work interleaves.
A kill leaves a file, and a journal whose torn tail fails its check; the next writer of the run
(``RunFile.open``, on ``--resume``) compacts the two into a new generation.
"""

from __future__ import annotations

import io
from pathlib import Path

import h5py

from ..errors import LandscapeError, os_reason
from .files import FileLock, lock_is_free, rewrite_hdf5, temporaries, write_pause
from .journal import append_record, encode, read_records
from .runlog import RunLog, row_counts, truncate_rows

GENERATION = "journal_generation"  # the run file's root attribute naming its journal
# A compaction is due when the journal holds this many times the file's bytes. 1: each
# compaction at least doubles the file, so with the journal itself and the final compaction
# a run writes at most about 3x its final bytes; plain h5py (which reads no journal) sees at
# least half of a live run's rows.
COMPACT_RATIO = 1.0
RESERVED_ATTRS = (GENERATION,)  # run-file attributes that are the store's, not the run's


def journal_path(path: Path, generation: int) -> Path:
    return path.with_name(f"{path.name}.journal-{generation}")


def journals(path: Path) -> list[Path]:
    """Every journal of the run file ``path``, of any generation."""
    return list(path.parent.glob(f"{path.name}.journal-*"))


class RunLock(FileLock):
    busy = "another writer (a sweep or a Ray worker)"


class RunFile:
    """The writer's side of one run's file and journal; holds the run's lock while open."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.lock = RunLock(self.path)
        self.generation = 0
        self.file_bytes = 0
        self.journal_bytes = 0
        self.blocks: list[dict] = []  # the journal's records: what the next compaction takes

    @property
    def journal(self) -> Path:
        return journal_path(self.path, self.generation)

    def create(self, log: RunLog) -> None:
        """A new run file holding ``log``'s rows (their buffers emptied)."""
        self.lock.acquire()
        held = log.rows_held()
        block = log.take_pending()
        try:
            self._write_file(None, [block], copy=False)
        except BaseException:
            log.absorb(block)
            raise
        log.rows_in_file = held

    def open(self) -> None:
        """Continue the run file there: the lock taken, its journal (a killed writer's) and
        journals of other generations compacted away, so it ends on a whole record."""
        self.lock.acquire()
        try:
            with h5py.File(self.path, "r", locking=False) as f:
                self.generation = int(f.attrs.get(GENERATION, 0))
        except OSError as error:
            self.lock.release()
            raise LandscapeError(f"cannot read {self.path}: {os_reason(error)}") from None
        self.blocks, self.journal_bytes = read_records(self.journal)
        self.file_bytes = self.path.stat().st_size
        stale = [j for j in journals(self.path) if j != self.journal]
        if self.blocks or self.journal.exists():
            self.compact()
        for path in stale + temporaries(self.path):
            path.unlink(missing_ok=True)

    def flush(self, log: RunLog) -> None:
        """``log``'s new rows on disk: a journal record, or a compaction when one is due (the
        run ended, or the journal has outgrown the file). A failed write raises
        ``LandscapeError`` and leaves the rows buffered and the disk as it was."""
        held = log.rows_held()
        block = log.take_pending()
        try:
            if block["attrs"].get("status", "running") != "running" or \
                    self.journal_bytes >= COMPACT_RATIO * self.file_bytes:
                self.compact(block)
            else:
                record = encode(block)
                append_record(self.journal, record, write_pause)
                self.blocks.append(block)
                self.journal_bytes += len(record)
        except OSError as error:
            log.absorb(block)
            raise LandscapeError(f"cannot write {self.path}: {os_reason(error)}; it keeps every "
                                 "row of its last flush") from None
        except BaseException:
            log.absorb(block)
            raise
        log.rows_in_file = held

    def compact(self, block: dict | None = None, cut: dict[str, int] | None = None) -> None:
        """A new generation of the file: the journal's rows and ``block``'s in it, rows beyond
        ``cut`` (rows kept per group) cut; then the old journal goes."""
        old = self.journal
        self._write_file(cut, self.blocks + ([block] if block else []), copy=True)
        self.blocks, self.journal_bytes = [], 0
        old.unlink(missing_ok=True)

    def _write_file(self, cut: dict[str, int] | None, blocks: list[dict], copy: bool) -> None:
        generation = self.generation + 1 if copy else 0

        def edit(f: h5py.File) -> None:
            apply_blocks(f, blocks)
            if cut is not None:
                truncate_rows(f, cut)
            f.attrs[GENERATION] = generation

        self.file_bytes = rewrite_hdf5(self.path, edit, copy=copy)
        self.generation = generation

    def rows(self) -> dict[str, int]:
        """Rows of each group in the file and its journal (what a checkpoint refers to)."""
        return rows_on_disk(self.path)

    def close(self) -> None:
        """Release the run: its rows stay as they are (a journal, if any, for the next
        writer or reader)."""
        self.lock.release()


def apply_blocks(run: h5py.Group, blocks: list[dict]) -> None:
    """Write ``RunLog.take_pending`` blocks of one run into ``run``, in order."""
    if not blocks:
        return
    log = RunLog(blocks[0]["name"], blocks[0]["eta"])
    for block in blocks:
        log.absorb(block)
    log._write(run)


class RunView:
    """A reader's view of one run's file: the file as a rename left it, plus its journal's
    whole records, in memory (nothing on disk is opened for writing)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __enter__(self) -> h5py.Group:
        self._file = self._open()
        return self._file

    def __exit__(self, *exc) -> None:
        self._file.close()

    def _open(self) -> h5py.File:
        # The file at its path is one generation, whole (a rewrite is a rename): read in place
        # when its journal holds nothing (every finished run), so a reader of many runs reads
        # each file once, not into memory first.
        try:
            f = h5py.File(self.path, "r", locking=False)
        except OSError:  # open in this process already, with other flags: read its bytes
            f = None
        if f is not None:
            if not read_records(journal_path(self.path, int(f.attrs.get(GENERATION, 0))))[0]:
                return f
            f.close()
        data = self.path.read_bytes()  # perhaps a later generation: its own journal goes with it
        merged = h5py.File(io.BytesIO(data), "r+")
        generation = int(merged.attrs.get(GENERATION, 0))
        apply_blocks(merged, read_records(journal_path(self.path, generation))[0])
        return merged

    @property
    def writer_alive(self) -> bool:
        """Whether a process holds the run's lock (a live writer), as opposed to a run whose
        writer ended or was killed."""
        return not lock_is_free(self.path)


def rows_on_disk(path: Path) -> dict[str, int]:
    """Rows of each group of the run, file and journal together."""
    with RunView(path) as run:
        return row_counts(run)
