"""One exception type for every user-facing problem.

The CLI turns a ``LandscapeError`` into a single ``error: ...`` line and exit code 2;
the Python API lets it propagate so callers can catch it.
"""


class LandscapeError(Exception):
    """A bad input or an unusable environment, explained in one line."""
