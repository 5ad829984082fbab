from kedro.pipeline import Node, Pipeline
from kk_mlflow.nodes import publish, reread, train


def register_pipelines():
    pipeline = Pipeline(
        [
            Node(train, "params:seed", "trained_in_memory", name="train"),
            Node(
                publish,
                "trained_in_memory",
                ["classifier", "classifier_onnx", "first_report"],
                name="publish",
            ),
            Node(reread, ["classifier", "classifier_onnx", "first_report"], "report", name="reread"),
        ]
    )
    return {"__default__": pipeline}
