"""A real MLflow tracking server for the tests: ``mlflow server`` in a
subprocess, a SQLite backend store, its proxied artifact store an S3 bucket
on the loopback moto server; experiments whose artifacts go straight to a
local folder or to S3 (the client writes them, MLflow's server never sees
the bytes)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

S3_KEYS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass(frozen=True)
class Server:
    url: str
    s3_endpoint: str
    bucket: str
    folder: Path
    # Experiment ids by where their artifacts go.
    experiments: dict[str, str]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, log: Path, timeout: float = 120) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if process.poll() is not None:
            pytest.fail(
                f"mlflow server exited {process.returncode}:\n{log.read_text()[-4000:]}", pytrace=False
            )
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                if answer.status == 200:
                    return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.25)
    pytest.fail(f"mlflow server not up after {timeout} s:\n{log.read_text()[-4000:]}", pytrace=False)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory, s3_endpoint):
    """The server, and the environment MLflow's clients (ours, boto3's) read."""
    import mlflow
    import s3fs

    folder = tmp_path_factory.mktemp("mlflow")
    bucket = f"mlflow-{uuid.uuid4().hex[:10]}"
    s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": s3_endpoint}).mkdir(
        bucket
    )
    environment = {**S3_KEYS, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint}
    saved = {key: os.environ.get(key) for key in [*environment, "MLFLOW_TRACKING_URI"]}
    os.environ.update(environment)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = folder / "server.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "mlflow", "server"),
                *("--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}"),
                *("--artifacts-destination", f"s3://{bucket}/proxied"),
                *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **environment},
        )
    try:
        wait_until_up(url, process, log)
        os.environ["MLFLOW_TRACKING_URI"] = url
        mlflow.set_tracking_uri(url)
        client = mlflow.MlflowClient()
        experiments = {
            "proxied-s3": client.create_experiment("proxied-s3"),
            "local": client.create_experiment("local", artifact_location=(folder / "local").as_uri()),
            "s3": client.create_experiment("s3", artifact_location=f"s3://{bucket}/direct"),
        }
        yield Server(url, s3_endpoint, bucket, folder, experiments)
    finally:
        process.terminate()
        process.wait(30)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
