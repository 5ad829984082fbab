"""Keras's internals: the only modules to re-read when Keras changes. Each
use of a private Keras name is here, with the public-API fallback beside it."""
