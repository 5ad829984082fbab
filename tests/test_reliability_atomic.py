"""Atomic publish under ``kill -9``: a model being saved is never seen half-written.

A child process (job ``kill_saver`` in ``reliability_helpers/jobs.py``) saves a ~60 MB model
again and again through ``KerasModelDataset`` (one path that already holds a
good model) and ``KerasTimestampedModelDataset`` (a history folder, keep_last=2);
this process kills it with SIGKILL after a random delay, then checks what a
reader would see: the model at the path is the previous one or the one being
saved, complete (every weight equal to what was saved, predictions right), no
partial file is visible as a model, and every version the history lists loads
completely. Repeated for the local disk and for S3 (the moto server on
loopback, in this process), and on local disk for sharded weights
(``KerasWeightsDataset`` with a ``.weights.json`` index, job
``kill_sharded_saver``), read back by the dataset and by plain Keras.

``KEDRO_KERAS_KILL_SECONDS`` sets the time spent killing per backend (default 15).
"""

from __future__ import annotations

import os
import random
import re
import signal
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from kedro_keras import KerasModelDataset, KerasTimestampedModelDataset
from reliability_helpers import TEMP_NAME, file_layer_only_once
from reliability_helpers.faulty_proxy import FaultyProxy
from reliability_helpers.workers import ForkServer

pytestmark = file_layer_only_once()

KILL_SECONDS = float(os.environ.get("KEDRO_KERAS_KILL_SECONDS", "15"))
MIN_KILLS = 5
HARD_LIMIT = max(3 * KILL_SECONDS, 120)
STAMPED = re.compile(r"^model_\d{4}-\d{2}-\d{2}T\d{2}\.\d{2}\.\d{2}\.\d{6}Z\.keras$")
TEMP = re.compile(TEMP_NAME)


def build_large_model() -> keras.Model:
    """~4.8 M parameters; with Adam's two slots the .keras file is ~58 MB."""
    keras.utils.set_random_seed(7)
    inputs = keras.Input((64,))
    x = keras.layers.Dense(2048, activation="relu")(inputs)
    x = keras.layers.Dense(1536, activation="relu")(x)
    x = keras.layers.Dense(1024, activation="relu")(x)
    outputs = keras.layers.Dense(1, name="marker")(x)
    model = keras.Model(inputs, outputs, name="large")
    model.compile(optimizer="adam", loss="mse")
    rng = np.random.default_rng(7)
    model.fit(
        rng.normal(size=(32, 64)).astype("float32"), rng.normal(size=(32, 1)).astype("float32"), verbose=0
    )
    return model


class Reference:
    """What every saved generation must look like: the base model's weights,
    except the ``marker`` bias, which holds the generation number."""

    def __init__(self, model: keras.Model) -> None:
        self.model = model
        self.marker = model.get_layer("marker")
        paths = [variable.path for variable in model.weights]
        self.bias_index = paths.index(self.marker.bias.path)
        self.set_generation(0)
        self.weights = model.get_weights()
        self.iterations = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
        self.x = np.random.default_rng(1).normal(size=(8, 64)).astype("float32")
        self._predictions: dict[int, np.ndarray] = {}

    def set_generation(self, generation: int) -> None:
        self.marker.bias.assign(np.full(tuple(self.marker.bias.shape), generation, dtype="float32"))

    def predictions(self, generation: int) -> np.ndarray:
        if generation not in self._predictions:
            self.set_generation(generation)
            self._predictions[generation] = keras.ops.convert_to_numpy(self.model(self.x, training=False))
            self.set_generation(0)
        return self._predictions[generation]

    def check(self, loaded: keras.Model, allowed: set[int], what: str) -> int:
        """The generation ``loaded`` holds; fails unless it is complete and allowed."""
        weights = loaded.get_weights()
        assert len(weights) == len(self.weights), what
        bias = weights[self.bias_index]
        generation = int(bias.flat[0])
        assert np.all(bias == generation), f"{what}: the marker bias is not one generation: {bias}"
        assert generation in allowed, (
            f"{what} holds generation {generation}; only {sorted(allowed)} may be there"
        )
        for index, (ours, theirs) in enumerate(zip(weights, self.weights, strict=True)):
            if index != self.bias_index:
                assert np.array_equal(ours, theirs), (
                    f"{what}: weight array {index} differs from the saved one"
                )
        assert int(keras.ops.convert_to_numpy(loaded.optimizer.iterations)) == self.iterations, what
        predicted = keras.ops.convert_to_numpy(loaded(self.x, training=False))
        np.testing.assert_allclose(
            predicted, self.predictions(generation), rtol=1e-5, atol=1e-5, err_msg=what
        )
        return generation


