"""The Python examples in the dataset docstrings run, as a user would paste them."""

from __future__ import annotations

import doctest
import logging
import os

import pytest

import kedro_keras
from kedro_keras import _exported

EXAMPLES = [
    "KerasModelDataset",
    "KerasWeightsDataset",
    "KerasTimestampedModelDataset",
    "KerasCheckpointDataset",
]
# Its example exports a SavedModel, which needs TensorFlow: run where it can
# (test_keras_export_dataset.py checks the error everywhere else).
if _exported.why_cannot_export("tf_saved_model", os.environ.get("KERAS_BACKEND", "tensorflow")) is None:
    EXAMPLES.append("KerasExportDataset")


@pytest.mark.parametrize("name", EXAMPLES)
def test_docstring_example_runs(name, tmp_path):
    cls = getattr(kedro_keras, name)
    parser = doctest.DocTestParser()
    test = parser.get_doctest(cls.__doc__, {"tmp_path": tmp_path}, name, None, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    # Log records are not part of an example's output; a handler an earlier
    # test configured (Kedro's rich one prints to stdout) would make them so.
    logging.disable(logging.CRITICAL)
    try:
        runner.run(test)
    finally:
        logging.disable(logging.NOTSET)
    assert test.examples, "the docstring has a Python example"
    assert runner.failures == 0
