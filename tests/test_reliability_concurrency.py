"""Concurrency: processes saving into one history at once, and pruning racing a reader.

Real processes (forked from ``reliability_helpers/forkserver.py``, which
imported Keras once), real files, the real S3-protocol server:

- 8 processes wait on a barrier file and then save into the same
  ``KerasTimestampedModelDataset`` folder at once: 8 distinct versions, each
  loading the model its process saved. Also with a frozen clock, so that all 8
  pick the same first timestamp and only exclusive creation keeps them apart
  (local disk: ``os.link``).
- One process saves again and again with ``keep_last=2`` while another loads
  the newest again and again: every load succeeds (the dataset lists again if
  the file it listed was pruned) and returns a complete model.
"""

from __future__ import annotations

import time

import keras
import numpy as np
import pytest

from kedro_keras import KerasTimestampedModelDataset
from reliability_helpers import file_layer_only_once
from reliability_helpers.workers import ForkServer

pytestmark = file_layer_only_once()

SAVERS = 8
RACE_SECONDS = 5


def build_marked_model() -> keras.Model:
    """A small model whose ``marker`` bias tells which process saved it."""
    keras.utils.set_random_seed(5)
    inputs = keras.Input((16,))
    x = keras.layers.Dense(256, activation="relu")(inputs)
    outputs = keras.layers.Dense(1, name="marker")(x)
    model = keras.Model(inputs, outputs, name="marked")
    model.compile(optimizer="adam", loss="mse")
    rng = np.random.default_rng(5)
    model.fit(
        rng.normal(size=(16, 16)).astype("float32"), rng.normal(size=(16, 1)).astype("float32"), verbose=0
    )
    marker = model.get_layer("marker")
    marker.bias.assign(np.zeros(tuple(marker.bias.shape), dtype="float32"))
    return model


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("concurrency")
    model = build_marked_model()
    path = folder / "base.keras"
    model.save(path)
    return path, model


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = ForkServer(tmp_path_factory.mktemp("forkserver"))
    yield server
    server.close()


def generation_of(model: keras.Model, reference: keras.Model) -> int:
    """The marker of a loaded model, after checking every other weight is the reference's."""
    weights, expected = model.get_weights(), reference.get_weights()
    bias_index = [v.path for v in reference.weights].index(reference.get_layer("marker").bias.path)
    assert len(weights) == len(expected)
    for index, (ours, theirs) in enumerate(zip(weights, expected, strict=True)):
        if index != bias_index:
            np.testing.assert_array_equal(ours, theirs)
    generation = int(weights[bias_index].flat[0])
    assert np.all(weights[bias_index] == generation)
    return generation


def save_at_once(
    server: ForkServer, base_path, history: str, barrier, endpoint=None, frozen_clock=False
) -> None:
    jobs = [
        server.fork(
            "barrier_saver",
            base=str(base_path),
            history=history,
            generation=index + 1,
            barrier=str(barrier),
            endpoint=endpoint,
            frozen_clock=frozen_clock,
        )
        for index in range(SAVERS)
    ]
    for _, output in jobs:
        server.wait_for_line(output, "ready")
    barrier.touch()
    statuses = [server.reap(pid) for pid, _ in jobs]
    assert statuses == [0] * SAVERS, f"a saver failed ({statuses}):\n{server.stderr_tail()}"
    assert all(server.lines(output)[-1] == "saved" for _, output in jobs)


def check_history(history: str, reference: keras.Model, credentials=None) -> list[str]:
    """Exactly one version per saver, each holding that saver's model."""
    versions = KerasTimestampedModelDataset(filepath=history, credentials=credentials).versions()
    assert len(versions) == SAVERS == len(set(versions)), f"expected {SAVERS} versions, found {versions}"
    generations = set()
    for version in versions:
        pinned = KerasTimestampedModelDataset(filepath=history, load_version=version, credentials=credentials)
        generations.add(generation_of(pinned.load(), reference))
    assert generations == set(range(1, SAVERS + 1)), "a process's model was lost or overwritten"
    return versions


