from kedro.pipeline import Node, Pipeline

from digits.pipelines.evaluation.nodes import accuracy, report

MODELS = ["classifier_model", "classifier_weights", "classifier_history"]
EXPORTS = ["classifier_saved_model", "classifier_onnx"]  # exported for serving


def create_pipeline(**kwargs) -> Pipeline:
    # Each node's first input is a catalog entry, so the model it scores is
    # the one read back from disk (or S3), not the object training returned.
    scoring = [
        Node(
            accuracy,
            inputs=[name, "test_images", "test_labels"],
            outputs=f"{name}_accuracy",
            name=f"score_{name}",
        )
        for name in MODELS + EXPORTS
    ]
    return Pipeline(
        [
            *scoring,
            Node(
                report,
                inputs=["test_labels", *(f"{name}_accuracy" for name in MODELS + EXPORTS)],
                outputs="metrics",
                name="report_metrics",
            ),
        ]
    )
