from kedro.pipeline import Pipeline, node
from kk_processes.nodes import train


def register_pipelines() -> dict[str, Pipeline]:
    training = Pipeline([node(train, ["checkpoints", "params:training"], "model", name="train")])
    return {"__default__": training, "train": training}
