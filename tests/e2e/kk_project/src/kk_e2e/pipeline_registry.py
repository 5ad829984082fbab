from kedro.pipeline import Node, Pipeline
from kk_e2e.nodes import (
    collect,
    fingerprint,
    make_data,
    train_dense,
    train_dense_once,
    train_tiny,
    train_with_checkpoints,
)

LOCAL_DENSE = ["reg_model", "reg_weights", "reg_history"]
LOCAL_TINY = ["sub_model", "sub_weights", "sub_weights_json"]
REMOTE = ["remote_model", "remote_weights", "remote_history"]


def data():
    return Pipeline([Node(make_data, "params:data_seed", ["x", "y"], name="make_data")])


def fingerprints(entries, output, extra=()):
    """Load each entry through the catalog and record its fingerprint in a JSON output."""
    nodes = [Node(fingerprint, [name, "x"], f"{name}__fp", name=f"fingerprint_{name}") for name in entries]
    inputs = {name: f"{name}__fp" for name in entries}
    inputs.update({name: name for name in extra})
    nodes.append(Node(collect, inputs, output, name=f"collect_{output}"))
    return Pipeline(nodes)


def register_pipelines():
    train_local = Pipeline(
        [
            Node(
                train_dense, ["x", "y", "params:train"], ["trained_dense", *LOCAL_DENSE], name="train_dense"
            ),
            Node(train_tiny, ["x", "y", "params:train"], ["trained_tiny", *LOCAL_TINY], name="train_tiny"),
        ]
    )
    train_remote = Pipeline(
        [Node(train_dense, ["x", "y", "params:train"], ["trained_dense", *REMOTE], name="train_remote")]
    )
    train_pinned = Pipeline(
        [
            Node(
                train_dense_once,
                ["x", "y", "params:train"],
                ["trained_dense", "pinned_history"],
                name="train_pinned",
            )
        ]
    )
    checkpointed = {
        name: Pipeline(
            [
                Node(
                    train_with_checkpoints,
                    ["x", "y", "params:checkpointed", f"{name}_checkpoints"],
                    f"{name}_model",
                    name=f"train_{name}",
                )
            ]
        )
        for name in ("checkpointed", "checkpointed_s3")
    }
    trained = ("trained_dense", "trained_tiny")
    return {
        "__default__": data() + train_local + fingerprints(LOCAL_DENSE + LOCAL_TINY, "fingerprints", trained),
        "evaluate": data() + fingerprints(LOCAL_DENSE + LOCAL_TINY, "eval_fingerprints"),
        "remote": data() + train_remote + fingerprints(REMOTE, "remote_fingerprints", ["trained_dense"]),
        "pinned": data()
        + train_pinned
        + fingerprints(["pinned_history"], "pinned_fingerprints", ["trained_dense"]),
        "pinned_evaluate": data() + fingerprints(["pinned_history"], "pinned_eval_fingerprints"),
        **{name: data() + pipeline for name, pipeline in checkpointed.items()},
    }
