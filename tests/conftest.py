"""Shared fixtures: real Keras models and a real S3-protocol server on loopback."""

from __future__ import annotations

import os
import uuid

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")
# The legacy .h5 header check's time limit (30 s by default), below the
# reliability workers' own time limits.
os.environ.setdefault("KEDRO_KERAS_H5_PROBE_SECONDS", "5")
# moto and s3fs both read these; nothing here talks to real AWS.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

import numpy as np
import pytest

import keras_test_models


@pytest.fixture(autouse=True)
def kedro_keras_logger_level_restored():
    """A KedroSession in this process runs our hook, which puts the
    kedro_keras logger at INFO (kedro_keras.hooks): later tests must see the
    level they started with."""
    import logging

    logger = logging.getLogger("kedro_keras")
    level = logger.level
    yield
    logger.setLevel(level)


@pytest.fixture(scope="session", autouse=True)
def temporary_files_inside_pytests_folder(tmp_path_factory):
    """Every temporary file of the run, ours, Keras's, TensorFlow's and the
    child processes', goes under pytest's own folder, which is removed when
    the run passes (``tmp_path_retention_policy``). A child killed on purpose
    cannot clean up after itself; without this its scratch copies (hundreds
    of MB) stayed in /tmp after every run, and once filled CI's disk."""
    import tempfile

    folder = str(tmp_path_factory.mktemp("tmp", numbered=False))
    before = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"], tempfile.tempdir = folder, folder
    yield folder
    if before[0] is None:
        del os.environ["TMPDIR"]
    else:
        os.environ["TMPDIR"] = before[0]
    tempfile.tempdir = before[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server in a thread, listening on a free loopback port."""
    import logging

    from moto.server import ThreadedMotoServer

    # The server's threads log every request through werkzeug; once a test has
    # set up Kedro's logging (a KedroSession), that is Kedro's rich handler,
    # and two server threads logging at once while a third request waits on
    # them stalled a load for minutes. Keep only errors, and keep them away
    # from the handlers of the process under test.
    werkzeug_logger = logging.getLogger("werkzeug")
    werkzeug_logger.setLevel(logging.ERROR)
    werkzeug_logger.propagate = False

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_credentials(s3_endpoint):
    """What a catalog entry's ``credentials:`` holds for the loopback server."""
    return {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": s3_endpoint},
    }


@pytest.fixture
def s3_bucket(s3_credentials):
    """A fresh, empty bucket; returns its ``s3://`` URL."""
    import s3fs

    name = f"test-{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem(**s3_credentials)
    fs.mkdir(name)
    fs.invalidate_cache()
    return f"s3://{name}"


@pytest.fixture(params=["private", "public"])
def keras_api(request, monkeypatch):
    """Run a test through Keras's file-object internals and through the
    public-API fallback used for Keras versions we do not know."""
    if request.param == "public":
        monkeypatch.setenv("KEDRO_KERAS_PUBLIC_API_ONLY", "1")
    elif not PUBLIC_API_ONLY_RUN:
        monkeypatch.delenv("KEDRO_KERAS_PUBLIC_API_ONLY", raising=False)
    return request.param


# `make test-public-api` sets KEDRO_KERAS_PUBLIC_API_ONLY for the whole run:
# then every test goes through the fallback, and the tests marked
# `private_api` (they assert what only the fast path does) are deselected.
PUBLIC_API_ONLY_RUN = os.environ.get("KEDRO_KERAS_PUBLIC_API_ONLY", "").lower() in ("1", "true", "yes")


def pytest_collection_modifyitems(config, items):
    if not PUBLIC_API_ONLY_RUN:
        return
    kept = [item for item in items if item.get_closest_marker("private_api") is None]
    config.hook.pytest_deselected(items=[item for item in items if item not in kept])
    items[:] = kept


@pytest.fixture(scope="session")
def data():
    """A small regression problem the models below can actually learn."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5], [3.0]], dtype="float32")).astype("float32")
    return x, y


@pytest.fixture
def trained_model(data):
    """A fitted functional model, compiled with Adam so it has optimizer state."""
    x, y = data
    model = keras_test_models.build_functional()
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    return model


def fit(model, data, epochs=2):
    x, y = data
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, y, epochs=epochs, batch_size=16, verbose=0)
    return model


def assert_same_predictions(a, b, x):
    np.testing.assert_allclose(a.predict(x, verbose=0), b.predict(x, verbose=0), rtol=1e-6, atol=1e-6)
