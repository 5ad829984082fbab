"""End to end: a Kedro project whose training node runs in two processes,
launched the way docs/processes.md shows (`kedro run` in each, with Keras's
KERAS_DISTRIBUTION_* variables). Both are SIGKILLed mid-training, launched
again, and the run resumes; the final weights equal those of an
uninterrupted two-process run, and the model loads in a plain process."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from kedro.io.core import Version

from e2e.e2e_support import kedro_new, overlay
from kedro_keras import KerasCheckpointDataset, KerasModelDataset

OVERLAY = Path(__file__).with_name("two_process_project")
PROCESSES = 2
EPOCHS = 6  # conf/base/parameters.yml
KILL_AFTER = 2  # killed once this many epochs have a checkpoint
WAIT_SECONDS = 300  # a launch takes about 15 s here


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    path = kedro_new(tmp_path_factory.mktemp("kedro-new"), "kk_processes")
    overlay(OVERLAY, path)
    return path


def launch(project: Path, run: str, pause: float = 0) -> list[subprocess.Popen]:
    """`kedro run` in each process, as the docs page shows."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = []
    for index in range(PROCESSES):
        env = {
            **os.environ,
            "KERAS_BACKEND": "jax",
            "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
            "KERAS_DISTRIBUTION_JOB_ADDRESSES": f"127.0.0.1:{port}",
            "KERAS_DISTRIBUTION_NUM_PROCESSES": str(PROCESSES),
            "KERAS_DISTRIBUTION_PROCESS_ID": str(index),
            "KEDRO_DISABLE_TELEMETRY": "1",
            "PYTHONUNBUFFERED": "1",
            "COLUMNS": "250",  # Kedro's rich handler wraps at the terminal's width
        }
        env.pop("KEDRO_KERAS_PUBLIC_API_ONLY", None)
        started.append(
            subprocess.Popen(
                [sys.executable, "-m", "kedro", "run", "--params", f"run={run},training.pause={pause}"],
                cwd=project,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        )
    return started


def finished(started: list[subprocess.Popen]) -> list[str]:
    outputs = []
    try:
        outputs = [process.communicate(timeout=WAIT_SECONDS)[0] for process in started]
    finally:
        for process in started:
            process.kill()
    for process, output in zip(started, outputs, strict=True):
        assert process.returncode == 0, output[-4000:]
    return outputs


def state(model) -> list[np.ndarray]:
    return [np.asarray(v) for v in model.weights + model.optimizer.variables]


def model_entry(project: Path, run: str) -> KerasModelDataset:
    return KerasModelDataset(
        filepath=str(project / "data" / "06_models" / run / "model.keras"), version=Version(None, None)
    )


def test_a_two_process_run_killed_mid_training_resumes_as_if_never_interrupted(project):
    outputs = finished(launch(project, "straight"))
    assert all(f"Trained epochs {list(range(1, EPOCHS + 1))}" in output for output in outputs)
    assert all(f"of {PROCESSES} (keras.distribution)" in output for output in outputs)
    straight = model_entry(project, "straight")
    assert len(straight.stored_versions()) == 1  # one version, written once
    expected = state(straight.load())  # a plain process: no distribution here

    checkpoints = KerasCheckpointDataset(
        filepath=str(project / "data" / "06_models" / "killed" / "checkpoints")
    )
    started = launch(project, "killed", pause=1)
    deadline = time.monotonic() + WAIT_SECONDS
    wanted = f"e{KILL_AFTER:05d}-s0000000"
    while wanted not in checkpoints.versions() and time.monotonic() < deadline:
        assert all(process.poll() is None for process in started)
        time.sleep(0.05)
    for process in started:
        os.killpg(process.pid, signal.SIGKILL)
    killed_outputs = [process.communicate(timeout=60)[0] for process in started]
    assert all(process.returncode == -signal.SIGKILL for process in started)
    assert not any("Trained epochs" in output for output in killed_outputs)
    done = int(checkpoints.versions()[0][1:6])
    assert KILL_AFTER <= done < EPOCHS

    resumed = finished(launch(project, "killed"))
    for output in resumed:
        assert re.search(rf"Resuming from checkpoint e{done:05d}-s0000000 of \S+", output), output[-3000:]
        assert f"Trained epochs {list(range(done + 1, EPOCHS + 1))}" in output, output[-3000:]
    final = model_entry(project, "killed")
    assert len(final.stored_versions()) == 1
    got = state(final.load())
    assert len(got) == len(expected) > 10
    for index, (one, other) in enumerate(zip(got, expected, strict=True)):
        np.testing.assert_array_equal(one, other, err_msg=f"array {index}")  # bit for bit
