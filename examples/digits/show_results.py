"""Print what the last `kedro run` of this project produced: the test accuracy
of each model as it was loaded back through the catalog, and where each model
was written.

    python show_results.py            # after `kedro run`
    python show_results.py --env s3   # after `kedro run --env s3`
"""

from __future__ import annotations

import argparse
import logging
import os
import warnings
from pathlib import Path

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Only the summary below: no INFO records from Kedro, no deprecation notes.
logging.disable(logging.INFO)
warnings.filterwarnings("ignore", category=UserWarning, module="kedro.config")

from kedro.framework.session import KedroSession  # noqa: E402
from kedro.framework.startup import bootstrap_project  # noqa: E402

PROJECT = Path(__file__).resolve().parent
MODELS = (
    "classifier_model",
    "classifier_weights",
    "classifier_history",
    "classifier_saved_model",
    "classifier_onnx",
)


def where(catalog, name: str) -> str:
    """The file the dataset would load now (the newest version)."""
    dataset = catalog.get(name)
    kind = type(dataset).__name__
    location = dataset._describe()["filepath"]  # the entry's filepath, as a URL for remote ones
    if kind == "KerasTimestampedModelDataset":
        versions = dataset.versions()
        if not versions:
            return f"{location}/ (empty)"
        return f"{location}/model_{versions[0]}.keras  ({len(versions)} kept)"
    if kind == "KerasWeightsDataset":
        architecture = location.removesuffix(".weights.h5").rsplit("/", 1)[-1] + ".architecture.json"
        return f"{location}  (+ {architecture} beside it)"
    if kind == "KerasExportDataset" and dataset._describe()["format"] == "tf_saved_model":
        return f"{location}/  (manifest.json + export-<id>/)"
    version = dataset.resolve_load_version()
    return f"{location}/{version}/{location.rsplit('/', 1)[-1]}" if version else location


def shorten(path) -> str:
    path = str(path)
    prefix = str(PROJECT) + os.sep
    return path[len(prefix) :] if path.startswith(prefix) else path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default=None, help="the Kedro environment the run used")
    args = parser.parse_args()

    bootstrap_project(PROJECT)
    with KedroSession.create(project_path=PROJECT, env=args.env) as session:
        catalog = session.load_context().catalog
        metrics = catalog.load("metrics")
        print()
        print(
            f"Test accuracy on {metrics['test_images']} held-out digits, each model loaded back through the catalog:"
        )
        for name in MODELS:
            print(f"  {name:<22} {metrics['accuracy'][name]:.4f}   {shorten(where(catalog, name))}")
        print(f"Metrics: {shorten(catalog.get('metrics')._describe()['filepath'])}")


if __name__ == "__main__":
    main()
