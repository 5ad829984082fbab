"""A node trained in two processes joined by ``keras.distribution`` (JAX,
two CPU devices each, the model axis across the processes): every process
calls the datasets as a Kedro node does, process 0 writes, all agree on the
version, and what was written loads exactly in one plain process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from kedro.io.core import Version

from kedro_keras import (
    KerasCheckpointDataset,
    KerasExportDataset,
    KerasModelDataset,
    KerasTimestampedModelDataset,
    KerasWeightsDataset,
)

WORKER = Path(__file__).with_name("process_worker.py")
PROCESSES = 2
# Two JAX processes start, join, train a small model for 3 epochs and save:
# about 20 s here; the bound is for a machine busy with other work.
WAIT_SECONDS = 300


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_processes(
    scenario: str,
    folder: Path,
    *s3: str,
    processes: int = PROCESSES,
    reports: bool = True,
    env: dict[str, str] | None = None,
) -> list[dict]:
    """Every process's report (none from a run killed on purpose); fails
    with their output if any failed."""
    port = str(free_port())
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(WORKER.parent), **(env or {})}
    running = [
        subprocess.Popen(
            [sys.executable, str(WORKER), scenario, str(index), str(processes), port, str(folder), *s3],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for index in range(processes)
    ]
    outputs = []
    try:
        for process in running:
            outputs.append(process.communicate(timeout=WAIT_SECONDS)[0])
    finally:
        for process in running:
            process.kill()
    for process, output in zip(running, outputs, strict=True):
        assert process.returncode == 0, output[-4000:]
    said = []
    for output in outputs:
        lines = [line for line in output.splitlines() if line.startswith("REPORT ")]
        assert len(lines) == (1 if reports else 0), output[-4000:]
        said.extend(json.loads(line.removeprefix("REPORT ")) for line in lines)
    return said


def entry(where: str, tmp_path: Path, name: str, s3: tuple[str, ...]) -> dict:
    if where == "local":
        return {"filepath": str(tmp_path / name)}
    bucket, endpoint = s3
    return {
        "filepath": f"{bucket}/{name}",
        "credentials": {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": endpoint}},
    }


def assert_same(model, expected) -> None:
    """``model``'s weights and optimizer state are the trained ones."""
    loaded = model.weights + model.optimizer.variables
    assert len(loaded) == len(expected) > 10
    for index, (got, want) in enumerate(zip(loaded, expected, strict=True)):
        np.testing.assert_array_equal(np.asarray(got), want, err_msg=f"array {index}")  # bit for bit


