"""The package version, in a module of its own so that any room can name it without cycles."""

__version__ = "0.1.0"

# The name pip knows this package by (setup.py's ``name``): the package index's ``landscape``
# is another project, which pip would install for that name. The import name and the command
# are ``landscape``.
DISTRIBUTION = "batchnorm-landscape"
