"""What every kedro-keras dataset shares, and what the command line and
verification may ask of one.

``StoredModels`` is the small protocol ``kedro keras`` and ``verify`` use:
the versions a dataset holds (newest first), the file a version's load
reads, removing a version, verifying a stored file and comparing two. The
command line calls these methods only, so a new dataset needs no new branch
there, and a command that does not apply to a dataset says so in one place.

``KerasFileDataset`` is the base of the file-backed, Kedro-versioned
datasets (model, history, weights, export): the ``Location``, Kedro's
existence and glob hooks (methods, so that the dataset pickles for
ParallelRunner), ``exists``/``release``, the preview's frame and its rows of
versions, and the protocol above for Kedro's version folders.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Callable

from kedro.io.core import AbstractVersionedDataset, DatasetError, Version, VersionNotFoundError

from kedro_keras._dataset import failures as _failures
from kedro_keras._dataset import preview as _preview
from kedro_keras._dataset import verify as _verify
from kedro_keras._io import progress as _progress
from kedro_keras._io.files import Location
from kedro_keras._keras import processes as _processes
from kedro_keras._log import SafeDatasetError, as_data, printable

# Versions a preview lists by size (one small request each on an object store).
_VERSIONS_SHOWN = 5


@dataclass(frozen=True)
class StoredVersion:
    """One version a dataset holds: its name as a user gives it
    (``--version``, ``load_version``) and the path its load reads."""

    name: str
    path: PurePosixPath


class NotVersionedError(SafeDatasetError, VersionNotFoundError):
    """The dataset keeps one file, not versions (so none is found)."""


class NoVersionYetError(SafeDatasetError, VersionNotFoundError):
    """A versioned entry that was never saved: what Kedro reports as "Did
    not find any versions for <the dataset's whole repr>"."""


class StoredModels:
    """The protocol of ``kedro keras`` and ``verify`` (see the module's docstring)."""

    _location: Location

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _without_final_stop(cls.__dict__["__init__"])  # type: ignore[method-assign]

    @property
    def keeps_versions(self) -> bool:
        """Whether the dataset holds versions (Kedro's, a history's, checkpoints)."""
        raise NotImplementedError

    def stored_versions(self) -> list[StoredVersion]:
        """Every version held, newest first, listed afresh: a long-lived
        process (Kedro-Viz, a notebook) may hold a listing from before
        another process saved one. ``NotVersionedError`` if it keeps one file."""
        raise NotImplementedError

    def stored_path(self, version: str | None = None) -> PurePosixPath:
        """The path a load of ``version`` (None: what a load reads now)
        reads; ``VersionNotFoundError`` if there is no such version."""
        raise NotImplementedError

    def remove_version(self, version: StoredVersion) -> None:
        """Remove ``version`` and everything saved with it."""
        raise NotImplementedError

    def protected_versions(self) -> dict[str, str]:
        """Versions a prune must keep whatever their age, with why."""
        return {}

    def saved_at(self, version: StoredVersion) -> float | None:
        """When ``version`` was saved (seconds since the epoch), if the
        filesystem keeps times."""
        try:
            return self._location.fs.modified(str(version.path)).timestamp()
        except Exception:  # noqa: BLE001 - a filesystem without times: age unknown
            return None

    def verify(self, version: str | None = None) -> str:
        """What was checked of the stored file, or a ``DatasetError`` saying
        what is damaged (``VersionNotFoundError``: nothing to check)."""
        return _verify.verify_stored_file(self._location, self.stored_path(version))

    def compare(self, first: str, second: str) -> list[dict[str, str]]:
        """Per variable group of versions ``first`` and ``second``: what changed."""
        return _verify.diff_stored(self._location, self.stored_path(first), self.stored_path(second))