@pytest.mark.parametrize("where", ["local", "s3"])
def test_two_processes_save_once_under_process_zeros_version_and_it_loads_in_one(tmp_path, where, request):
    s3 = ()
    if where == "s3":
        s3 = (request.getfixturevalue("s3_bucket"), request.getfixturevalue("s3_endpoint"))
    reports = run_processes("train-and-save", tmp_path, *s3)

    assert all(any(report["sharded"]) for report in reports)  # no process held the whole model
    assert all(report["still_sharded"] == report["sharded"] for report in reports)
    expected = [np.load(tmp_path / f"expected-{index}.npz") for index in range(PROCESSES)]
    expected = [[arrays[f"arr_{i}"] for i in range(len(arrays.files))] for arrays in expected]
    for other in expected[1:]:
        for got, want in zip(other, expected[0], strict=True):
            np.testing.assert_array_equal(got, want)

    model_entry = KerasModelDataset(**entry(where, tmp_path, "model.keras", s3), version=Version(None, None))
    # One version, process 0's (process 1's session had picked ...01.000Z).
    assert [v.name for v in model_entry.stored_versions()] == ["2026-12-06T00.00.00.000Z"]
    assert_same(model_entry.load(), expected[0])

    weights_entry = KerasWeightsDataset(
        **entry(where, tmp_path, "weights.weights.h5", s3), version=Version(None, None)
    )
    assert [v.name for v in weights_entry.stored_versions()] == ["2026-12-06T00.00.00.000Z"]
    assert_same(weights_entry.load(), expected[0])

    sharded = KerasWeightsDataset(**entry(where, tmp_path, "sharded.weights.json", s3))
    assert_same(sharded.load(), expected[0])
    if where == "local":  # several shards, one index: written once
        assert len(list((tmp_path / "sharded.weights.json").parent.glob("sharded_*.weights.h5"))) > 1

    history = KerasTimestampedModelDataset(**entry(where, tmp_path, "history", s3))
    assert len(history.versions()) == 1  # two saves, keep_last: 1, and never two files for one save
    assert_same(history.load(), expected[0])

    # An ONNX export, made by process 0 from the gathered weights, predicts as the saved model does.
    served = KerasExportDataset(**entry(where, tmp_path, "served.onnx", s3), format="onnx").load()
    inputs = np.random.default_rng(1).random((5, 8), dtype=np.float32)
    np.testing.assert_allclose(
        served.predict(inputs), model_entry.load().predict(inputs, verbose=0), atol=1e-5
    )

    # Orbax: each process wrote the shards it held, about half the bytes each.
    orbax = KerasWeightsDataset(**entry(where, tmp_path, "state.orbax", s3), version=Version(None, None))
    assert [v.name for v in orbax.stored_versions()] == ["2026-12-06T00.00.00.000Z"]
    assert_same(orbax.load(), expected[0])
    assert_about_half_each(orbax, where, tmp_path, s3)

    checkpoints = KerasCheckpointDataset(**entry(where, tmp_path, "checkpoints", s3), keep_last=2)
    assert checkpoints.versions() == ["e00003-s0000000", "e00002-s0000000"]
    restored = checkpoints.load().restore(continue_finished=True)
    assert_same(restored, expected[0])


def assert_about_half_each(
    orbax: KerasWeightsDataset, where: str, tmp_path: Path, s3: tuple[str, ...]
) -> None:
    """The array bytes in the committed state, by the process that wrote
    them (the index records it): each of the two wrote between a third and
    two thirds; and every file is where the index says."""
    folder = orbax.stored_path()
    fs = orbax._location.fs
    index = json.loads(fs.cat_file(str(folder / "index.json")))
    arrays = {name: e for name, e in index["files"].items() if "/ocdbt.process_" in name}
    by_process = [sum(e["size"] for e in arrays.values() if e["process"] == i) for i in range(PROCESSES)]
    assert all(total / sum(by_process) > 1 / 3 for total in by_process), by_process
    for name, recorded in index["files"].items():
        assert fs.size(str(folder / index["state"] / name)) == recorded["size"]


def test_when_one_process_cannot_write_its_orbax_shards_every_process_fails_and_the_last_save_stays(tmp_path):
    reports = run_processes("orbax-process-one-fails", tmp_path)
    for report in reports:  # the fault was reached, and told to process 0 too
        assert report["error"] is not None
        assert "process 1 of 2: No space left on device (injected in process 1)" in report["error"]
        assert "previously saved there are unchanged" in report["error"]
    entry = KerasWeightsDataset(filepath=str(tmp_path / "state.orbax"))
    assert_same(entry.load(), arrays_in(tmp_path / "first-0.npz"))
    states = [p.name for p in (tmp_path / "state.orbax").iterdir() if p.name.startswith("state-")]
    assert len(states) == 1  # the failed save's state was removed


def test_a_failed_background_write_in_process_zero_is_raised_in_every_process(tmp_path):
    reports = run_processes("background-write-fails", tmp_path)
    assert reports[0]["reached"]  # the fault, injected in process 0's writer thread
    for report in reports:
        assert report["error"] is not None
        assert "Input/output error (injected in process 0's writer)" in report["error"]
    assert "2 processes, process 0 writes the checkpoints, and it failed" in reports[1]["error"]
    checkpoints = KerasCheckpointDataset(filepath=str(tmp_path / "checkpoints"))
    assert checkpoints.versions()[0] == "e00002-s0000000"  # epoch 3's never became a checkpoint


