from kedro.pipeline import Node, Pipeline

from digits.pipelines.training.nodes import ship, train_model


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                train_model,
                inputs=[
                    "train_images",
                    "train_labels",
                    "params:model",
                    "params:training",
                    "classifier_checkpoints",  # resumes a killed run
                ],
                # One trained model, saved three ways (see conf/base/catalog.yml):
                # a whole versioned .keras file, weights only, and a folder of
                # timestamped .keras files.
                outputs=["classifier_model", "classifier_weights", "classifier_history"],
                name="train_model",
            ),
            # Keep the model and ship it: the saved .keras model, exported
            # for serving (see the export entries in conf/base/catalog.yml).
            Node(
                ship,
                inputs="classifier_model",
                outputs=["classifier_saved_model", "classifier_onnx"],
                name="export_model",
            ),
        ]
    )
