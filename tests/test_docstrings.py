"""The Python examples in the dataset docstrings run, as a user would paste
them. They are Markdown-fenced (```pycon), as the documentation site shows
them; each fence's content is one doctest."""

from __future__ import annotations

import doctest
import importlib.util
import logging
import os
import re
import textwrap

import pytest

import kedro_keras
from kedro_keras._dataset import exported as _exported

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
# Its example logs to an MLflow run: where the mlflow extra is installed
# (tests/with_mlflow runs it against a real tracking server).
if importlib.util.find_spec("mlflow") is not None:
    EXAMPLES.append("KerasMlflowDataset")


FENCED_PYTHON = re.compile(r"^( *)```pycon\n(.*?)^\1```$", re.M | re.S)


def fenced_examples(docstring: str) -> str:
    return "\n".join(textwrap.dedent(match.group(2)) for match in FENCED_PYTHON.finditer(docstring))


@pytest.mark.parametrize("name", EXAMPLES)
def test_docstring_example_runs(name, tmp_path):
    cls = getattr(kedro_keras, name)
    parser = doctest.DocTestParser()
    test = parser.get_doctest(fenced_examples(cls.__doc__), {"tmp_path": tmp_path}, name, None, 0)
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


@pytest.mark.parametrize("name", [n for n in kedro_keras.__all__ if n != "__version__"])
def test_docstrings_are_markdown_for_the_documentation_site(name):
    """mkdocstrings renders Markdown: a reStructuredText directive or link
    would show as literal text."""
    doc = getattr(kedro_keras, name).__doc__ or ""
    assert not re.search(r"^\s*\.\. [a-z-]+::|`_\b|:class:`", doc, re.M), name
    if name in EXAMPLES:
        assert "```yaml" in doc and "```pycon" in doc