def test_when_process_zero_cannot_write_every_process_says_why(tmp_path):
    (tmp_path / "blocked").write_text("a file where the model's folder should be")
    reports = run_processes("process-zero-fails", tmp_path)
    first, second = (report["error"] for report in reports)
    assert first is not None and "blocked" in first and "a file is where a folder" in first
    assert second is not None and "2 processes, process 0 writes, and it failed" in second
    assert first in second  # process 0's own words, told to process 1


def arrays_in(path: Path) -> list[np.ndarray]:
    with np.load(path) as arrays:
        return [arrays[f"arr_{index}"] for index in range(len(arrays.files))]


def test_what_two_processes_saved_loads_resharded_in_four(tmp_path):
    run_processes("train-and-save", tmp_path)
    expected = arrays_in(tmp_path / "expected-0.npz")
    reports = run_processes("load", tmp_path, processes=4)

    assert all(report["devices"] == 8 and all(report["sharded"]) for report in reports)
    assert all(all(report["orbax_sharded"]) for report in reports)  # read onto the four processes' layout
    for name in ("loaded", "restored", "orbax"):
        for index in range(4):
            got = arrays_in(tmp_path / f"{name}-4-{index}.npz")
            assert len(got) == len(expected) > 10
            for position, (one, other) in enumerate(zip(got, expected, strict=True)):
                np.testing.assert_array_equal(
                    one, other, err_msg=f"{name} in process {index}, array {position}"
                )


@pytest.mark.parametrize("checkpoint_format", ["keras", "orbax", "keras-background"])
def test_a_two_process_training_killed_resumes_bit_for_bit(tmp_path, checkpoint_format):
    uninterrupted, interrupted = tmp_path / "uninterrupted", tmp_path / "interrupted"
    uninterrupted.mkdir()
    interrupted.mkdir()
    background = checkpoint_format.endswith("-background")
    checkpoint_format = checkpoint_format.removesuffix("-background")
    env = {"CHECKPOINT_FORMAT": checkpoint_format, "CHECKPOINT_BACKGROUND": "1" if background else "0"}
    reports = run_processes("train-uninterrupted", uninterrupted, env=env)
    if background:  # epoch 1 in the foreground, then process 0's writer thread; nothing from process 1
        assert reports[0]["written_by"][0] == "MainThread"
        assert all(name.startswith("kedro-keras checkpoint") for name in reports[0]["written_by"][1:])
        assert len(reports[0]["written_by"]) == 4 and reports[1]["written_by"] == []
    killed = KerasCheckpointDataset(filepath=str(interrupted / "checkpoints"), format=checkpoint_format)
    run_processes("train-killed", interrupted, reports=False, env=env)
    if background:  # killed while epoch 2's checkpoint may still be written: epoch 1 at least
        assert killed.versions()[-1] == "e00001-s0000000" and len(killed.versions()) in (1, 2)
    else:
        assert killed.versions() == ["e00002-s0000000", "e00001-s0000000"]  # both gone after epoch 2
    if checkpoint_format == "orbax":  # each process wrote the shards it held
        newest = interrupted / "checkpoints" / "ckpt-e00002-s0000000.orbax"
        index = json.loads((newest / "index.json").read_text())
        arrays = [entry for name, entry in index["files"].items() if "/ocdbt.process_" in name]
        by_process = [sum(e["size"] for e in arrays if e["process"] == i) for i in range(PROCESSES)]
        assert index["processes"] == PROCESSES and all(
            total / sum(by_process) > 1 / 3 for total in by_process
        )

    resumed_from = int(killed.versions()[0][1:6])
    reports = run_processes("resume", interrupted, env=env)
    assert [report["initial_epoch"] for report in reports] == [resumed_from] * 2
    assert all(all(report["sharded"]) for report in reports)  # restored onto the layout
    expected = arrays_in(uninterrupted / "train-uninterrupted-0.npz")
    for index in range(PROCESSES):
        got = arrays_in(interrupted / f"resume-{index}.npz")
        assert len(got) == len(expected) > 10
        for position, (one, other) in enumerate(zip(got, expected, strict=True)):
            np.testing.assert_array_equal(one, other, err_msg=f"process {index}, array {position}")
