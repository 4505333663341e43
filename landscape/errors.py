"""One exception type for every user-facing problem, and OS errors said in a few words.

The CLI turns a ``LandscapeError`` into a single ``error: ...`` line and exit code 2;
the Python API lets it propagate so callers can catch it.
"""

import os


class LandscapeError(Exception):
    """A bad input or an unusable environment, explained in one line."""


def os_reason(error: OSError) -> str:
    """An OS error's reason in a few words ("Permission denied"): h5py and others decorate
    ``strerror`` with their own detail; the errno says the same thing plainly."""
    if error.errno:
        return os.strerror(error.errno)
    return str(error).splitlines()[0] if str(error) else type(error).__name__