def _without_final_stop(init: Callable[..., None]) -> Callable[..., None]:
    """A dataset's constructor whose refusals end without a full stop:
    Kedro quotes an error raised while it builds the catalog and ends it with
    one of its own ("{error}.\nFailed to instantiate dataset ..."), which
    made two."""

    @functools.wraps(init)
    def checked(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            init(self, *args, **kwargs)
        except DatasetError as exc:
            message = str(exc)
            if len(exc.args) == 1 and message.endswith(".") and not message.endswith(".."):
                exc.args = (message[:-1],)
            raise

    return checked


def check_version_name(version: Any, url: str) -> str:
    """A version named by a user, refused unless it is a plain name: it is
    joined to the dataset's folder, so '/' or '..' could reach outside it."""
    if not isinstance(version, str) or not version or "/" in version or "\\" in version:
        raise VersionNotFoundError(f"'{url}' has no version {printable(repr(version), 80)}")
    if version in (".", "..") or not version.isprintable():
        raise VersionNotFoundError(f"'{url}' has no version {printable(repr(version), 80)}")
    return version


class KerasFileDataset(StoredModels, AbstractVersionedDataset):
    """The base of the file-backed datasets (see the module's docstring)."""

    def _fetch_latest_load_version(self) -> str:
        # Kedro's own message quotes the dataset's whole repr (every argument): say what is missing.
        try:
            return super()._fetch_latest_load_version()
        except VersionNotFoundError as exc:
            url = self._location.url(self._filepath)
            if exc.__cause__ is not None:  # the listing itself failed: say why, not "nothing yet"
                raise SafeDatasetError(
                    f"Could not list the versions of '{url}': {exc.__cause__}"
                ) from as_data(exc.__cause__)
            raise NoVersionYetError(
                f"Nothing is saved at '{url}' yet: it has no version (a versioned entry's first save, "
                "say the kedro run of the node that returns it, makes one)"
            ) from None

    def resolve_save_version(self) -> str | None:
        # A node run in several processes: each process's Kedro session picked
        # its own timestamp; all of them use process 0's.
        own = super().resolve_save_version()
        if own is None or _processes.process_count() == 1:
            return own
        agreed = getattr(self, "_agreed_save_version", None)
        if agreed is None or agreed[0] != own:
            agreed = self._agreed_save_version = (own, _processes.agreed(own))
        return agreed[1]

    def _init_location(
        self,
        filepath: str,
        version: Version | None,
        credentials: dict[str, Any] | None,
        fs_args: dict[str, Any] | None,
        metadata: dict[str, Any] | None,
    ) -> None:
        """Set up where the dataset's files live; called by a constructor
        once its own arguments are checked."""
        self._location = Location(filepath, credentials, fs_args, version)
        self._fs = self._location.fs  # kedro-datasets' names, which users' code reaches for
        self._protocol = self._location.protocol
        self.metadata = metadata
        AbstractVersionedDataset.__init__(
            self,
            filepath=self._location.path,
            version=version,
            exists_function=self._exists_file,
            glob_function=self._glob,
        )

    # fsspec's bound methods do not always pickle (s3fs's glob does not);
    # methods of the dataset do, so ParallelRunner can ship it.
    def _exists_file(self, path: str) -> bool:
        """Whether a complete save is at ``path`` (a version's file or folder)."""
        return self._location.exists(path)

    def _glob(self, pattern: str) -> list[str]:
        return self._location.glob(pattern)

    def _exists(self) -> bool:
        try:
            path = self._get_load_path()
        except DatasetError as exc:
            if _failures.store_did_not_answer(exc):  # not "no": nobody answered
                raise
            return False
        return self._exists_file(str(path))

    def _release(self) -> None:
        super()._release()
        self._location.invalidate_cache(self._filepath)

    # -- previews --------------------------------------------------------------

    def _preview_table(
        self, rows_of: Callable[[PurePosixPath], list[_preview.Row]], first: tuple[_preview.Row, ...] = ()
    ) -> _preview.TablePreview:
        """The preview's frame: the path, ``first``, what ``rows_of(path)``
        says of the stored file, then the versions; whatever cannot be read
        is said in a row, never raised (Kedro-Viz shows every entry)."""
        try:
            path = self._get_load_path()
        except DatasetError as exc:
            return _preview.table([("path", self._location.url(self._filepath)), ("stored", str(exc))])
        rows = _preview.safely([("path", self._location.url(path)), *first], lambda: rows_of(path))
        return _preview.table(_preview.safely(rows, self._version_rows))

    def _version_rows(self) -> list[_preview.Row]:
        if not self.keeps_versions:
            return []
        versions = self.stored_versions()
        rows = [("versions", f"{len(versions)}, newest first" if versions else "none yet")]
        for version in versions[:_VERSIONS_SHOWN]:
            rows.append((f"version {version.name}", _progress.size_text(self._stored_size(version.path))))
        if len(versions) > _VERSIONS_SHOWN:
            rows.append(("older versions", f"{len(versions) - _VERSIONS_SHOWN} more"))
        return rows

    def _stored_size(self, path: PurePosixPath) -> int | None:
        """The bytes a save at ``path`` holds (one file's size here)."""
        return self._location.fs.info(str(path)).get("size")

    # -- the protocol, for Kedro's version folders -----------------------------

    @property
    def keeps_versions(self) -> bool:
        return self._version is not None

    def _version_paths(self) -> list[str]:
        """The paths of the saved versions, newest first, listed afresh."""
        self._location.invalidate_cache(self._filepath)
        pattern = str(self._get_versioned_path("*"))
        # Only complete saves: a SavedModel still uploading (no manifest yet)
        # must not count as the newest, or prune would keep it and remove the last good one.
        complete = [path for path in self._location.glob(pattern) if self._exists_file(path)]
        return sorted(complete, key=self._get_version_from_path, reverse=True)

    def _version_root(self, path: PurePosixPath) -> PurePosixPath:
        """What holds a version's files: Kedro's version folder."""
        return path.parent

    def _refuse_unversioned(self, doing: str) -> None:
        if not self.keeps_versions:
            raise NotVersionedError(
                f"'{self._location.url(self._filepath)}' keeps one file, not versions: add "
                f"versioned: true to the catalog entry to {doing}."
            )

    def stored_versions(self) -> list[StoredVersion]:
        self._refuse_unversioned("keep versions")
        return [
            StoredVersion(self._get_version_from_path(path), PurePosixPath(path))
            for path in self._version_paths()
        ]

    def stored_path(self, version: str | None = None) -> PurePosixPath:
        if version is None:
            return PurePosixPath(self._get_load_path())
        self._refuse_unversioned("name a version")
        url = self._location.url(self._filepath)
        check_version_name(version, url)
        try:
            path = PurePosixPath(self._get_versioned_path(version))
        except DatasetError as exc:  # a history's versions have a form: one without it is none of them
            raise VersionNotFoundError(f"'{url}' has no version '{printable(version, 80)}': {exc}") from exc
        if not self._exists_file(str(path)):
            listed = ", ".join(v.name for v in self.stored_versions()[:_VERSIONS_SHOWN]) or "none"
            raise VersionNotFoundError(
                f"'{self._location.url(self._filepath)}' has no version '{printable(version, 80)}'. "
                f"Newest versions there: {listed}."
            )
        return path

    def remove_version(self, version: StoredVersion) -> None:
        self._refuse_unversioned("remove versions")
        self._location.fs.rm(str(self._version_root(version.path)), recursive=True)
        self._location.invalidate_cache(self._filepath)
