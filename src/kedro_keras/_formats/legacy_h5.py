"""Legacy ``.h5`` whole models (Keras 2's format, still read and written by
Keras 3) on open file objects.

Keras's legacy loader does not apply ``safe_mode`` to Lambda layers, so the
stored config is checked here first. libhdf5 can loop forever on some
damaged attributes while holding the GIL, so a file's headers are first read
in a child process with a time limit (``probe_h5_in_child``).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import warnings
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any, Iterator

from kedro_keras._formats.safe_configs import (
    DEFAULT_MAX_CONFIG_DEPTH,
    DEFAULT_MAX_LAYERS,
    check_config_bounds,
    printable,
    refuse_unsafe_config,
)
from kedro_keras._io.h5 import bounded, h5_window, verify, write_h5_image
from kedro_keras._io.h5_guards import check_all_datasets, read_all_headers
from kedro_keras._keras import saving as _keras_saving
from kedro_keras._keras.saving import local_copy
from kedro_keras._log import get_logger

if TYPE_CHECKING:
    import keras

logger = get_logger(__name__)


def write_legacy_h5(model: keras.Model, file: IO[bytes], *, include_optimizer: bool = True) -> None:
    """Write ``model`` in the legacy HDF5 format (HDF5 needs a seekable file)."""
    import h5py

    legacy_h5_format = _keras_saving.legacy_h5_format()
    buffer = io.BytesIO()
    with warnings.catch_warnings(), _compile_config_kept(model):
        # We warn once, at construction, about the legacy format.
        warnings.filterwarnings("ignore", message=".*HDF5 file via `model.save\\(\\)`")
        if legacy_h5_format is not None:
            with h5py.File(buffer, "w") as h5_file:
                legacy_h5_format.save_model_to_hdf5(
                    model=model, filepath=h5_file, include_optimizer=include_optimizer
                )
        else:
            with local_copy(".h5") as local_path:
                model.save(local_path, include_optimizer=include_optimizer)
                with open(local_path, "rb") as local_file:
                    shutil.copyfileobj(local_file, buffer)
    write_h5_image(file, buffer.getbuffer().toreadonly())


@contextmanager
def _compile_config_kept(model: keras.Model) -> Iterator[None]:
    """Keras's legacy writer pops 'optimizer' out of the model's own compile
    config (``saving_utils.model_metadata``): a later ``.keras`` save of the
    same model would then record no optimizer, and its reload would get
    Keras's default RMSprop with none of the saved Adam state. Plain
    ``model.save`` has the same flaw; a save must not change what it saves."""
    kept = getattr(model, "_compile_config", None)
    config = getattr(kept, "config", None)
    copy = dict(config) if isinstance(config, dict) else None
    try:
        yield
    finally:
        if copy is not None:
            kept.config = copy


def read_legacy_h5(
    file: IO[bytes],
    *,
    custom_objects: dict[str, Any] | None = None,
    compile: bool = True,
    safe_mode: bool = True,
    max_layers: int = DEFAULT_MAX_LAYERS,
    max_config_depth: int = DEFAULT_MAX_CONFIG_DEPTH,
) -> keras.Model:
    """Build the model stored in a legacy HDF5 file.

    Keras's legacy loader does not apply ``safe_mode`` to Lambda layers, so we
    check the stored config ourselves before deserializing anything.
    """
    window = h5_window(file)
    try:
        check_all_datasets(window)  # Keras's legacy loader reads arrays as it finds them
        model = _read_legacy_h5_image(
            window, custom_objects, compile, safe_mode, (max_layers, max_config_depth)
        )
    except Exception as exc:
        verify(window, cause=exc)
        raise
    verify(window)
    return model


def _read_legacy_h5_image(
    file: IO[bytes], custom_objects: Any, compile: bool, safe_mode: bool, bounds: tuple[int, int]
) -> keras.Model:
    import h5py

    with h5py.File(bounded(file), "r") as h5_file:
        model_config = h5_file.attrs.get("model_config")
        if model_config is None:
            raise ValueError("not a Keras HDF5 model: it has no model_config (is it a weights-only file?)")
        training_config = h5_file.attrs.get("training_config")
        configs = [json.loads(model_config), json.loads(training_config) if training_config else None]
        check_config_bounds(configs, *bounds)  # before Keras builds anything
        if safe_mode is not False:  # Keras's legacy loader checks less, and only from Keras 3.11.3
            refuse_unsafe_config(configs, custom_objects)
        try:
            return _load_legacy_h5(h5_file, file, custom_objects, compile, safe_mode)
        except Exception as exc:
            if not compile or "deserialize" not in str(exc):
                raise
            # Keras 3 cannot rebuild some Keras 2 training configs (such as the
            # 'mse' metric alias). The architecture and weights are fine.
            logger.warning(
                "Could not restore the training configuration of this legacy "
                "HDF5 model (%s); loaded it uncompiled. Compile it before "
                "training, or set load_args: {compile: false} to skip this.",
                printable(str(exc)),
            )
            return _load_legacy_h5(h5_file, file, custom_objects, False, safe_mode)


def _load_legacy_h5(
    h5_file: Any,
    file: IO[bytes],
    custom_objects: Any,
    compile: bool,
    safe_mode: bool,
) -> keras.Model:
    legacy_h5_format = _keras_saving.legacy_h5_format()
    if legacy_h5_format is None:  # Keras's public loader, through a local copy
        import keras

        file.seek(0)
        with local_copy(".h5") as local_path:
            with open(local_path, "wb") as local_file:
                shutil.copyfileobj(file, local_file)
            return keras.saving.load_model(
                local_path, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode
            )
    return legacy_h5_format.load_model_from_hdf5(
        filepath=h5_file, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode
    )


# libhdf5 can loop forever, holding the GIL, on some damaged attributes
# (HDFGroup/hdf5#1707): no thread can interrupt it, so a legacy .h5 file's
# headers are first read in a child process with a time limit. The limit
# starts once the child has started and opened the file.
_H5_PROBE_SECONDS = float(os.environ.get("KEDRO_KERAS_H5_PROBE_SECONDS", "30"))


_H5_PROBE_STARTUP_SECONDS = 300


_H5_PROBE_READY = b"opened\n"


def probe_h5_in_child(location: Any, path: str, timeout: float | None = None) -> None:
    """Read every attribute and object header of an HDF5 file in a child process.

    Raises:
        ValueError: HDF5 did not finish within ``timeout`` or crashed. Other
            failures are left to the real load, which reports them better.
    """
    import pickle
    import selectors
    import subprocess
    import sys

    timeout = _H5_PROBE_SECONDS if timeout is None else timeout
    try:
        request = pickle.dumps((location, str(path)))
    except Exception as exc:  # noqa: BLE001 - a filesystem that cannot be pickled
        logger.warning("Not checking '%s' in a child process first: %s", path, exc)
        return
    # Appended, not prepended: the child's own site-packages and standard
    # library come first, as in this process.
    # This file is <root>/kedro_keras/_formats/legacy_h5.py.
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    code = f"import sys; sys.path.append({package_root!r}); from kedro_keras._formats.legacy_h5 import _probe_h5_main; _probe_h5_main()"
    child = subprocess.Popen(
        # -I: isolated, so no module beside the model (the current folder),
        # user site or PYTHON* variable can change what the child imports.
        [sys.executable, "-I", "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        child.stdin.write(request)
        child.stdin.close()
        with selectors.DefaultSelector() as selector:
            selector.register(child.stdout, selectors.EVENT_READ)
            started = (
                selector.select(_H5_PROBE_STARTUP_SECONDS) and child.stdout.readline() == _H5_PROBE_READY
            )
        if not started:
            if child.poll() is None:
                logger.warning(
                    "The HDF5 check of '%s' did not start in %d s; loading without it",
                    path,
                    _H5_PROBE_STARTUP_SECONDS,
                )
            return
        try:
            returncode = child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ValueError(
                f"HDF5 did not finish reading the file's headers in {timeout:.0f} s. A damaged file "
                "can send libhdf5 into an endless loop, so the file is most likely corrupt (if it is "
                "large and remote, raise KEDRO_KERAS_H5_PROBE_SECONDS)"
            ) from None
        if returncode < 0:
            raise ValueError(
                f"reading the file's headers crashed HDF5 (signal {-returncode}): the file is corrupt"
            )
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        child.stdout.close()


def _probe_h5_main() -> None:
    """The child's side of ``probe_h5_in_child``."""
    import pickle
    import sys

    import h5py

    location, path = pickle.loads(sys.stdin.buffer.read())
    # Headers only: small ranged reads, never the stream a load uses.
    with location.fs.open(path, mode="rb", block_size=2**20, cache_type="blockcache") as file:
        sys.stdout.buffer.write(_H5_PROBE_READY)
        sys.stdout.buffer.flush()
        with h5py.File(h5_window(file), "r") as h5_file:
            read_all_headers(h5_file)
