"""Transient network faults between the datasets and S3.

A fault-injecting TCP proxy (``reliability_helpers/faulty_proxy.py``) sits on
127.0.0.1 in front of the moto server; the datasets reach S3 only through it.
It resets or closes connections after a given number of bytes (requests going
up, answers coming down), refuses new connections, or lets a request through
and loses its answer. Through it:

- a save either succeeds (s3fs and botocore retry some failures), and then
  the new model is at the path, whole; or it fails with ``DatasetError``, and
  the previous model is still there, byte for byte; nothing else appears;
- a load either returns exactly the saved model or fails with
  ``DatasetError``; the stored object never changes.

The checks read S3 directly, not through the proxy.
"""

from __future__ import annotations

import time

import keras
import numpy as np
import pytest
from kedro.io import DatasetError

from kedro_keras import KerasModelDataset, KerasWeightsDataset
from reliability_helpers import file_layer_only_once, weights_digest
from reliability_helpers.faulty_proxy import FaultyProxy

pytestmark = file_layer_only_once()

MB = 2**20


def build_model(units: int, seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((32,))
    x = keras.layers.Dense(units, activation="relu")(inputs)
    x = keras.layers.Dense(units, activation="relu")(x)
    model = keras.Model(inputs, keras.layers.Dense(1)(x), name=f"m{seed}")
    model.compile(optimizer="adam", loss="mse")
    rng = np.random.default_rng(seed)
    model.fit(
        rng.normal(size=(16, 32)).astype("float32"), rng.normal(size=(16, 1)).astype("float32"), verbose=0
    )
    return model


@pytest.fixture(scope="module")
def models():
    """An old and a new model of each size: ~0.6 MB (one PUT) and ~13 MB (a multipart upload in 5 MB parts)."""
    return {
        "small": (build_model(200, 1), build_model(200, 2)),
        "large": (build_model(1000, 3), build_model(1000, 4)),
    }


@pytest.fixture(scope="module")
def proxy(s3_endpoint):
    host, port = s3_endpoint.removeprefix("http://").split(":")
    proxy = FaultyProxy((host, int(port))).start()
    yield proxy
    proxy.close()


@pytest.fixture
def through_proxy(proxy, s3_credentials):
    """Credentials that reach S3 through the proxy, with a client of its own."""
    proxy.heal()
    credentials = {**s3_credentials, "client_kwargs": {"endpoint_url": proxy.endpoint}}
    yield credentials
    proxy.heal()


def fs_args(size: str) -> dict:
    # skip_instance_cache: a fresh s3fs client (and connection pool) per dataset.
    args = {"skip_instance_cache": True}
    if size == "large":
        args["open_args_save"] = {"block_size": 5 * MB}
    return args


class Outcomes:
    """What each fault led to, and whether the proxy acted on it at all: a
    fault the transfer never reached (a cut after 9 MB of a 0.6 MB upload)
    tests nothing, so each test names the faults it expects to go unreached
    and asserts that every other one was reached."""

    def __init__(self) -> None:
        self.succeeded = self.failed = 0
        self.unreached: list[str] = []

    def record(self, name: str, ok: bool, reached: bool) -> None:
        self.succeeded += ok
        self.failed += not ok
        if not reached:
            self.unreached.append(name)

    def line(self) -> str:
        return f"{self.succeeded} succeeded (after retries), {self.failed} failed with DatasetError"


def acted(proxy: FaultyProxy) -> int:
    """How often the proxy has cut, refused or lost something so far."""
    return proxy.cuts + proxy.refused


SAVE_FAULTS = [
    ("reset after 1 KB up", dict(cut_after=(1024, "up", "reset", 1))),
    ("reset after 200 KB up", dict(cut_after=(200 * 1024, "up", "reset", 1))),
    ("close after 3 MB up", dict(cut_after=(3 * MB, "up", "close", 1))),
    ("reset after 9 MB up", dict(cut_after=(9 * MB, "up", "reset", 1))),
    ("reset after 100 B down", dict(cut_after=(100, "down", "reset", 1))),
    ("reset every 300 KB, 4 times", dict(cut_after=(300 * 1024, "any", "reset", 4))),
    ("refuse 3 connections", dict(refuse=3)),
    ("lose the answer to the upload", dict(lose=b"PUT /{bucket}/faults/model.keras")),
    ("lose the answer to an upload part", dict(lose=b"PUT /{bucket}/faults/model.keras?partNumber=")),
    ("lose the answer to completing the upload", dict(lose=b"POST /{bucket}/faults/model.keras?uploadId=")),
]


# Faults a save of that size never reaches, by design: the small model goes
# up in one PUT of about 0.6 MB.
UNREACHED_BY_SAVES = {
    "small": [
        "close after 3 MB up",
        "reset after 9 MB up",
        "lose the answer to an upload part",
        "lose the answer to completing the upload",
    ],
    "large": [],
    "large-own-parts": [],
}


def arm(proxy: FaultyProxy, fault: dict, bucket: str) -> None:
    if "cut_after" in fault:
        nbytes, direction, how, times = fault["cut_after"]
        proxy.cut_after(nbytes, direction=direction, how=how, times=times)
    if "refuse" in fault:
        proxy.refuse(fault["refuse"])
    if "lose" in fault:
        proxy.lose_response(fault["lose"].replace(b"{bucket}", bucket.encode()))


@pytest.mark.parametrize("size", ["small", "large", "large-own-parts"])
def test_a_save_cut_off_by_the_network_keeps_the_previous_model(
    size, models, proxy, through_proxy, s3_bucket, s3_credentials, capsys, monkeypatch
):
    """``large`` goes up through s3fs's multipart upload (``open_args_save``
    given), ``large-own-parts`` through ours (what a model over 64 MB gets on
    a slow link), here in 5 MB parts, in parallel."""
    import s3fs

    if size == "large-own-parts":
        import kedro_keras._io.files
        import kedro_keras._io.transfer

        monkeypatch.setattr(kedro_keras._io.files, "SINGLE_PUT_LIMIT", 5 * MB)
        monkeypatch.setattr(kedro_keras._io.files, "SINGLE_PUT_LIMIT_ONE_CONNECTION", 0)  # no probe part
        monkeypatch.setattr(kedro_keras._io.transfer, "PART_SIZE", 5 * MB)
    old, new = models[size.removesuffix("-own-parts")]
    direct = s3fs.S3FileSystem(**s3_credentials)
    bucket = s3_bucket.removeprefix("s3://")
    path = f"{s3_bucket}/faults/model.keras"
    KerasModelDataset(filepath=path, credentials=s3_credentials).save(old)
    old_bytes = direct.cat(path)
    new_digest = weights_digest(new, optimizer=True)
    outcomes, notes = Outcomes(), []

    for name, fault in SAVE_FAULTS:
        direct.invalidate_cache()
        if direct.cat(path) != old_bytes:  # the previous case published the new model
            direct.pipe_file(path, old_bytes)
        arm(proxy, fault, bucket)
        acted_before = acted(proxy)
        dataset = KerasModelDataset(filepath=path, credentials=through_proxy, fs_args=fs_args(size))
        start = time.monotonic()
        try:
            dataset.save(new)
            saved = True
        except DatasetError:
            saved = False
        seconds = time.monotonic() - start
        reached = acted(proxy) > acted_before
        proxy.heal()
        direct.invalidate_cache()
        assert direct.find(f"{bucket}/faults") == [f"{bucket}/faults/model.keras"], f"{name}: stray objects"
        stored = direct.cat(path)
        outcomes.record(name, saved, reached)
        if saved:
            reloaded = KerasModelDataset(filepath=path, credentials=s3_credentials).load()
            assert weights_digest(reloaded, optimizer=True) == new_digest, (
                f"{name}: the saved model is not the new one"
            )
        else:
            assert stored == old_bytes, f"{name}: a failed save changed the model at the path"
        unreached = "" if reached else " (fault not reached)"
        notes.append(f"{name}: {'saved' if saved else 'DatasetError'} in {seconds:.1f} s{unreached}")

    with capsys.disabled():
        print(f"\n[faults / save, {size} model] {outcomes.line()}:\n  " + "\n  ".join(notes))
    assert outcomes.succeeded + outcomes.failed == len(SAVE_FAULTS)
    assert outcomes.unreached == UNREACHED_BY_SAVES[size], "\n".join(notes)


LOAD_FAULTS = [
    ("reset after 100 B down", dict(cut_after=(100, "down", "reset", 1))),
    ("reset after 600 KB down", dict(cut_after=(600 * 1024, "down", "reset", 1))),
    ("close after 4 MB down", dict(cut_after=(4 * MB, "down", "close", 1))),
    ("reset every 700 KB down, 5 times", dict(cut_after=(700 * 1024, "down", "reset", 5))),
    ("reset after 300 B up", dict(cut_after=(300, "up", "reset", 1))),
    ("refuse 3 connections", dict(refuse=3)),
    ("lose the answer to a read", dict(lose=b"GET /{bucket}/faults/")),
]


@pytest.mark.parametrize("kind", ["keras", "weights"])
def test_a_load_cut_off_by_the_network_returns_the_model_or_fails(
    kind, models, proxy, through_proxy, s3_bucket, s3_credentials, capsys
):
    import s3fs

    _, model = models["large"]
    direct = s3fs.S3FileSystem(**s3_credentials)
    bucket = s3_bucket.removeprefix("s3://")
    if kind == "keras":
        path = f"{s3_bucket}/faults/model.keras"
        make = lambda credentials, **kw: KerasModelDataset(filepath=path, credentials=credentials, **kw)  # noqa: E731
        optimizer = True
    else:
        path = f"{s3_bucket}/faults/model.weights.h5"
        make = lambda credentials, **kw: KerasWeightsDataset(filepath=path, credentials=credentials, **kw)  # noqa: E731
        optimizer = False
    make(s3_credentials).save(model)
    before = {p: direct.cat(p) for p in direct.find(f"{bucket}/faults")}
    expected = weights_digest(model, optimizer=optimizer)
    outcomes, notes = Outcomes(), []

    for name, fault in LOAD_FAULTS:
        arm(proxy, fault, bucket)
        acted_before = acted(proxy)
        start = time.monotonic()
        try:
            loaded = make(through_proxy, fs_args={"skip_instance_cache": True}).load()
            assert weights_digest(loaded, optimizer=optimizer) == expected, f"{name}: loaded another model"
            result = "loaded"
        except DatasetError:
            result = "DatasetError"
        reached = acted(proxy) > acted_before
        outcomes.record(name, result == "loaded", reached)
        proxy.heal()
        notes.append(
            f"{name}: {result} in {time.monotonic() - start:.1f} s{'' if reached else ' (fault not reached)'}"
        )
        direct.invalidate_cache()
        assert {p: direct.cat(p) for p in direct.find(f"{bucket}/faults")} == before, (
            f"{name}: a load changed the bucket"
        )

    with capsys.disabled():
        print(f"\n[faults / load, {kind}] {outcomes.line()}:\n  " + "\n  ".join(notes))
    assert outcomes.succeeded + outcomes.failed == len(LOAD_FAULTS)
    assert outcomes.unreached == [], "\n".join(notes)


def test_an_unreachable_store_fails_fast_and_changes_nothing(
    models, proxy, through_proxy, s3_bucket, s3_credentials
):
    """Every connection refused: save and load fail with DatasetError in bounded time."""
    import s3fs

    old, new = models["small"]
    direct = s3fs.S3FileSystem(**s3_credentials)
    path = f"{s3_bucket}/faults/model.keras"
    KerasModelDataset(filepath=path, credentials=s3_credentials).save(old)
    old_bytes = direct.cat(path)
    # Fewer retries than botocore's default, to keep the test short; the
    # outcome is the same with the default, only later.
    credentials = {**through_proxy, "config_kwargs": {"retries": {"max_attempts": 2, "mode": "standard"}}}
    proxy.refuse(10**6)
    start = time.monotonic()
    with pytest.raises(DatasetError, match=r"s3://.*model\.keras"):
        KerasModelDataset(filepath=path, credentials=credentials, fs_args={"skip_instance_cache": True}).save(
            new
        )
    with pytest.raises(DatasetError, match=r"s3://.*model\.keras"):
        KerasModelDataset(
            filepath=path, credentials=credentials, fs_args={"skip_instance_cache": True}
        ).load()
    seconds = time.monotonic() - start
    proxy.heal()
    direct.invalidate_cache()
    assert direct.cat(path) == old_bytes
    assert seconds < 120
