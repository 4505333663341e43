"""SIGINT and SIGTERM during a sweep: stop at the next step boundary, checkpointed.

``stop_on_signals()`` turns the first SIGINT or SIGTERM into a request (``StopRequest``) that
``loop.train_runs`` sees after the step under way: it checkpoints the runs, flushes their rows,
marks them ``interrupted`` and raises ``SweepInterrupted``. A second signal stops at once
(``KeyboardInterrupt``): the file is still whole (every write is an atomic replace), the
runs go on from their previous checkpoint.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class SweepInterrupted(Exception):
    """The sweep stopped on a signal, its runs checkpointed: ``landscape run --resume FILE``."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


class StopRequest:
    """A stop asked for: ``signum`` is the signal's number, None while none came."""

    def __init__(self):
        self.signum: int | None = None

    def check(self) -> None:
        """Raise ``SweepInterrupted`` when a stop was asked for (between runs)."""
        if self.signum is not None:
            raise SweepInterrupted(self.signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """SIGINT/SIGTERM handlers that ask for a stop, for the time of the block (main thread
    only: elsewhere the request is never set, and signals do what they did before)."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def ask(signum, frame):
        if stop.signum is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        stop.signum = signum

    previous = {s: signal.signal(s, ask) for s in STOP_SIGNALS}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
