"""The install path the README gives: the wheel `make wheel` builds (kedro-keras
is not on PyPI yet). Under TensorFlow only: it builds with pip's build
isolation, which fetches setuptools, once per `make test`."""

from __future__ import annotations

import re

import kedro_keras


def test_make_wheel_builds_a_wheel_with_our_entry_points(tmp_path):
    """What the README installs from: the commands and the logging hook
    registered, every extra declared."""
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    root = Path(__file__).parents[2]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--wheel-dir",
            str(tmp_path),
            str(root),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = tmp_path.glob(f"kedro_keras-{kedro_keras.__version__}-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = f"kedro_keras-{kedro_keras.__version__}.dist-info"
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
        metadata = archive.read(f"{info}/METADATA").decode()
    assert "kedro_keras/hooks.py" in names and "kedro_keras/_io/fs_args.py" in names
    assert "[kedro.hooks]\nkeras = kedro_keras.hooks:hooks" in entry_points
    assert "[kedro.project_commands]\nkeras = kedro_keras.cli:commands" in entry_points
    assert {"onnx", "litert", "tensorflow", "s3"} <= set(
        re.findall(r"^Provides-Extra: (\S+)", metadata, re.M)
    )
