"""Where an MLflow run keeps a kedro-keras entry's files, and the Model
Registry versions that point at them.

MLflow is imported here only, and only when a ``KerasMlflowDataset`` saves
or loads. Two kinds of artifact store:

- one fsspec reaches (``file://``, ``s3://``, ``gs://``, Azure): the wrapped
  dataset writes and reads the run's artifact folder itself, so a save is
  as atomic and a load as streamed and checked as anywhere else;
- one only MLflow reaches (``mlflow-artifacts:`` when the tracking server
  proxies the store, ``dbfs:``, ...): the dataset saves into a local folder
  that MLflow then uploads, and a load downloads first.

A registered version records the dataset class that wrote it (a tag), and
its ``source`` must lie inside its own run's artifacts: the registry is
data anyone with write access to it can edit, so a load never follows a
version to somewhere its run did not log.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from kedro_keras._log import SafeDatasetError, get_logger, printable

logger = get_logger(__name__)

# Artifact stores the wrapped dataset writes to itself, through fsspec.
DIRECT_SCHEMES = frozenset({"", "file", "s3", "s3a", "gs", "gcs", "abfs", "abfss", "az"})
# What a registered version says of itself: which dataset class wrote it.
DATASET_TAG = "kedro_keras.dataset"
KERAS_VERSION_TAG = "kedro_keras.keras_version"
BACKEND_TAG = "kedro_keras.backend"


@dataclass(frozen=True)
class RegisteredModel:
    """``registered_model:`` of a catalog entry: a name, and what a load picks."""

    name: str
    alias: str | None = None
    version: int | None = None

    @classmethod
    def parse(cls, value: Any, where: str) -> RegisteredModel | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = {"name": value}
        if not isinstance(value, dict) or set(value) - {"name", "alias", "version"}:
            raise SafeDatasetError(
                f"{where}: registered_model takes name, alias and version, e.g. "
                "{name: digits-classifier, alias: champion}; got "
                f"{printable(repr(value), 120)}"
            )
        name, alias, version = value.get("name"), value.get("alias"), value.get("version")
        if not isinstance(name, str) or not name.strip() or "'" in name:
            raise SafeDatasetError(f"{where}: registered_model.name must be a model name, got {name!r}")
        if alias is not None and (not isinstance(alias, str) or not alias.strip()):
            raise SafeDatasetError(f"{where}: registered_model.alias must be a name, got {alias!r}")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
            raise SafeDatasetError(
                f"{where}: registered_model.version must be a version number (1, 2, ...), got {version!r}"
            )
        if alias is not None and version is not None:
            raise SafeDatasetError(
                f"{where}: registered_model gives both alias '{alias}' and version {version}; a load "
                "reads one of them"
            )
        return cls(name, alias, version)

    def describe(self) -> str:
        if self.alias:
            return f"'{self.name}' alias '{self.alias}'"
        if self.version:
            return f"'{self.name}' version {self.version}"
        return f"'{self.name}' (latest version)"


def is_direct(uri: str) -> bool:
    """Whether fsspec reaches ``uri`` as MLflow does (same files, same place)."""
    return urlsplit(uri).scheme.lower() in DIRECT_SCHEMES


def join(base: str, *parts: str) -> str:
    joined = base.rstrip("/")
    for part in parts:
        if part:
            joined = f"{joined}/{part.strip('/')}"
    return joined


def inside(uri: str, root: str) -> bool:
    """Whether ``uri`` names ``root`` or something inside it, without ``..``."""
    uri, root = uri.rstrip("/"), root.rstrip("/")
    if uri != root and not uri.startswith(root + "/"):
        return False
    return ".." not in PurePosixPath(uri[len(root) :]).parts


def client() -> Any:
    import mlflow

    return mlflow.MlflowClient()


def tracking_uri() -> str:
    import mlflow

    return str(mlflow.get_tracking_uri())


def run_for_save(run_id: str | None) -> tuple[str, str]:
    """The run a save logs to and its artifact root: ``run_id`` if the entry
    names one, else the active run (kedro-mlflow's hooks start one per
    ``kedro run``), else a new one, as ``mlflow.log_artifact`` would."""
    import mlflow

    if run_id:
        return run_id, str(client().get_run(run_id).info.artifact_uri)
    run = mlflow.active_run()
    if run is None:
        run = mlflow.start_run()
        logger.info(
            "No MLflow run was active: started run %s at %s (it stays active, as mlflow.log_artifact's would)",
            run.info.run_id,
            tracking_uri(),
        )
    return run.info.run_id, str(run.info.artifact_uri)


def run_for_load(run_id: str | None) -> tuple[str, str] | None:
    """The run a load reads from without the registry: the entry's
    ``run_id``, else the active run (what an earlier node of this run
    saved), else None."""
    import mlflow

    if run_id:
        return run_id, str(client().get_run(run_id).info.artifact_uri)
    run = mlflow.active_run()
    if run is None:
        return None
    return run.info.run_id, str(run.info.artifact_uri)


def log_folder(run_id: str, local: Path) -> None:
    """Upload every file under ``local`` to the run, keeping the layout."""
    client().log_artifacts(run_id, str(local))


def download_entry(run_id: str, relative: str, into: Path) -> Path:
    """The files of the entry at ``relative`` in the run's artifacts,
    downloaded under ``into``: the entry itself and what a kedro-keras
    dataset writes beside it under the same stem (``model.architecture.json``
    beside ``model.weights.h5``, the shards of ``model.weights.json``), not
    the rest of its folder. Returns the local path of ``relative``
    (MLflow puts each download under ``into`` by its last name)."""
    import mlflow

    path = PurePosixPath(relative)
    parent = "" if str(path.parent) == "." else str(path.parent)
    stem = path.name.split(".")[0]
    for entry in client().list_artifacts(run_id, parent or None):
        name = PurePosixPath(entry.path).name
        if name == path.name or name.startswith((stem + ".", stem + "_")):
            mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=entry.path, dst_path=str(into))
    return into / path.name


def register(
    model: RegisteredModel, source: str, run_id: str, dataset_class: str, keras_version: str, backend: str
) -> str:
    """A new version of ``model.name`` whose source is ``source``; the alias
    moved to it if the entry gives one. Returns the version number."""
    from mlflow.exceptions import MlflowException

    registry = client()
    try:
        registry.get_registered_model(model.name)
    except MlflowException:
        registry.create_registered_model(model.name)
    created = registry.create_model_version(
        model.name,
        source=source,
        run_id=run_id,
        tags={DATASET_TAG: dataset_class, KERAS_VERSION_TAG: keras_version, BACKEND_TAG: backend},
    )
    if model.alias:
        registry.set_registered_model_alias(model.name, model.alias, created.version)
    return str(created.version)


@dataclass(frozen=True)
class FoundVersion:
    version: str
    source: str
    run_id: str
    root: str


def registered_source(model: RegisteredModel, dataset_class: str, where: str) -> FoundVersion:
    """The version a load reads (alias, number, else the newest), checked:
    written by ``dataset_class`` and stored inside its own run's artifacts."""
    from mlflow.exceptions import MlflowException

    registry = client()
    try:
        if model.alias:
            found = registry.get_model_version_by_alias(model.name, model.alias)
        elif model.version:
            found = registry.get_model_version(model.name, str(model.version))
        else:
            versions = registry.search_model_versions(f"name='{model.name}'")
            if not versions:
                raise SafeDatasetError(
                    f"{where}: the MLflow registry at {tracking_uri()} has no version of '{model.name}'"
                )
            found = max(versions, key=lambda v: int(v.version))
    except MlflowException as exc:
        raise SafeDatasetError(
            f"{where}: the MLflow registry at {tracking_uri()} has no {model.describe()}: "
            f"{printable(str(exc.message), 300)}"
        ) from None
    version = printable(str(found.version), 20)
    writer = (found.tags or {}).get(DATASET_TAG)
    if writer != dataset_class:
        said = f"was written by {printable(str(writer), 80)}" if writer else "was not written by kedro-keras"
        raise SafeDatasetError(
            f"{where}: version {version} of '{model.name}' {said}; this entry loads with {dataset_class}. "
            "Point the entry's dataset at the class that saved it"
        )
    source = str(found.source or "")
    if not found.run_id:
        raise SafeDatasetError(
            f"{where}: version {version} of '{model.name}' names no run; refusing to load it"
        )
    root = str(registry.get_run(found.run_id).info.artifact_uri)
    if not inside(source, root):
        raise SafeDatasetError(
            f"{where}: version {version} of '{model.name}' points at {printable(source, 200)}, outside "
            f"the artifacts of its run {printable(found.run_id, 40)} ({printable(root, 200)}); refusing to "
            "follow it"
        )
    return FoundVersion(version, source, str(found.run_id), root)


def scratch_folder() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="kedro-keras-mlflow-")


def local_path(uri: str) -> str:
    """A ``file:`` URI as a path fsspec's local filesystem takes as is."""
    parts = urlsplit(uri)
    if parts.scheme.lower() == "file":
        return os.path.normpath(parts.path) if parts.path else uri
    return uri
