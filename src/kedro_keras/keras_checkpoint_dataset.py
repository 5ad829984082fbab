"""``KerasCheckpointDataset``: training checkpoints through the catalog, so
that a training node killed mid-way resumes where it stopped, on any
filesystem fsspec knows."""

from __future__ import annotations

import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from kedro.io.core import AbstractDataset, DatasetError, Version, VersionNotFoundError

from kedro_keras._dataset import checkpoint_record as _record
from kedro_keras._dataset import checkpoint_series as _series
from kedro_keras._dataset import orbax_commit as _orbax_commit
from kedro_keras._dataset import preview as _preview
from kedro_keras._dataset.base import StoredModels, StoredVersion
from kedro_keras._dataset.checkpoint_policy import CheckpointPolicy
from kedro_keras._dataset.checkpoints import Checkpoints
from kedro_keras._dataset.one_writer import in_process_zero
from kedro_keras._dataset.preview import TablePreview
from kedro_keras._formats import archive as _archive
from kedro_keras._formats import imports as _imports
from kedro_keras._formats import weights as _weights
from kedro_keras._formats.orbax_index import ORBAX_SUFFIX
from kedro_keras._formats.weights import WEIGHTS_SUFFIX
from kedro_keras._io.files import Location, checked_filepath
from kedro_keras._log import SafeDatasetError, as_data, get_logger, printable
from kedro_keras.keras_model_dataset import KerasModelDataset
from kedro_keras.keras_weights_dataset import KerasWeightsDataset

if TYPE_CHECKING:
    import keras

logger = get_logger(__name__)

_RECORD_SUFFIX = ".json"  # written last: a checkpoint without one is incomplete
_FULL_SUFFIX = ".keras"


