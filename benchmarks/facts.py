"""Facts about the run read at run time: machine, package versions, git state."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from importlib import metadata as _metadata
from pathlib import Path

from plan import REPO


def _version(*names: str) -> tuple[str, str | None]:
    """The version of the first of these distributions installed, and its name."""
    for name in names:
        try:
            return _metadata.version(name), name
        except _metadata.PackageNotFoundError:
            continue
    return "not installed", None


def git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], check=False, cwd=REPO, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def src_fingerprint() -> str:
    """A short hash of kedro_keras's source files, to tell implementations apart."""
    digest = hashlib.sha256()
    for path in sorted((REPO / "src").rglob("*.py")):
        digest.update(str(path.relative_to(REPO)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def machine_info() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import psutil

        ram = f"{psutil.virtual_memory().total / 2**30:.1f} GiB"
    except ImportError:
        ram = "?"
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram": ram,
        "python": platform.python_version(),
    }


def versions() -> dict:
    tensorflow, tensorflow_dist = _version("tensorflow-cpu", "tensorflow")
    return {
        "kedro-keras": _version("kedro-keras")[0],
        "keras": _version("keras")[0],
        "tensorflow": tensorflow,
        "tensorflow-distribution": tensorflow_dist,
        "kedro": _version("kedro")[0],
        "kedro-datasets": _version("kedro-datasets")[0],
        "fsspec": _version("fsspec")[0],
        "s3fs": _version("s3fs")[0],
        "moto": _version("moto")[0],
        "h5py": _version("h5py")[0],
        "numpy": _version("numpy")[0],
    }


def public_api_only() -> str:
    """KEDRO_KERAS_PUBLIC_API_ONLY as the children inherit it (kedro-keras's public-API fallback)."""
    return os.environ.get("KEDRO_KERAS_PUBLIC_API_ONLY", "")
