"""``KerasTimestampedModelDataset``: a history of one model in one folder, one
``model_<UTC timestamp>.keras`` file per save."""

from __future__ import annotations

import random
import re
from datetime import datetime, timedelta, timezone
from pathlib import PurePosixPath
from typing import Any

from kedro.io.core import DatasetError, Version, VersionNotFoundError

from kedro_keras._dataset.checkpoint_policy import check_keep_last
from kedro_keras._log import SafeDatasetError, as_data, get_logger
from kedro_keras.keras_model_dataset import KERAS_SUFFIX, LEGACY_SUFFIXES, KerasModelDataset

logger = get_logger(__name__)

FILE_PREFIX = "model_"
# Kedro's own version format, kept to the microsecond so that saves within
# one second stay distinct; fixed width, so names sort in time order.
VERSION_FORMAT = "%Y-%m-%dT%H.%M.%S.%fZ"
_LOAD_ATTEMPTS = 3
_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}\.\d{2}\.\d{2}\.\d{6}Z$")


class KerasTimestampedModelDataset(KerasModelDataset):
    """A model's history in one folder: every save adds a timestamped file.

    Each save writes ``<filepath>/model_<UTC timestamp>.keras`` (to the
    microsecond, e.g. ``model_2026-11-21T10.33.42.123456Z.keras``). Load gives
    the newest unless a version is pinned with ``load_version`` (or Kedro's
    ``--load-versions`` / ``catalog.load(name, version=...)``), and
    ``keep_last`` removes the oldest files once a new save has succeeded.

    Example usage for the
    [YAML API](https://docs.kedro.org/en/stable/catalog-data/data_catalog_yaml_examples/):

    ```yaml
    classifier_history:
      type: kedro_keras.KerasTimestampedModelDataset
      filepath: data/06_models/classifier_history   # a folder
      keep_last: 5       # `kedro run --load-versions` pins one, versioned: true or not
    ```

    Example usage for the
    [Python API](https://docs.kedro.org/en/stable/catalog-data/advanced_data_catalog_usage/):

    ```pycon
    >>> import keras
    >>> from kedro_keras import KerasTimestampedModelDataset
    >>>
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    >>> history = KerasTimestampedModelDataset(filepath=tmp_path / "history", keep_last=2)
    >>> for _ in range(3):
    ...     history.save(model)
    >>> len(history.versions())
    2
    >>> newest = history.load()
    ```
    """

    # A history is versioned by nature: Kedro reads this class attribute as
    # `versioned: true` on every entry, so `kedro run --load-versions` and
    # `catalog.load(name, version=...)` pin a file with or without the flag.
    versioned = True

    # Kedro wraps ``save`` once more in every subclass of a versioned dataset,
    # which would make each save pick two timestamps; inherit the bare one.
    save = KerasModelDataset.save.__wrapped__

    def __init__(  # noqa: PLR0913
        self,
        *,
        filepath: str,
        keep_last: int | None = None,
        load_version: str | None = None,
        load_args: dict[str, Any] | None = None,
        save_args: dict[str, Any] | None = None,
        version: Version | None = None,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Creates a new ``KerasTimestampedModelDataset``.

        Args:
            filepath: The folder that holds the history (local or any fsspec URL).
            keep_last: Keep only this many newest models; older files are
                removed after each successful save. None keeps everything.
            load_version: Pin the version to load (a timestamp as listed by
                ``versions()``). Kedro's ``--load-versions`` overrides it.
            load_args: As for ``KerasModelDataset``.
            save_args: As for ``KerasModelDataset``.
            version: Set by Kedro for ``versioned: true`` entries.
            credentials: Passed to the fsspec filesystem.
            fs_args: Extra arguments for the fsspec filesystem.
            metadata: Anything you want to keep with the entry.

        Raises:
            DatasetError: ``filepath`` names a file, ``keep_last`` is not a
                positive whole number, or ``load_version`` is malformed.
        """
        check_keep_last(keep_last)
        for pinned in (load_version, version.load if version else None):
            if pinned is not None:
                _check_version_string(pinned)
        self._keep_last = keep_last
        # Always versioned. Kedro's pinned load version wins over ours; its
        # run-wide save version (to the millisecond) is not used, because every
        # save here must get its own microsecond timestamp.
        version = Version(version.load if version and version.load else load_version, None)
        super().__init__(
            filepath=filepath,
            load_args=load_args,
            save_args=save_args,
            version=version,
            credentials=credentials,
            fs_args=fs_args,
            metadata=metadata,
        )

    @staticmethod
    def _is_legacy_format(filepath: str) -> bool:
        if filepath.lower().endswith((KERAS_SUFFIX, *LEGACY_SUFFIXES)):
            raise SafeDatasetError(
                f"KerasTimestampedModelDataset's filepath is a folder that holds "
                f"one file per save, but '{filepath}' looks like a model file. "
                "Name the folder (e.g. 'data/06_models/classifier_history'), or "
                "use KerasModelDataset with versioned: true for one file."
            )
        return False

    def _describe(self) -> dict[str, Any]:
        return {
            "filepath": self._location.url(self._filepath),
            "keep_last": self._keep_last,
            "load_version": self._version.load,
            "load_args": self._load_args,
            "save_args": self._save_args,
        }

    def versions(self) -> list[str]:
        """Version strings of the saved models, newest first."""
        return [_version_of(path) for path in self._get_versions()]

    # Kedro's versioning hooks, bent to the one-folder layout.
    def _get_versioned_path(self, version: str) -> PurePosixPath:
        if version != "*":
            _check_version_string(version)
        return self._filepath / f"{FILE_PREFIX}{version}{KERAS_SUFFIX}"

    def _get_version_from_path(self, path: str) -> str:
        return _version_of(path)

    def _version_paths(self) -> list[str]:
        self._location.invalidate_cache(self._filepath)
        return self._get_versions()

    def _version_root(self, path: PurePosixPath) -> PurePosixPath:
        return path  # a version is one file in the history's folder

    def _get_versions(self) -> list[str]:
        pattern = str(self._get_versioned_path("*"))
        try:
            paths = self._glob(pattern)
        except FileNotFoundError:
            paths = []
        except Exception as exc:  # noqa: BLE001 - re-raised as a DatasetError, the text escaped
            raise VersionNotFoundError(
                f"Could not list the models in '{self._location.url(self._filepath)}': {exc}"
            ) from as_data(exc)
        stamped = [path for path in paths if _VERSION.match(_version_of(path))]
        return sorted(stamped, key=_version_of, reverse=True)

    def _fetch_latest_load_version(self) -> str:
        if self._cached_load_version is None:
            found = self._get_versions()
            if not found:
                self._refuse_a_file_as_folder()
                url = self._location.url(self._filepath)
                bucket = self._location.missing_bucket(self._filepath)
                if bucket:
                    raise VersionNotFoundError(
                        f"Cannot load from '{url}': the bucket '{bucket}' does not exist "
                        "(check its name and the endpoint)."
                    )
                raise VersionNotFoundError(
                    f"No model has been saved in '{url}' "
                    f"yet: the folder holds no '{FILE_PREFIX}<timestamp>{KERAS_SUFFIX}' files."
                )
            self._cached_load_version = _version_of(found[0])
        return self._cached_load_version

    def _refuse_a_file_as_folder(self) -> None:
        if self._location.fs.isfile(str(self._filepath)):
            raise SafeDatasetError(
                f"'{self._location.url(self._filepath)}' is a file, but KerasTimestampedModelDataset's "
                "filepath is the folder that holds the history (model_<timestamp>.keras files). Point "
                "filepath at a folder, or use KerasModelDataset for one model file."
            )

    def _fetch_latest_save_version(self) -> str:
        if self._cached_save_version is None:
            self._refuse_a_file_as_folder()
            now = datetime.now(tz=timezone.utc)
            version = now.strftime(VERSION_FORMAT)
            # Two saves in the same microsecond would collide; move on by one.
            while self._location.exists(self._get_versioned_path(version)):
                now += timedelta(microseconds=1)
                version = now.strftime(VERSION_FORMAT)
            self._cached_save_version = version
        return self._cached_save_version

    def load(self) -> Any:
        if self._version.load is not None:
            if not self._exists():
                available = self.versions()
                listed = ", ".join(available[:5]) if available else "none"
                raise SafeDatasetError(
                    f"Version '{self._version.load}' is not in "
                    f"'{self._location.url(self._filepath)}'. Newest versions there: {listed}."
                )
            return super().load()
        for _ in range(_LOAD_ATTEMPTS - 1):
            try:
                return super().load()
            except DatasetError as exc:
                if not isinstance(exc.__cause__, FileNotFoundError):
                    raise
                # Another process pruned the newest file we listed (keep_last)
                # just before we opened it: list again.
                self._cached_load_version = None
        return super().load()

    def _next_save_path(self, taken: PurePosixPath) -> PurePosixPath:
        # Another process took this timestamp while we wrote: move past it by
        # a random step, so that several racers spread out instead of
        # colliding again on the next microsecond.
        taken_at = datetime.strptime(_version_of(taken), VERSION_FORMAT).replace(tzinfo=timezone.utc)
        version = (taken_at + timedelta(microseconds=random.randint(1, 1000))).strftime(VERSION_FORMAT)
        self._cached_save_version = version
        return self._get_save_path()

    def _after_save(self, path: PurePosixPath) -> None:
        if self._keep_last is None:
            return
        for old in self._get_versions()[self._keep_last :]:
            try:
                self._location.remove(old)
            except FileNotFoundError:
                continue  # another process pruned it first
            logger.info("Removed old model %s (keep_last=%d)", self._location.url(old), self._keep_last)
        self._location.invalidate_cache(self._filepath)


def _version_of(path: str | PurePosixPath) -> str:
    name = PurePosixPath(path).name
    return name[len(FILE_PREFIX) : -len(KERAS_SUFFIX)]


def _check_version_string(version: str) -> None:
    if not isinstance(version, str) or not _VERSION.match(version):
        raise SafeDatasetError(
            f"'{version}' is not a model version: versions look like "
            f"'2026-11-21T10.33.42.123456Z' (UTC, to the microsecond), as listed "
            "by versions()."
        )
