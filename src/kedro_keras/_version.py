"""The package's version: here, so that no module of the package imports its
``__init__`` (which imports every dataset) to learn it."""

__version__ = "0.1.0"
