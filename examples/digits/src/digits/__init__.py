"""digits: an example Kedro project for kedro-keras."""

__version__ = "0.1.0"
