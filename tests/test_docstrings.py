"""The Python examples in the dataset docstrings run, as a user would paste them."""

from __future__ import annotations

import doctest

import pytest

import kedro_keras


@pytest.mark.parametrize(
    "name",
    ["KerasModelDataset", "KerasWeightsDataset", "KerasTimestampedModelDataset", "KerasCheckpointDataset"],
)
def test_docstring_example_runs(name, tmp_path):
    cls = getattr(kedro_keras, name)
    parser = doctest.DocTestParser()
    test = parser.get_doctest(cls.__doc__, {"tmp_path": tmp_path}, name, None, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test)
    assert test.examples, "the docstring has a Python example"
    assert runner.failures == 0
