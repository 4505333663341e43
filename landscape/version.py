"""The package version, in a module of its own so that any room can name it without cycles."""

__version__ = "0.1.0"
