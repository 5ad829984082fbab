"""Project pipelines."""

from __future__ import annotations

from kedro.pipeline import Pipeline

from digits.pipelines import data_processing, evaluation, training


def register_pipelines() -> dict[str, Pipeline]:
    """``training`` fits the model and saves it three ways; ``evaluation``
    loads each saved copy back through the catalog and scores it on the test
    split; ``__default__`` does both.

    Both start from the split, so ``kedro run --pipeline evaluation`` works on
    its own (e.g. with ``--load-versions classifier_model:<version>``).
    """
    split = data_processing.create_pipeline()
    train = training.create_pipeline()
    evaluate = evaluation.create_pipeline()
    return {
        "__default__": split + train + evaluate,
        "training": split + train,
        "evaluation": split + evaluate,
    }