class Progress:
    """What the killed child reported: the generations it started and finished."""

    def __init__(self) -> None:
        self.plain = 0  # generation 0 is saved by the test before any child runs
        self.stamped = 0
        self.started = 0

    def feed(self, lines: list[str]) -> None:
        for line in lines:
            step, _, number = line.partition(" ")
            if step in ("start", "plain", "stamped"):
                setattr(self, "started" if step == "start" else step, int(number))

    def allowed_plain(self) -> set[int]:
        return {self.plain} | ({self.started} if self.started > self.plain else set())

    def allowed_newest_stamped(self) -> set[int]:
        return {self.stamped} | ({self.started} if self.started > self.stamped else set())


class KillLoop:
    """Forks saver processes from a server that imported Keras once (so each
    kill costs no Keras import) and kills each with SIGKILL."""

    def __init__(self, folder: Path, seed: int, job: str = "kill_saver", **arguments) -> None:
        self.server = ForkServer(folder)
        self.job, self.arguments = job, arguments
        self.rng = random.Random(seed)

    def kill_one(self, first_generation: int, max_delay: float) -> list[str]:
        """Start a saver, kill it with SIGKILL at a random moment, return what it reported."""
        pid, output = self.server.fork(self.job, generation=first_generation, **self.arguments)
        self.server.wait_for_line(output, "ready")
        time.sleep(self.rng.uniform(0.0, max_delay))
        os.kill(pid, signal.SIGKILL)  # the saver we forked, by its pid
        status = self.server.reap(pid)
        assert status == -signal.SIGKILL, (
            f"saver {pid} ended by itself ({status}):\n{self.server.stderr_tail()}"
        )
        return self.server.lines(output)[1:]

    def close(self) -> None:
        self.server.close()


def run_kills(loop: KillLoop, reference: Reference, verify, max_delay: float) -> dict[str, int]:
    progress = Progress()
    stats = {"kills": 0, "saves_completed": 0, "killed_mid_write": 0}
    start = time.monotonic()
    try:
        while True:
            elapsed = time.monotonic() - start
            if stats["kills"] >= MIN_KILLS and elapsed > KILL_SECONDS:
                break
            assert elapsed < HARD_LIMIT, f"only {stats['kills']} kills in {elapsed:.0f} s"
            lines = loop.kill_one(progress.started + 1, max_delay)
            progress.feed(lines)
            stats["kills"] += 1
            stats["saves_completed"] += sum(line.startswith("plain") for line in lines)
            stats["killed_mid_write"] += verify(progress, reference)
    finally:
        loop.close()
    return stats


def report(capsys, backend: str, stats: dict[str, int], seed: int) -> None:
    with capsys.disabled():
        print(
            f"\n[kill -9 / {backend}] survived {stats['kills']} kills "
            f"({stats['killed_mid_write']} of them in the middle of writing a file; "
            f"{stats['saves_completed']} saves completed in between; delays seeded with {seed})"
        )


@pytest.fixture(scope="module")
def large_model_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("large")
    model = build_large_model()
    reference = Reference(model)
    base = folder / "base.keras"
    model.save(base)  # plain Keras: the children start from exactly these weights
    return base, reference


