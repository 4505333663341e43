"""Files of a sweep written safely: whole-file replacement, locks, and their leftovers.

Nothing here writes a file in place that a reader may open: a file is written as a
temporary beside it and renamed over it (``replace_atomically``, atomic on POSIX), and a
journal only grows (``journal.py``). A writer holds an ``fcntl.flock`` (``FileLock``) that
the OS releases when its process dies, however it dies, so a reader can tell a live
writer from a killed one (``lock_is_free``).
"""

from __future__ import annotations

import fcntl
import io
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import h5py

from ..errors import LandscapeError, os_reason

# Test hook: seconds to pause inside each commit (after writing the copy, before the rename)
# and each checkpoint write, so that a stress test's random kills land there often.
WRITE_PAUSE_ENV = "LANDSCAPE_WRITE_PAUSE"


def write_pause() -> None:
    pause = os.environ.get(WRITE_PAUSE_ENV)
    if pause:
        time.sleep(float(pause))


def replace_atomically(path: Path, write: Callable[[Path], None], copy: bool) -> None:
    """Write ``path`` anew without ever writing it in place: ``write(tmp)`` on a temporary file
    beside it (a copy of it when ``copy``), then ``os.replace``; the temporary file is removed
    when anything fails (an ``OSError``, a signal's exception)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if copy:
            shutil.copyfile(path, tmp)
        write(tmp)
        write_pause()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def rewrite_hdf5(path: Path, edit: Callable[[h5py.File], None], copy: bool) -> int:
    """``replace_atomically`` for an HDF5 file: ``edit(f)`` on a copy of it (``copy``) or on a
    new file, built in memory, then written out and renamed over it; its bytes returned.
    Built in memory, a failing disk fails only a plain write (one ``OSError``), never HDF5's
    own writes, which leave errors that cannot be caught (printed when h5py cleans up)."""
    buffer = io.BytesIO(path.read_bytes() if copy else b"")
    with h5py.File(buffer, "r+" if copy else "w") as f:
        edit(f)
    data = buffer.getbuffer()
    replace_atomically(path, lambda tmp: tmp.write_bytes(data), copy=False)
    return len(data)


def remove_stale_temporaries(path: Path) -> None:
    """Temporary files a killed writer of ``path`` left beside it (call with the lock held)."""
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        tmp.unlink(missing_ok=True)


def temporaries(path: Path) -> list[Path]:
    """Temporary files a writer of ``path`` made beside it (``replace_atomically``'s)."""
    return list(path.parent.glob(f".{path.name}.tmp-*"))


class FileLock:
    """Exclusive use of a file by one writing process: ``fcntl.flock`` on ``PATH.lock``.

    The OS releases the lock when its process ends, however it ends (``kill -9`` included), so
    a lock file left behind by a dead process never blocks. A second writer gets
    ``LandscapeError``: ``busy`` (what the file is in use by) and the holder's process id.
    """

    busy = "another writer"

    def __init__(self, target: str | os.PathLike):
        self.target = Path(target)
        self.path = lock_path(target)
        self._fd: int | None = None

    def acquire(self) -> "FileLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            while True:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = os.read(fd, 32).decode(errors="replace").strip()
                    os.close(fd)
                    raise LandscapeError(
                        f"{self.target} is in use by {self.busy}"
                        + (f" (process {holder})" if holder else "")) from None
                # A holder that was releasing may have unlinked the file we opened: lock anew.
                try:
                    if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                        break
                except FileNotFoundError:
                    pass
                os.close(fd)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as error:
            raise LandscapeError(f"cannot write {self.target}: {os_reason(error)} (taking its "
                                 f"lock {self.path.name})") from None
        self._fd = fd
        return self

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class SweepLock(FileLock):
    """The sweep's one writing process (``PATH.lock`` beside the sweep file)."""

    busy = "another sweep"


def lock_path(target: str | os.PathLike) -> Path:
    return Path(f"{target}.lock")


def lock_is_free(target: str | os.PathLike) -> bool:
    """Whether no process holds ``target``'s ``FileLock`` (its writer ended or was killed).
    Creates nothing: a lock file that is not there is free."""
    try:
        fd = os.open(lock_path(target), os.O_RDONLY)
    except FileNotFoundError:
        return True
    except OSError:
        return False  # cannot tell: say held rather than call a live writer dead
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing drops the shared lock, if taken
    return True
