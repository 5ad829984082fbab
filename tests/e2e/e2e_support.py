"""Helpers and fixtures for the end-to-end tests: real Kedro projects driven
through the `kedro` command line in subprocesses.

There is deliberately no conftest.py in tests/e2e: the unit tests import
helpers with ``from conftest import ...``, which a second conftest module
would shadow. Test modules import the fixtures below by name instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "digits"
NOTEBOOK = REPO / "notebooks" / "load_models.ipynb"
OVERLAY = Path(__file__).resolve().parent / "kk_project"

# What every subprocess gets on top of the test process's environment.
ENV = {
    "KEDRO_DISABLE_TELEMETRY": "1",
    "KERAS_BACKEND": "tensorflow",
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "PYTHONUNBUFFERED": "1",
}


def subprocess_env() -> dict[str, str]:
    env = {**os.environ, **ENV}
    # Run the datasets through their normal code path, whatever a unit test
    # may have set in this process.
    env.pop("KEDRO_KERAS_PUBLIC_API_ONLY", None)
    return env


def run(
    args: list[str], cwd: Path, *, timeout: float = 600, check: bool = True
) -> subprocess.CompletedProcess:
    """Run a command; on failure, fail the test with the end of its output."""
    result = subprocess.run(
        args, cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"{' '.join(args)} (in {cwd}) exited {result.returncode}\n"
            f"--- stdout (end) ---\n{result.stdout[-6000:]}\n--- stderr (end) ---\n{result.stderr[-6000:]}",
            pytrace=False,
        )
    return result


def kedro(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`kedro <args>` in ``project``, with this interpreter's Kedro."""
    return run([sys.executable, "-m", "kedro", *args], project, check=check)


def kedro_new(parent: Path, name: str) -> Path:
    """A fresh project from Kedro's own template (no network, under a second)."""
    before = set(parent.iterdir())
    kedro(parent, "new", "--name", name, "--tools", "none", "--example", "n", "--telemetry", "no")
    (created,) = set(parent.iterdir()) - before
    assert (created / "conf" / "local").is_dir(), "kedro run needs conf/local"
    return created


def overlay(source: Path, target: Path, replacements: dict[str, str] | None = None) -> None:
    """Copy a tree of files over a project, substituting placeholders in text
    (the tree's own top-level README.md stays behind)."""
    for path in source.rglob("*"):
        if path.is_dir() or "__pycache__" in path.parts or path == source / "README.md":
            continue
        destination = target / path.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        text = path.read_text()
        for old, new in (replacements or {}).items():
            text = text.replace(old, new)
        destination.write_text(text)


def copy_example(target: Path) -> Path:
    """examples/digits as a person would clone it: no outputs, no secrets."""
    shutil.copytree(
        EXAMPLE,
        target,
        ignore=shutil.ignore_patterns(
            "data", "credentials.yml", "__pycache__", "*.egg-info", ".ipynb_checkpoints"
        ),
    )
    return target


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def s3_credentials_yaml(name: str, endpoint: str) -> str:
    return f"{name}:\n  key: testing\n  secret: testing\n  client_kwargs:\n    endpoint_url: {endpoint}\n"


@pytest.fixture(scope="session")
def new_bucket(s3_endpoint):
    """Makes empty buckets on the loopback S3 server (the ``s3_endpoint``
    fixture of tests/conftest.py): ``new_bucket() -> 's3://<name>'``."""
    import s3fs

    fs = s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": s3_endpoint})

    def make() -> str:
        name = f"e2e-{uuid.uuid4().hex[:12]}"
        fs.mkdir(name)
        fs.invalidate_cache()
        return f"s3://{name}"

    return make


@pytest.fixture(scope="session")
def s3fs_client(s3_endpoint):
    """An s3fs filesystem on the loopback server, to check what a run wrote."""
    import s3fs

    return s3fs.S3FileSystem(
        key="testing", secret="testing", client_kwargs={"endpoint_url": s3_endpoint}, use_listings_cache=False
    )