def test_kill_9_while_saving_locally(tmp_path, large_model_files, capsys):
    base, reference = large_model_files
    target, history = tmp_path / "models" / "model.keras", tmp_path / "history"
    # A good model is at both places before the first child starts.
    KerasModelDataset(filepath=str(target)).save(reference.model)
    KerasTimestampedModelDataset(filepath=str(history), keep_last=2).save(reference.model)

    def verify(progress: Progress, reference: Reference) -> int:
        names = sorted(os.listdir(target.parent))
        for name in names:
            assert name == "model.keras" or TEMP.match(name), f"unexpected file {name} beside the model"
        leftovers = [name for name in names if TEMP.match(name)]
        progress.plain = reference.check(
            KerasModelDataset(filepath=str(target)).load(), progress.allowed_plain(), "model.keras"
        )

        dataset = KerasTimestampedModelDataset(filepath=str(history))
        versions = dataset.versions()
        visible = sorted(name for name in os.listdir(history) if not TEMP.match(name))
        assert all(STAMPED.match(name) for name in visible), visible
        # Every model-looking file is a listed version, and every listed version is complete.
        assert visible == sorted(f"model_{version}.keras" for version in versions)
        assert versions, "the history lost every model"
        generations = []
        for version in versions:
            pinned = KerasTimestampedModelDataset(filepath=str(history), load_version=version)
            allowed = set(range(0, progress.started + 1))
            generations.append(reference.check(pinned.load(), allowed, f"history version {version}"))
        assert generations == sorted(generations, reverse=True) and len(set(generations)) == len(generations)
        assert generations[0] in progress.allowed_newest_stamped()
        progress.stamped = generations[0]
        history_leftovers = [name for name in os.listdir(history) if TEMP.match(name)]
        # Leftover temporary files are allowed (nobody lists them); drop them to save disk.
        for name in leftovers:
            os.remove(target.parent / name)
        for name in history_leftovers:
            os.remove(history / name)
        return int(bool(leftovers or history_leftovers))

    seed = int(time.time())
    loop = KillLoop(tmp_path, seed, base=str(base), target=str(target), history=str(history), endpoint=None)
    stats = run_kills(loop, reference, verify, max_delay=2.5)
    report(capsys, "local disk", stats, seed)
    assert stats["kills"] >= MIN_KILLS
    assert stats["saves_completed"] + stats["killed_mid_write"] > 0, "no kill ever landed during a save"


def test_kill_9_while_saving_sharded_weights(tmp_path, large_model_files, capsys):
    """An index plus shards (about 10 of them here) is published by replacing
    the index last: a reader sees the previous save or the new one, whole,
    through the dataset and through plain Keras's ``load_weights``. A killed
    save leaves at most shards that no index names."""
    import json

    from kedro_keras import KerasWeightsDataset

    base, reference = large_model_files
    folder = tmp_path / "weights"
    target = folder / "model.weights.json"
    shard_gb = 6 * 2**20 / 1024**3  # Keras's GB: 6 MB shards
    KerasWeightsDataset(filepath=str(target), save_args={"max_shard_size": shard_gb}).save(reference.model)

    def verify(progress: Progress, reference: Reference) -> int:
        index = json.loads(target.read_text())
        named = {
            name
            for names in index["weight_map"].values()
            for name in ([names] if isinstance(names, str) else names)
        }
        assert len(named) > 3, named
        names = set(os.listdir(folder))
        assert named <= names, f"the published index names missing shards: {sorted(named - names)}"
        loaded = KerasWeightsDataset(filepath=str(target)).load()
        progress.plain = reference.check(loaded, progress.allowed_plain(), "model.weights.json")
        theirs = keras.models.model_from_json((folder / "model.architecture.json").read_text())
        theirs.load_weights(target)  # plain Keras reads the same published save
        for ours, keras_own in zip(loaded.get_weights(), theirs.get_weights(), strict=True):
            assert np.array_equal(ours, keras_own), "plain Keras read other weights than the dataset"
        # What a killed save may leave: shards no index names and temporary files.
        expected = named | {"model.weights.json", "model.architecture.json", "model_00000.weights.h5"}
        leftovers = sorted(names - expected)
        assert all(TEMP.match(name) or name.endswith(".weights.h5") for name in leftovers), leftovers
        for name in leftovers:  # the saver is dead: nothing is being written
            os.remove(folder / name)
        return int(bool(leftovers))

    seed = int(time.time())
    loop = KillLoop(
        tmp_path, seed, job="kill_sharded_saver", base=str(base), target=str(target), max_shard_size=shard_gb
    )
    stats = run_kills(loop, reference, verify, max_delay=2.0)
    report(capsys, "sharded weights, local disk", stats, seed)
    assert stats["kills"] >= MIN_KILLS
    assert stats["saves_completed"] + stats["killed_mid_write"] > 0, "no kill ever landed during a save"