class KerasCheckpointDataset(StoredModels, AbstractDataset[None, "Checkpoints"]):
    """Checkpoints of a model during training, in one folder, used as a node input.

    Loading the entry gives a ``Checkpoints`` handle: ``restore()`` the
    newest checkpoint (or None), train from ``initial_epoch`` on, and pass
    ``callback()`` to ``fit``, which writes a checkpoint at the end of every
    epoch (or every ``save_freq`` batches). A killed ``kedro run`` run again
    continues from the last checkpoint instead of starting over; a training
    whose ``fit`` ended normally is finished, and the next one starts anew
    (``restore(continue_finished=True)`` continues it on purpose). Each
    checkpoint is a whole ``.keras`` model with its optimizer state (or, with
    ``save_weights_only``, a ``.weights.h5``) written as the other datasets
    write (streamed, atomic, checksummed), then a small JSON record of the
    training position; a checkpoint without its record is never restored.
    With ``format: orbax`` (JAX), each checkpoint is an ``.orbax`` folder, as
    ``KerasWeightsDataset`` writes one: in a node run in several processes,
    each process writes only the shards it holds.

    Example usage for the
    [YAML API](https://docs.kedro.org/en/stable/catalog-data/data_catalog_yaml_examples/):

    ```yaml
    classifier_checkpoints:
      type: kedro_keras.KerasCheckpointDataset
      filepath: data/06_models/classifier_checkpoints   # a folder, or s3://...
      keep_last: 3
      monitor: val_loss      # the best by it is kept as well
    ```

    and in the node:

    ```python
    def train(x, y, params, checkpoints):
        keras.utils.set_random_seed(params["seed"])
        model = checkpoints.restore() or build_classifier(params)
        model.fit(x, y, epochs=params["epochs"], initial_epoch=checkpoints.initial_epoch,
                  callbacks=[checkpoints.callback()])
        return model
    ```

    Example usage for the
    [Python API](https://docs.kedro.org/en/stable/catalog-data/advanced_data_catalog_usage/):

    ```pycon
    >>> import keras, numpy as np
    >>> from kedro_keras import KerasCheckpointDataset
    >>>
    >>> dataset = KerasCheckpointDataset(filepath=tmp_path / "checkpoints", keep_last=2)
    >>> checkpoints = dataset.load()
    >>> model = checkpoints.restore()  # None: nothing saved yet
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer="adam", loss="mse")
    >>> x, y = np.ones((8, 3)), np.ones((8, 1))
    >>> _ = model.fit(x, y, epochs=3, verbose=0, callbacks=[checkpoints.callback()])
    >>> checkpoints.versions()
    ['e00003-s0000000', 'e00002-s0000000']
    >>> again = dataset.load()  # fit ended normally: restore() would start anew
    >>> resumed = again.restore(continue_finished=True)  # more epochs on purpose
    >>> again.initial_epoch
    3
    ```
    """

    # Kedro reads this as `versioned: true` on every entry, so that
    # `--load-versions` and `catalog.load(name, version=...)` pin a checkpoint.
    versioned = True

    DEFAULT_LOAD_ARGS: dict[str, Any] = {"compile": True, "safe_mode": True}

    def __init__(  # noqa: PLR0913
        self,
        *,
        filepath: str,
        keep_last: int | None = 3,
        save_freq: str | int = "epoch",
        every_n_epochs: int = 1,
        monitor: str | None = None,
        mode: str = "auto",
        save_best_only: bool = False,
        initial_value_threshold: float | None = None,
        save_weights_only: bool = False,
        remove_when_done: bool = False,
        background: bool = False,
        format: str = "keras",
        load_version: str | None = None,
        load_args: dict[str, Any] | None = None,
        version: Version | None = None,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Creates a new ``KerasCheckpointDataset``.

        Args:
            filepath: The folder that holds the checkpoints (local or any fsspec URL).
            keep_last: Keep this many newest checkpoints (and the best, with
                ``monitor``); older ones are removed after each checkpoint.
                None keeps all.
            save_freq: ``"epoch"`` (a checkpoint at the end of every epoch) or
                a number of batches. A checkpoint taken within an epoch resumes
                at the start of that epoch, with its batches seen once more.
                Batches are counted as Keras counts them, also with
                ``steps_per_execution`` above 1.
            every_n_epochs: With ``save_freq: epoch``, a checkpoint at the end
                of every n-th epoch only (default 1: every epoch).
            monitor: A metric in ``fit``'s logs (e.g. ``val_loss``). The
                checkpoint best by it is never pruned; ``best()`` restores it.
            mode: ``"min"``, ``"max"`` or ``"auto"``: the direction the
                model's own metric gives, as Keras's ``ModelCheckpoint`` takes
                it (``loss`` is minimised; a metric Keras cannot tell the
                direction of needs ``min`` or ``max``).
            save_best_only: Write a checkpoint only when ``monitor`` improved
                (``monitor`` defaults to ``val_loss`` then, as in Keras); with
                a number of batches as ``save_freq``, by the batch's logs (a
                ``val_`` metric is not in them: then every checkpoint is
                written, with a warning, as Keras does).
            initial_value_threshold: The value of ``monitor`` to beat before
                a checkpoint counts as an improvement (Keras's option).
            save_weights_only: Write ``.weights.h5`` checkpoints (weights and
                optimizer state, no architecture); ``restore(model)`` loads
                them into the model you build.
            remove_when_done: Remove the checkpoints when ``fit`` ends normally.
            background: Write each checkpoint after the first in a thread
                while training goes on: training waits only while the state
                is copied (one extra copy of the weights and optimizer state
                is held for the fit). A failed write is raised at the next
                checkpoint or when ``fit`` ends; the last checkpoint is
                complete when ``fit`` returns. Full-model ``.keras``
                checkpoints (in several processes too: process 0 writes);
                otherwise written as usual.
            format: ``"keras"`` (a ``.keras`` model per checkpoint) or
                ``"orbax"`` (JAX: an ``.orbax`` folder per checkpoint, whose
                shards each process of a multi-process run writes itself;
                ``pip install 'kedro-keras[orbax]'``).
            load_version: Pin the checkpoint ``restore()`` gives (a version as
                listed by ``versions()``). Kedro's ``--load-versions`` overrides it.
            load_args: ``custom_objects`` (import paths or classes),
                ``compile`` and ``safe_mode``, as for ``KerasModelDataset``.
            version: Set by Kedro (the load version pins a checkpoint).
            credentials: Passed to the fsspec filesystem.
            fs_args: Extra arguments for the fsspec filesystem.
            metadata: Anything you want to keep with the entry.

        Raises:
            DatasetError: an option has a value it cannot take.
        """
        filepath = checked_filepath(filepath)
        if filepath.lower().endswith((_FULL_SUFFIX, ".h5")):
            raise SafeDatasetError(
                f"KerasCheckpointDataset's filepath is the folder that holds the checkpoints, but "
                f"'{filepath}' looks like a model file. Name a folder, e.g. "
                "'data/06_models/classifier_checkpoints'."
            )
        self._policy = CheckpointPolicy(
            keep_last=keep_last,
            save_freq=save_freq,
            every_n_epochs=every_n_epochs,
            monitor=monitor,
            mode=mode,
            save_best_only=save_best_only,
            initial_value_threshold=initial_value_threshold,
            remove_when_done=remove_when_done,
            background=background,
        )
        # The monitored metric's direction, once a training has found it on its model.
        self._found_direction: bool | None = None
        # Whether this process has settled a finished training (restore(), or a fit's start).
        self._settled = False
        pinned = version.load if version and version.load else load_version
        if pinned is not None:
            _record.check_version(pinned)
        self._location = Location(filepath, credentials, fs_args)
        self._folder = self._location.path
        self._weights_only = save_weights_only
        if format not in ("keras", "orbax"):
            raise SafeDatasetError(f"format for '{filepath}' must be 'keras' or 'orbax'; got {format!r}.")
        if format == "orbax" and save_weights_only:
            raise SafeDatasetError(
                f"'{filepath}': format: orbax checkpoints hold the weights, the optimizer state and the "
                "architecture, and restore() rebuilds the model; remove save_weights_only."
            )
        self._orbax = format == "orbax"
        self._pinned = pinned
        self._load_args = {**self.DEFAULT_LOAD_ARGS, **(load_args or {})}
        _imports.check_model_load_args(self._load_args, {"compile"}, filepath)
        self._credentials, self._fs_args = credentials, fs_args
        self.metadata = metadata
        # Records already reported as unreadable while ranking: pruning runs
        # after every checkpoint and would repeat the warning each time.
        self._unranked: set[str] = set()

    def _describe(self) -> dict[str, Any]:
        return {
            "filepath": self._location.url(self._folder),
            **asdict(self._policy),
            "save_weights_only": self._weights_only,
            "format": "orbax" if self._orbax else "keras",
            "load_args": self._load_args,
            "load_version": self._pinned,
        }

    def load(self) -> Checkpoints:
        return Checkpoints(self)

    def save(self, data: Any) -> None:
        raise SafeDatasetError(
            f"'{self._location.url(self._folder)}' holds training checkpoints, written by the callback "
            "during fit: use the entry as a node input (checkpoints.callback()), not as an output. "
            "Save the trained model to a KerasModelDataset entry."
        )

    def _exists(self) -> bool:
        return bool(self.versions())

    def versions(self) -> list[str]:
        """The complete checkpoints, newest first (e.g. ``e00003-s0000000``)."""
        names = self._location.names_in(self._folder)
        suffix = self._model_suffix()
        found = []
        for name in names:
            if name.startswith(_record.PREFIX) and name.endswith(_RECORD_SUFFIX):
                version = name[len(_record.PREFIX) : -len(_RECORD_SUFFIX)]
                # Anything else there (a planted name with newlines or escapes) is not ours: ignored.
                if _record.is_version(version) and f"{_record.PREFIX}{version}{suffix}" in names:
                    found.append(version)
        return sorted(found, reverse=True)

    # -- the protocol of kedro keras and verify ------------------------------

    keeps_versions = True

    def stored_versions(self) -> list[StoredVersion]:
        return [StoredVersion(version, self._model_path(version)) for version in self.versions()]

    def stored_path(self, version: str | None = None) -> PurePosixPath:
        versions = self.versions()
        version = version or self._pinned or (versions[0] if versions else None)
        if version is None:
            raise VersionNotFoundError(f"No checkpoint in '{self._url()}' yet.")
        if not _record.is_version(version) or version not in versions:
            listed = ", ".join(versions[:5]) or "none"
            raise VersionNotFoundError(
                f"'{self._url()}' has no checkpoint '{printable(str(version), 80)}'. Checkpoints there: "
                f"{listed}."
            )
        return self._model_path(version)

    def remove_version(self, version: StoredVersion) -> None:
        self._remove(version.name)

    def protected_versions(self) -> dict[str, str]:
        best = self._best_version(self.versions())
        return {best: f"the best by {self._policy.monitor}"} if best else {}

    def preview(self, layers: int = _preview.DEFAULT_LAYERS_SHOWN) -> TablePreview:
        """The checkpoints for Kedro-Viz: how many, the newest's training
        position and metrics, the best by ``monitor``, and the newest's model."""
        rows = [("path", self._url())]
        return _preview.table(_preview.safely(rows, lambda: self._preview_rows(layers)))

    def _preview_rows(self, layers: int) -> list[_preview.Row]:
        versions = self.versions()
        if not versions:
            return [("checkpoints", "none yet")]
        rows = _record.preview_rows(versions, self._record(versions[0]))
        finished = _series.read_finished(self._location, self._folder)
        if finished is not None:  # the next run starts anew
            rows.append(("training", f"finished: {_series.describe(finished).removeprefix('it finished ')}"))
        best = self._best_version(versions)
        if best is not None:
            rows.append(("best", f"{best}: {self._policy.monitor} {self._record(best).get('value'):.4g}"))
        path = self._model_path(versions[0])
        if self._orbax:
            return rows + _orbax_commit.preview_rows(self._location, path)
        with self._location.open_read(path) as file:
            if self._weights_only:
                return rows + _preview.weights_rows(file, None, layers)
            return rows + _preview.keras_archive_rows(file, layers)

    # -- what the handle and the callback call --------------------------------

    def _path(self, version: str, suffix: str) -> PurePosixPath:
        # Every path is built here, from user input and listings alike: a
        # version can never bring '/', '..' or control characters into one.
        _record.check_version(version)
        return self._folder / f"{_record.PREFIX}{version}{suffix}"

    def _model_suffix(self) -> str:
        return ORBAX_SUFFIX if self._orbax else WEIGHTS_SUFFIX if self._weights_only else _FULL_SUFFIX

    def _model_path(self, version: str) -> PurePosixPath:
        return self._path(version, self._model_suffix())

    def _orbax_dataset(self, path: PurePosixPath) -> KerasWeightsDataset:
        dataset = KerasWeightsDataset(
            filepath=self._location.url(path),
            load_args={key: value for key, value in self._load_args.items() if key != "compile"},
            credentials=self._credentials,
            fs_args=self._fs_args,
        )
        dataset._quiet_saves = True  # the checkpoint's own line says it
        return dataset

    def verify(self, version: str | None = None) -> str:
        if self._orbax:
            return self._orbax_dataset(self.stored_path(version)).verify()
        return super().verify(version)

    def _url(self) -> str:
        return self._location.url(self._folder)

    def _record(self, version: str) -> dict[str, Any]:
        """The record of ``version``, checked; DatasetError (which ``restore()``
        skips for the checkpoint before) for anything that is not one of ours."""
        return _record.read_record(self._location, self._path(version, _RECORD_SUFFIX), version)

    def _full_dataset(self, path: PurePosixPath) -> KerasModelDataset:
        dataset = KerasModelDataset(
            filepath=self._location.url(path),
            load_args=self._load_args,
            credentials=self._credentials,
            fs_args=self._fs_args,
        )
        dataset._quiet_saves = True  # the checkpoint's own line says it
        return dataset

    def _write_checkpoint(
        self, model: keras.Model, epochs_done: int, steps: int, record: dict[str, Any]
    ) -> str:
        version = _record.version_name(epochs_done, steps, self._url())
        path = self._model_path(version)
        start = time.monotonic()
        if self._orbax:  # every process writes its shards; process 0 then commits the record
            self._orbax_dataset(path).save(model)
            in_process_zero(
                self._url(), lambda: self._commit_record(version, path, epochs_done, steps, record, start)
            )
            return version
        if self._weights_only:
            try:
                with self._location.atomic_write(path, size_hint=_archive.state_bytes(model)) as file:
                    _weights.write_weights(model, file)
            except Exception as exc:  # noqa: BLE001 - re-raised as a DatasetError, the text escaped
                raise SafeDatasetError(
                    f"Could not write checkpoint '{self._location.url(path)}': {exc}. "
                    "The previous checkpoints are unchanged."
                ) from as_data(exc)
        else:
            self._full_dataset(path).save(model)
        self._commit_record(version, path, epochs_done, steps, record, start)
        return version

    def _commit_record(
        self,
        version: str,
        path: PurePosixPath,
        epochs_done: int,
        steps: int,
        record: dict[str, Any],
        start: float,
    ) -> None:
        """Write ``version``'s record, which makes it a checkpoint, then prune."""
        record = {
            "epoch": epochs_done,
            "step": steps,
            "file": path.name,
            "saved_at": datetime.now(tz=timezone.utc).isoformat(timespec="seconds"),
            **record,
        }
        try:  # what restore() would refuse is never written: a checkpoint that cannot be resumed from
            encoded = _record.encoded_record(record, version)
        except ValueError as exc:
            raise SafeDatasetError(
                f"Could not write the record of checkpoint '{self._location.url(path)}': {exc}. "
                "Please report it to kedro-keras with the model's layers; the previous checkpoints "
                "are unchanged."
            ) from as_data(exc)
        # The record goes last: until it is there, the checkpoint does not exist.
        with self._location.atomic_write(self._path(version, _RECORD_SUFFIX)) as file:
            file.write(encoded)
        self._location.invalidate_cache(self._folder)
        pruned = self._prune()
        logger.info(
            "Checkpoint %s written to %s in %.2f s%s",
            version,
            self._location.url(path),
            time.monotonic() - start,
            f" ({', '.join(pruned)} pruned)" if pruned else "",
        )

    def _best_version(self, versions: list[str]) -> str | None:
        if self._policy.monitor is None:
            return None
        found, ranked = self._found_direction, []  # (version, its checked record)
        for version in versions:
            try:
                record = self._record(version)
            except DatasetError as exc:
                # Unranked rather than fatal: pruning runs inside fit, and a
                # record planted or damaged in the folder must not stop training.
                if version not in self._unranked:
                    self._unranked.add(version)
                    logger.warning(
                        "Checkpoint %s is not ranked by %s: %s", version, self._policy.monitor, exc
                    )
                continue
            ranked.append((version, record))
        return self._policy.best(ranked, found)

    def _prune(self) -> list[str]:
        """Remove what the policy does not keep; the versions removed."""
        if self._policy.keep_last is None:
            return []
        versions = self.versions()
        keep = self._policy.kept(versions, self._best_version(versions))
        doomed = [version for version in versions if version not in keep]
        for version in doomed:
            self._remove(version)
        self._remove_leftovers(set(versions) - set(doomed))
        return doomed

    def _remove_leftovers(self, complete: set[str]) -> None:
        """A run killed between removing a checkpoint's record and its model
        leaves a model no listing shows, so no later pruning would remove it:
        its folder would grow by one file per kill, and a finished series'
        archive would carry it. Only leftovers older than the newest complete
        checkpoint go; a newer one may be a write still under way."""
        if not complete:
            return
        newest = max(complete)
        for name in self._location.names_in(self._folder):
            if not name.startswith(_record.PREFIX):
                continue
            version = name[len(_record.PREFIX) :].split(".", 1)[0]
            if _record.is_version(version) and version not in complete and version < newest:
                try:
                    self._remove_path(self._folder / name)
                except FileNotFoundError:
                    continue
                logger.debug("Removed %s, left over from an interrupted removal", name)

    def _remove(self, version: str) -> None:
        # The record first: a half-removed checkpoint is an incomplete one.
        for path in (self._path(version, _RECORD_SUFFIX), self._model_path(version)):
            try:
                self._remove_path(path)
            except FileNotFoundError:
                continue
        logger.debug("Removed checkpoint %s from %s", version, self._url())

    def _remove_path(self, path: PurePosixPath) -> None:
        if self._orbax and path.name.endswith(ORBAX_SUFFIX):  # a folder
            self._location.fs.rm(str(path), recursive=True)
        else:
            self._location.remove(path)

    def _settle_finished(self, continue_finished: bool) -> None:
        _series.settle_finished(self._location, self._folder, continue_finished=continue_finished)
        self._settled = True

    def _mark_finished(self) -> None:
        versions = self.versions()
        _series.mark_finished(self._location, self._folder, versions[0] if versions else None)

    def _remove_all(self) -> None:
        for version in self.versions():
            self._remove(version)
        self._location.invalidate_cache(self._folder)