@pytest.mark.parametrize("frozen_clock", [False, True], ids=["real clock", "frozen clock"])
def test_eight_processes_save_into_one_local_history_at_once(frozen_clock, base, server, tmp_path, capsys):
    base_path, reference = base
    history = str(tmp_path / "history")
    start = time.monotonic()
    save_at_once(server, base_path, history, tmp_path / "go", frozen_clock=frozen_clock)
    versions = check_history(history, reference)
    if frozen_clock:
        # All picked the same first timestamp; exclusive creation moved each on.
        assert min(versions) == "2026-11-21T12.00.00.500000Z"
    assert not [p.name for p in (tmp_path / "history").iterdir() if p.name.startswith(".")], (
        "temporary files left"
    )
    with capsys.disabled():
        print(
            f"\n[concurrency] {SAVERS} processes saved into one local history at once "
            f"({'frozen' if frozen_clock else 'real'} clock): {len(versions)} distinct versions, "
            f"all loadable ({time.monotonic() - start:.1f} s)"
        )


def test_eight_processes_save_into_one_s3_history_at_once(
    base, server, tmp_path, s3_bucket, s3_credentials, s3_endpoint
):
    base_path, reference = base
    history = f"{s3_bucket}/history"
    save_at_once(server, base_path, history, tmp_path / "go", endpoint=s3_endpoint)
    check_history(history, reference, credentials=s3_credentials)


def race(
    server: ForkServer, base_path, history: str, stop, fresh: bool, endpoint=None
) -> tuple[list[str], list[str]]:
    writer_pid, writer_out = server.fork(
        "pruning_writer", base=str(base_path), history=history, seconds=RACE_SECONDS, endpoint=endpoint
    )
    server.wait_for_line(writer_out, "ready")
    server.wait_for_line(writer_out, "saved 1")
    reader_pid, reader_out = server.fork(
        "newest_reader", base=str(base_path), history=history, stop=str(stop), fresh=fresh, endpoint=endpoint
    )
    writer_status = server.reap(writer_pid)
    stop.touch()
    reader_status = server.reap(reader_pid)
    assert (writer_status, reader_status) == (0, 0), server.stderr_tail()
    return server.lines(writer_out), server.lines(reader_out)


@pytest.mark.parametrize("fresh", [True, False], ids=["a new dataset per load", "one dataset for all loads"])
def test_pruning_never_breaks_a_load_of_the_newest(fresh, base, server, tmp_path, capsys):
    base_path, _ = base
    writer, reader = race(server, base_path, str(tmp_path / "history"), tmp_path / "stop", fresh)
    saves = [int(line.split()[1]) for line in writer if line.startswith("saved")]
    failures = [line for line in reader if line.startswith("failed")]
    loads = [int(line.split()[1]) for line in reader if line.startswith("loaded")]
    assert failures == [], failures
    assert len(saves) > 10 and len(loads) > 10, (len(saves), len(loads))
    assert set(loads) <= set(saves)
    assert KerasTimestampedModelDataset(filepath=str(tmp_path / "history")).versions().__len__() == 2
    with capsys.disabled():
        print(
            f"\n[concurrency] keep_last=2 pruning vs a reader ({'fresh dataset' if fresh else 'one dataset'}, "
            f"local): {len(saves)} saves, {len(loads)} loads, 0 failed; "
            f"{len(set(loads))} distinct generations read"
        )


@pytest.mark.parametrize("fresh", [True, False], ids=["a new dataset per load", "one dataset for all loads"])
def test_pruning_never_breaks_a_load_of_the_newest_on_s3(
    fresh, base, server, tmp_path, s3_bucket, s3_endpoint, capsys
):
    base_path, _ = base
    writer, reader = race(
        server, base_path, f"{s3_bucket}/history", tmp_path / "stop", fresh, endpoint=s3_endpoint
    )
    saves = [int(line.split()[1]) for line in writer if line.startswith("saved")]
    failures = [line for line in reader if line.startswith("failed")]
    loads = [int(line.split()[1]) for line in reader if line.startswith("loaded")]
    assert failures == [], failures
    assert len(saves) > 5 and len(loads) > 5, (len(saves), len(loads))
    assert set(loads) <= set(saves)
    with capsys.disabled():
        print(
            f"\n[concurrency] keep_last=2 pruning vs a reader ({'fresh dataset' if fresh else 'one dataset'}, "
            f"S3): {len(saves)} saves, {len(loads)} loads, 0 failed"
        )
