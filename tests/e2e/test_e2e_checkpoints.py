"""End to end: a `kedro run` killed with SIGKILL in the middle of training
resumes from its last checkpoint on the next `kedro run`, trains only the
epochs left, and ends with exactly the weights and optimizer state of a run
that was never interrupted. Checkpoints on local disk and on the loopback S3
server, in a project made by `kedro new`.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

# new_bucket and s3fs_client are fixtures, used by name.
from e2e_support import (  # noqa: F401
    OVERLAY,
    kedro,
    kedro_new,
    new_bucket,
    overlay,
    s3_credentials_yaml,
    s3fs_client,
    subprocess_env,
)

from kedro_keras import KerasCheckpointDataset, KerasModelDataset

EPOCHS = 8  # conf/base/parameters.yml: checkpointed.epochs
KILL_AFTER = 3  # the kill comes once this many epochs have a checkpoint


@pytest.fixture(scope="module")
def bucket(new_bucket):
    return new_bucket()


@pytest.fixture(scope="module")
def project(tmp_path_factory, s3_endpoint, bucket):
    path = kedro_new(tmp_path_factory.mktemp("kedro-new"), "kk_e2e")
    overlay(OVERLAY, path, {"{bucket}": bucket})
    (path / "conf" / "local" / "credentials.yml").write_text(s3_credentials_yaml("model_store", s3_endpoint))
    return path


def newest_model(project: Path, name: str) -> Path:
    folder = project / "data" / "06_models" / f"{name}.keras"
    return folder / max(p.name for p in folder.iterdir()) / f"{name}.keras"


def saved_state(path: Path) -> list[np.ndarray]:
    """What the model file holds: weights (BatchNormalization's statistics
    included) and the optimizer's variables (iterations, Adam's moments)."""
    model = KerasModelDataset(filepath=str(path), load_args={"custom_objects": {}}).load()
    return [np.asarray(v) for v in model.weights] + [np.asarray(v) for v in model.optimizer.variables]


@pytest.fixture(scope="module")
def uninterrupted(project):
    """The reference: the same training, never killed."""
    kedro(project, "run", "--pipeline", "checkpointed", "--params", "run=straight")
    return saved_state(newest_model(project, "checkpointed"))


def kill_once_checkpointed(project: Path, pipeline: str, checkpoint_written) -> subprocess.CompletedProcess:
    """Start `kedro run`, SIGKILL it as soon as the KILL_AFTER-th checkpoint is
    complete (each epoch is slowed down by a second, so this lands in the
    middle of training), and return what it printed."""
    args = [
        sys.executable,
        "-m",
        "kedro",
        "run",
        "--pipeline",
        pipeline,
        "--params",
        "run=killed,checkpointed.pause=1",
    ]
    process = subprocess.Popen(
        args,
        cwd=project,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not checkpoint_written() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, out[-3000:]
    return subprocess.CompletedProcess(args, process.returncode, out, "")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_killed_training_resumes_and_ends_as_if_never_interrupted(
    project, bucket, s3_endpoint, uninterrupted, where
):
    pipeline = "checkpointed" if where == "local" else "checkpointed_s3"
    if where == "local":
        entry = {"filepath": str(project / "data" / "06_models" / "killed" / "checkpoints")}
    else:
        credentials = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": s3_endpoint}}
        entry = {
            "filepath": f"{bucket}/killed/checkpoints",
            "credentials": credentials,
            "fs_args": {"skip_instance_cache": True},
        }
    checkpoints = KerasCheckpointDataset(**entry)
    wanted = f"e{KILL_AFTER:05d}-s0000000"

    killed = kill_once_checkpointed(project, pipeline, lambda: wanted in checkpoints.versions())
    done = int(checkpoints.versions()[0][1:6])
    assert KILL_AFTER <= done < EPOCHS, killed.stdout[-3000:]  # killed in the middle of training
    assert "Trained epochs" not in killed.stdout

    resumed = kedro(project, "run", "--pipeline", pipeline, "--params", "run=killed").stdout
    version = f"e{done:05d}-s0000000"
    assert re.search(rf"Resuming from checkpoint {version} of \S+: {done} epoch\(s\) done", resumed), resumed
    assert f"Trained epochs {list(range(done + 1, EPOCHS + 1))}" in resumed, resumed

    final = saved_state(newest_model(project, pipeline))
    assert len(final) == len(uninterrupted) > 10
    for index, (got, expected) in enumerate(zip(final, uninterrupted, strict=True)):
        np.testing.assert_array_equal(got, expected, err_msg=f"array {index}")  # bit for bit
    assert checkpoints.versions()[0] == f"e{EPOCHS:05d}-s0000000"
    assert len(checkpoints.versions()) == 2  # keep_last: 2

    # That training is finished: the next run does not resume it (#29) but
    # trains anew, from the same seed to the same end, the old checkpoints kept aside.
    again = kedro(project, "run", "--pipeline", pipeline, "--params", "run=killed").stdout
    assert f"is finished (it finished after checkpoint e{EPOCHS:05d}-s0000000" in again, again[-3000:]
    assert "starts anew" in again and "Resuming" not in again, again[-3000:]
    assert f"Trained epochs {list(range(1, EPOCHS + 1))}" in again, again[-3000:]
    for index, (got, expected) in enumerate(
        zip(saved_state(newest_model(project, pipeline)), uninterrupted, strict=True)
    ):
        np.testing.assert_array_equal(got, expected, err_msg=f"array {index}")
    assert checkpoints.versions()[0] == f"e{EPOCHS:05d}-s0000000" and len(checkpoints.versions()) == 2
    if where == "local":
        (kept,) = Path(entry["filepath"]).glob("finished-*")
        assert sorted(p.name for p in kept.iterdir()) == sorted(
            f"ckpt-e{epoch:05d}-s0000000{suffix}"
            for epoch in (EPOCHS - 1, EPOCHS)
            for suffix in (".json", ".keras")
        ) + ["ckpt-finished.json"]
