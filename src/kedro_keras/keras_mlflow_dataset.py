"""``KerasMlflowDataset``: any kedro-keras dataset whose files live in an
MLflow run, optionally registered in the MLflow Model Registry and loaded
back by name and version or alias."""

from __future__ import annotations

import time
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from kedro.io.core import AbstractDataset, DatasetError, parse_dataset_definition

from kedro_keras._dataset import mlflow_runs as _runs
from kedro_keras._dataset.mlflow_runs import RegisteredModel
from kedro_keras._log import SafeDatasetError, as_data, get_logger, printable

if TYPE_CHECKING:
    import keras

logger = get_logger(__name__)


class KerasMlflowDataset(AbstractDataset["keras.Model", Any]):
    """A kedro-keras dataset whose files are an MLflow run's artifacts.

    ``dataset`` is any kedro-keras dataset (model, weights, history, export,
    checkpoints) and ``artifact_path`` its filepath inside the run's
    artifacts. A save writes every file the dataset writes (a weights file and its
    architecture, every shard, a SavedModel folder and its manifest) into
    the active MLflow run (kedro-mlflow's hooks start one per ``kedro run``;
    ``run_id`` names another). Where the run's artifact store is one fsspec
    reaches (a folder, ``s3://``, ``gs://``, Azure), the dataset writes there
    itself, with the same atomic publish and checks as anywhere else; behind
    an MLflow server that proxies artifacts (``mlflow-artifacts:``), it saves
    to a local folder that MLflow uploads.

    With ``registered_model``, each save also registers a new version of
    that model in the MLflow Model Registry (and moves ``alias`` to it), and
    a load reads the version the alias or number names, else the newest:
    through the wrapped dataset's own load, so ``safe_mode`` and every check
    apply. Without it, a load reads ``run_id``'s files, else the active
    run's (what an earlier node of the same run saved).

    Example usage for the
    [YAML API](https://docs.kedro.org/en/stable/catalog-data/data_catalog_yaml_examples/):

    ```yaml
    classifier:
      type: kedro_keras.KerasMlflowDataset
      dataset:
        type: kedro_keras.KerasModelDataset
      artifact_path: classifier/model.keras   # inside the run's artifacts
      registered_model:
        name: digits-classifier
        alias: champion                    # set on save, read on load
    ```

    Example usage for the
    [Python API](https://docs.kedro.org/en/stable/catalog-data/advanced_data_catalog_usage/):

    ```pycon
    >>> import keras, mlflow, numpy as np
    >>> from kedro_keras import KerasMlflowDataset
    >>>
    >>> mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    >>> experiment = mlflow.create_experiment("models", artifact_location=(tmp_path / "runs").as_uri())
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> dataset = KerasMlflowDataset(
    ...     dataset={"type": "kedro_keras.KerasModelDataset"}, artifact_path="model.keras"
    ... )
    >>> with mlflow.start_run(experiment_id=experiment):
    ...     dataset.save(model)
    ...     reloaded = dataset.load()
    >>> np.array_equal(reloaded.predict(np.ones((1, 3)), verbose=0), model.predict(np.ones((1, 3)), verbose=0))
    True
    ```
    """

    def __init__(
        self,
        *,
        dataset: str | dict[str, Any],
        artifact_path: str,
        run_id: str | None = None,
        registered_model: str | dict[str, Any] | None = None,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Creates a new ``KerasMlflowDataset``.

        Args:
            dataset: The kedro-keras dataset: ``type`` and its arguments as
                a catalog entry gives them, all but ``filepath``.
            artifact_path: The wrapped dataset's filepath, inside the run's
                artifacts (e.g. ``classifier/model.keras``). A key of its
                own: Kedro makes any ``filepath`` absolute in the project.
            run_id: The MLflow run to log to and load from. Default: the
                active run (a save with none starts one, as MLflow's
                ``log_artifact`` does).
            registered_model: ``{name, alias}`` or ``{name, version}`` (or
                just the name): a save registers a new version of ``name``
                and moves ``alias`` to it; a load reads that alias, that
                version, or the newest.
            credentials: For the artifact store when the dataset reaches it
                itself (``s3://`` ...). Default for S3: the AWS environment
                and ``MLFLOW_S3_ENDPOINT_URL``, as MLflow uses them.
            fs_args: Extra arguments for that fsspec filesystem.
            metadata: Anything you want to keep with the entry.

        Raises:
            DatasetError: a dataset that is not kedro-keras's, an artifact_path
                that is absolute or leaves the run's artifacts, a versioned
                dataset (the run is the version), a malformed
                ``registered_model``.
        """
        where = "KerasMlflowDataset"
        config = {"type": dataset} if isinstance(dataset, str) else dict(dataset or {})
        if config.get("versioned") or "version" in config:
            raise SafeDatasetError(
                f"{where}: '{artifact_path}' is versioned by its MLflow run (and the registry's "
                "version numbers); drop 'versioned' from the wrapped dataset"
            )
        try:
            dataset_class, arguments = parse_dataset_definition(config)
        except DatasetError as exc:
            raise SafeDatasetError(
                f"{where}: cannot use dataset {printable(repr(dataset), 200)}: {exc}"
            ) from None
        if not dataset_class.__module__.startswith("kedro_keras.") or dataset_class is type(self):
            raise SafeDatasetError(
                f"{where}: wraps kedro-keras datasets (kedro_keras.KerasModelDataset, ...), not "
                f"{dataset_class.__module__}.{dataset_class.__name__}; kedro-mlflow's MlflowArtifactDataset "
                "logs other datasets"
            )
        if "filepath" in arguments:
            raise SafeDatasetError(
                f"{where}: give the path inside the MLflow run as artifact_path on the entry itself, not "
                "as the wrapped dataset's filepath (in a Kedro project, a filepath is made absolute "
                "inside the project folder)"
            )
        relative = PurePosixPath(str(artifact_path or ""))
        if (
            not isinstance(artifact_path, str)
            or not artifact_path.strip()
            or "://" in artifact_path
            or relative.is_absolute()
            or ".." in relative.parts
        ):
            raise SafeDatasetError(
                f"{where}: artifact_path must be a relative path inside the MLflow run's artifacts "
                f"(e.g. classifier/model.keras), got {artifact_path!r}"
            )
        for key in ("credentials", "fs_args"):
            if key in arguments:
                raise SafeDatasetError(
                    f"{where}: give {key} on the KerasMlflowDataset entry itself, not inside its dataset"
                )
        self._dataset_class = dataset_class
        self._arguments = arguments
        self._relative = str(relative)
        self._run_id = run_id
        self._registered = RegisteredModel.parse(registered_model, f"{where} '{relative}'")
        self._credentials = credentials
        self._fs_args = fs_args
        self.metadata = metadata

    def _describe(self) -> dict[str, Any]:
        return {
            "dataset": f"{self._dataset_class.__module__}.{self._dataset_class.__name__}",
            "artifact_path": self._relative,
            "run_id": self._run_id,
            "registered_model": self._registered.describe() if self._registered else None,
        }

    def _wrapped(self, uri: str) -> Any:
        """The wrapped dataset at ``uri`` (a run's artifact, or a local copy)."""
        credentials = self._credentials
        if credentials is None and uri.startswith(("s3://", "s3a://")):
            credentials = _s3_defaults()
        return self._dataset_class(
            filepath=_runs.local_path(uri), credentials=credentials, fs_args=self._fs_args, **self._arguments
        )

    # -- save ----------------------------------------------------------------

    def save(self, data: keras.Model) -> None:
        import keras

        if self._registered is not None and self._registered.version is not None:
            raise SafeDatasetError(
                f"Cannot save '{self._relative}' as version {self._registered.version} of "
                f"'{self._registered.name}': the registry numbers new versions itself. Give an alias "
                "(e.g. champion) or no version"
            )
        start = time.monotonic()
        run_id, root = _runs.run_for_save(self._run_id)
        target = _runs.join(root, self._relative)
        if _runs.is_direct(root):
            self._wrapped(target).save(data)
        else:
            with _runs.scratch_folder() as scratch:
                self._wrapped(str(Path(scratch) / self._relative)).save(data)
                try:
                    _runs.log_folder(run_id, Path(scratch))
                except Exception as exc:  # noqa: BLE001 - re-raised as a DatasetError, the text escaped
                    raise SafeDatasetError(
                        f"Could not log '{self._relative}' to MLflow run {run_id} ({root}): "
                        f"{printable(str(exc), 300)}"
                    ) from as_data(exc)
        logger.info(
            "Logged %s '%s' to MLflow run %s in %.1f s: %s",
            self._dataset_class.__name__,
            self._relative,
            run_id,
            time.monotonic() - start,
            target,
        )
        if self._registered is not None:
            version = _runs.register(
                self._registered,
                target,
                run_id,
                self._dataset_class.__name__,
                keras.__version__,
                keras.backend.backend(),
            )
            logger.info(
                "Registered it as version %s of '%s'%s",
                version,
                self._registered.name,
                f", alias '{self._registered.alias}'" if self._registered.alias else "",
            )

    # -- load ----------------------------------------------------------------

    def _source(self) -> tuple[str, str, str, str]:
        """What a load reads: its run, the run's artifact root, the path
        inside it, and what to call it in messages."""
        where = f"Cannot load '{self._relative}' from MLflow"
        if self._registered is not None:
            found = _runs.registered_source(self._registered, self._dataset_class.__name__, where)
            relative = found.source.rstrip("/")[len(found.root.rstrip("/")) :].strip("/")
            what = f"version {found.version} of '{self._registered.name}' (run {found.run_id})"
            return found.run_id, found.root, relative, what
        run = _runs.run_for_load(self._run_id)
        if run is None:
            raise SafeDatasetError(
                f"{where}: no MLflow run is active and the entry names neither run_id nor "
                "registered_model; give one, or load it in the run that saved it"
            )
        run_id, root = run
        return run_id, root, self._relative, f"run {run_id}"

    def load(self) -> Any:
        run_id, root, relative, what = self._source()
        start = time.monotonic()
        if _runs.is_direct(root):
            loaded = self._wrapped(_runs.join(root, relative)).load()
        elif self._dataset_class.__name__ == "KerasCheckpointDataset":
            raise SafeDatasetError(
                f"Cannot keep checkpoints '{relative}' in {what}: its artifacts are at {printable(root, 200)}, "
                "which only MLflow's server reaches, and a checkpoint is written as training goes. Give the "
                "experiment an artifact location the dataset reaches (a folder, s3://...), or keep the "
                "checkpoints in a KerasCheckpointDataset entry of their own"
            )
        else:
            # MLflow serves these files; they come down whole before the wrapped dataset reads them.
            with _runs.scratch_folder() as scratch:
                try:
                    local = _runs.download_entry(run_id, relative, Path(scratch))
                except Exception as exc:  # noqa: BLE001 - re-raised as a DatasetError, the text escaped
                    raise SafeDatasetError(
                        f"Cannot download '{relative}' of {what} from {printable(root, 200)}: "
                        f"{printable(str(exc), 300)}"
                    ) from as_data(exc)
                loaded = self._wrapped(str(local)).load()
        logger.info("Loaded '%s' from MLflow, %s, in %.1f s", relative, what, time.monotonic() - start)
        return loaded

    def _exists(self) -> bool:
        try:
            _, root, relative, _ = self._source()
        except DatasetError:
            return False
        if not _runs.is_direct(root):
            return True  # the registry or the run names it; the load checks its files
        return bool(self._wrapped(_runs.join(root, relative)).exists())


def _s3_defaults() -> dict[str, Any] | None:
    """The S3 endpoint MLflow's own S3 client uses (MinIO, a proxy)."""
    import os

    endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL")
    return {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else None
