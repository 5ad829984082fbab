from kedro.pipeline import Node, Pipeline

from digits.pipelines.data_processing.nodes import split_digits


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                split_digits,
                inputs="params:split",
                outputs=["train_images", "test_images", "train_labels", "test_labels"],
                name="split_digits",
            )
        ]
    )
