"""Kedro datasets for Keras models: whole models, weights only, model
histories, training checkpoints and exports for serving, on any filesystem
fsspec knows.

Importing this package imports neither Keras nor a backend; that happens the
first time a model is loaded or saved.
"""

from kedro_keras._version import __version__
from kedro_keras.keras_checkpoint_dataset import Checkpoints, KerasCheckpointDataset
from kedro_keras.keras_export_dataset import KerasExportDataset
from kedro_keras.keras_mlflow_dataset import KerasMlflowDataset
from kedro_keras.keras_model_dataset import KerasModelDataset
from kedro_keras.keras_timestamped_model_dataset import KerasTimestampedModelDataset
from kedro_keras.keras_weights_dataset import KerasWeightsDataset

__all__ = [
    "Checkpoints",
    "KerasCheckpointDataset",
    "KerasExportDataset",
    "KerasMlflowDataset",
    "KerasModelDataset",
    "KerasTimestampedModelDataset",
    "KerasWeightsDataset",
    "__version__",
]