def test_kill_9_while_saving_to_s3(
    s3_bucket, s3_credentials, s3_endpoint, large_model_files, tmp_path, capsys
):
    import s3fs

    base, reference = large_model_files
    fs = s3fs.S3FileSystem(**s3_credentials)
    bucket = s3_bucket.removeprefix("s3://")
    target, history = f"{s3_bucket}/kill/model.keras", f"{s3_bucket}/kill/history"
    KerasModelDataset(filepath=target, credentials=s3_credentials).save(reference.model)
    KerasTimestampedModelDataset(filepath=history, keep_last=2, credentials=s3_credentials).save(
        reference.model
    )

    def pending_uploads() -> int:
        return len(fs.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads", []))

    seen_uploads = [pending_uploads()]

    def load_object(path: str) -> keras.Model:
        # The object as published, fetched in one GET (moto slices every ranged
        # GET out of the whole object, which makes streaming loads slow here;
        # the dataset's S3 read path is covered by the other S3 tests).
        local = tmp_path / "fetched" / path.rsplit("/", 1)[-1]
        local.parent.mkdir(exist_ok=True)
        fs.get_file(path, str(local))
        try:
            return KerasModelDataset(filepath=str(local)).load()
        finally:
            local.unlink()

    def verify(progress: Progress, reference: Reference) -> int:
        fs.invalidate_cache()
        objects = sorted(fs.find(f"{bucket}/kill"))
        history_objects = [path for path in objects if path.startswith(f"{bucket}/kill/history/")]
        assert sorted(set(objects) - set(history_objects)) == [f"{bucket}/kill/model.keras"], objects
        progress.plain = reference.check(
            load_object(f"{bucket}/kill/model.keras"), progress.allowed_plain(), "s3 model.keras"
        )
        versions = KerasTimestampedModelDataset(filepath=history, credentials=s3_credentials).versions()
        assert all(STAMPED.match(path.rsplit("/", 1)[-1]) for path in history_objects), history_objects
        # Every model-looking object is a listed version, and every listed version is complete.
        assert sorted(path.rsplit("/", 1)[-1] for path in history_objects) == sorted(
            f"model_{version}.keras" for version in versions
        )
        assert versions, "the history lost every model"
        generations = []
        for version in versions:
            allowed = set(range(0, progress.started + 1))
            loaded = load_object(f"{bucket}/kill/history/model_{version}.keras")
            generations.append(reference.check(loaded, allowed, f"s3 history version {version}"))
        assert generations == sorted(generations, reverse=True) and len(set(generations)) == len(generations)
        assert generations[0] in progress.allowed_newest_stamped()
        progress.stamped = generations[0]
        # An upload the kill interrupted is left pending (never visible as an object).
        uploads = pending_uploads()
        mid_upload = uploads > seen_uploads[0]
        seen_uploads[0] = uploads
        return int(mid_upload)

    # The savers talk to the server through a proxy that tells when the server
    # has finished every request a killed saver sent: a request that arrived
    # whole completes even though its sender is dead (as on real S3).
    host, port = s3_endpoint.removeprefix("http://").split(":")
    proxy = FaultyProxy((host, int(port))).start()

    def settled_verify(progress: Progress, reference: Reference) -> int:
        proxy.wait_idle(timeout=120)
        return verify(progress, reference)

    seed = int(time.time())
    loop = KillLoop(tmp_path, seed, base=str(base), target=target, history=history, endpoint=proxy.endpoint)
    try:
        stats = run_kills(loop, reference, settled_verify, max_delay=5.0)
    finally:
        proxy.close()
        # Free the loopback server's memory: objects and the uploads the kills left pending.
        for upload in fs.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads", []):
            fs.call_s3(
                "abort_multipart_upload", Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )
        fs.rm(f"{bucket}/kill", recursive=True)
    report(capsys, "S3 (moto on loopback)", stats, seed)
    assert stats["kills"] >= MIN_KILLS
