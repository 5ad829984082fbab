"""Files move between Keras backends: a model saved under TensorFlow, JAX or
PyTorch loads under each of the others with the same predictions, the same
weights and optimizer state, and goes on training.

Each backend runs in its own virtualenv, which has only that backend installed
(``make test`` creates ``.venv``, ``.venv-jax`` and ``.venv-torch``), so a
subprocess per backend runs ``cross_backend_worker.py``. A missing virtualenv
fails these tests; it never skips them.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "cross_backend_worker.py"
VENVS = {"tensorflow": ".venv", "jax": ".venv-jax", "torch": ".venv-torch"}
BACKENDS = list(VENVS)
PAIRS = [
    pytest.param(
        (saver, loader),
        id=f"{saver}-to-{loader}",
    )
    for saver in BACKENDS
    for loader in BACKENDS
    if saver != loader
]
MODELS = ["mixed", "sequence", "subclassed"]
# Different backends compute the same float32 maths in different orders.
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


def python_of(backend: str) -> Path:
    python = REPO / VENVS[backend] / "bin" / "python"
    if not python.exists():
        pytest.fail(
            f"The cross-backend tests need the {backend} virtualenv at {python.parent.parent}, "
            "which is missing: run `make test` (it creates .venv, .venv-jax and .venv-torch).",
            pytrace=False,
        )
    return python


def run_worker(backend: str, *args: str) -> None:
    env = {
        **os.environ,
        "KERAS_BACKEND": backend,
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "KEDRO_DISABLE_TELEMETRY": "1",
    }
    env.pop("KEDRO_KERAS_PUBLIC_API_ONLY", None)
    command = [str(python_of(backend)), str(WORKER), *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        pytest.fail(
            f"KERAS_BACKEND={backend} {' '.join(command)} exited {result.returncode}\n"
            f"--- stderr (end) ---\n{result.stderr[-6000:]}",
            pytrace=False,
        )


class Run:
    def __init__(self, folder: Path) -> None:
        self.results = json.loads((folder / "results.json").read_text())
        with np.load(folder / "arrays.npz") as arrays:
            self.arrays = dict(arrays)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """backend -> (folder of its files, what the saving process saw); each saved once."""
    cache: dict[str, tuple[Path, Run] | str] = {}

    def get(backend: str) -> tuple[Path, Run]:
        if backend not in cache:
            folder = tmp_path_factory.mktemp(f"saved-{backend}")
            cache[backend] = run_once(lambda: run_worker(backend, "save", str(folder))) or (
                folder,
                Run(folder),
            )
        return result_of(cache[backend])

    return get


@pytest.fixture(scope="module")
def loaded(saved, tmp_path_factory):
    """(saver, loader) -> (what the saver saw, what the loader saw); each pair run once."""
    cache: dict[tuple[str, str], tuple[Run, Run] | str] = {}

    def get(saver: str, loader: str) -> tuple[Run, Run]:
        if (saver, loader) not in cache:
            folder, before = saved(saver)
            out = tmp_path_factory.mktemp(f"loaded-{saver}-by-{loader}")
            cache[saver, loader] = run_once(lambda: run_worker(loader, "load", str(folder), str(out))) or (
                before,
                Run(out),
            )
        return result_of(cache[saver, loader])

    return get


def run_once(run) -> str | None:
    """Run a worker; its failure message, kept so that every test using it
    reports the failure without running it again."""
    try:
        run()
    except pytest.fail.Exception as failure:
        return str(failure)
    return None


def result_of(cached):
    if isinstance(cached, str):
        pytest.fail(cached, pytrace=False)
    return cached


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_virtualenv_has_only_its_own_backend(loaded, backend):
    other = next(b for b in BACKENDS if b != backend)
    _, after = loaded(other, backend)
    assert after.results["backend"] == backend
    assert after.results["importable_backends"] == [backend]


@pytest.mark.parametrize("pair", PAIRS)
def test_predictions_and_state_survive_the_move(loaded, pair):
    before, after = loaded(*pair)
    for name in MODELS:
        expected = before.arrays[f"{name}/predictions"]
        for how in ("model", "public", "weights", "history") + (("h5",) if name == "mixed" else ()):
            np.testing.assert_allclose(
                after.arrays[f"{name}/{how}/predictions"],
                expected,
                **TOLERANCE,
                err_msg=f"{name} saved under {pair[0]}, loaded under {pair[1]} through {how}",
            )
        # The numbers themselves move bit for bit; only the arithmetic differs.
        weights = sorted(k.rsplit("/", 1)[1] for k in before.arrays if k.startswith(f"{name}/weight/"))
        assert weights and len(weights) == len(
            [k for k in after.arrays if k.startswith(f"{name}/model/weight/")]
        )
        for i in weights:
            np.testing.assert_array_equal(
                after.arrays[f"{name}/model/weight/{i}"], before.arrays[f"{name}/weight/{i}"]
            )
        # Iterations, learning rate, then Adam's two slots per weight, in order.
        saved_optimizer = {
            k.rsplit("/", 1)[1]: v for k, v in before.arrays.items() if k.startswith(f"{name}/optimizer/")
        }
        loaded_optimizer = {
            k.rsplit("/", 1)[1]: v
            for k, v in after.arrays.items()
            if k.startswith(f"{name}/model/optimizer/")
        }
        assert len(saved_optimizer) > 2 and sorted(loaded_optimizer) == sorted(saved_optimizer), name
        for i, value in saved_optimizer.items():
            np.testing.assert_array_equal(
                loaded_optimizer[i], value, err_msg=f"{name}: optimizer variable {i}"
            )


@pytest.mark.parametrize("pair", PAIRS)
def test_training_resumes_from_the_loaded_optimizer_state(loaded, pair):
    before, after = loaded(*pair)
    for name in MODELS:
        saved_run, loaded_run = before.results["models"][name], after.results["models"][name]
        assert loaded_run["iterations_loaded"] == saved_run["iterations"] > 0, name
        assert loaded_run["iterations_after_epoch"] == saved_run["iterations"] + 1, name
        assert np.isfinite(loaded_run["loss_after_epoch"]), name
        assert loaded_run["loss_after_epoch"] < loaded_run["loss_loaded"], name
        np.testing.assert_allclose(loaded_run["loss_loaded"], saved_run["loss"], rtol=1e-4, err_msg=name)
        # One more epoch after the move == one more epoch in the saving process.
        np.testing.assert_allclose(
            after.arrays[f"{name}/model/continued"],
            before.arrays[f"{name}/continued"],
            rtol=1e-4,
            atol=1e-4,
            err_msg=f"{name}: training on under {pair[1]} differs from training on under {pair[0]}",
        )


@pytest.mark.parametrize("pair", PAIRS)
def test_load_logs_the_keras_version_and_backend_the_file_was_saved_with(loaded, pair):
    before, after = loaded(*pair)
    for name in MODELS:
        (message,) = after.results["models"][name]["load_log"]
        assert message.startswith("Loaded Keras model '"), message
        saved_with = f"(saved with Keras {before.results['keras_version']} on the {pair[0]} backend)"
        assert f"{name}.keras {saved_with}: " in message and message.endswith("/s"), message


@pytest.mark.parametrize("loader", ["jax", "torch"])
def test_a_layer_with_tensorflow_code_fails_clearly_elsewhere(loaded, loader):
    """A layer that calls TensorFlow itself is not portable; loading it where
    TensorFlow is absent is a DatasetError naming the file and the cause."""
    _, after = loaded("tensorflow", loader)
    outcome = after.results["tf_only"]
    assert outcome["error"] == "DatasetError", outcome
    assert "tf_only.keras" in outcome["message"]
    assert "No module named 'tensorflow'" in outcome["message"], outcome["message"]
