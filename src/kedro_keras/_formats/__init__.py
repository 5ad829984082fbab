"""Keras's file formats: ``.keras`` archives, legacy ``.h5``, ``.weights.h5``
and sharded weights, HDF5 images and their guards, the configurations and
import paths a file may name. Knows nothing of where a file lives."""
