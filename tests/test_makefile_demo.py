"""`make demo` installs only what the demo needs; the test and docs stack stays
with the targets that use it (make test, lint, docs, bench, ...).

A dry run (`make -n -B`: every stamp taken as missing, nothing run, nothing
downloaded) of the Makefile's real recipes, read for their pip installs.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")

# What only the tests, the docs site or the benchmarks use.
TEST_AND_DOCS_STACK = (
    "pytest",
    "moto",
    "kedro-viz",
    "mkdocs",
    "keras-hub",
    "tf-keras",
    "nbclient",
    "ipykernel",
)
TEST_AND_DOCS_EXTRAS = {"test", "docs", "litert", "s3"}


def pip_installs(target: str) -> list[list[str]]:
    """The arguments of each `pip install` the dry run of `make <target>`
    prints, from a state where no stamp counts as up to date."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    run = subprocess.run(
        ["make", "--no-print-directory", "-n", "-B", "-C", str(ROOT), target],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=True,
    )
    installs = []
    for line in run.stdout.splitlines():
        if re.search(r"\bpip install\b", line) and not line.lstrip().startswith("#"):
            words = shlex.split(without_substitutions(line.split("pip install", 1)[1]))
            installs.append([w for w in words if not w.startswith("-") or w.startswith("-e")])
    return installs


def without_substitutions(command: str) -> str:
    """The command less its $(...) parts (tf-keras's version, asked of the
    venv's Python when the recipe runs)."""
    kept, depth, i = [], 0, 0
    while i < len(command):
        if command.startswith("$(", i):
            depth, i = depth + 1, i + 2
            continue
        if depth and command[i] == "(":
            depth += 1
        elif depth and command[i] == ")":
            depth -= 1
        elif not depth:
            kept.append(command[i])
        i += 1
    return "".join(kept)


def extras(words: list[str]) -> set[str]:
    """The extras of the checkout's own editable install (-e ".[a,b]")."""
    found: set[str] = set()
    for word in words:
        match = re.fullmatch(r"\.\[(.*)\]", word)
        if match:
            found.update(part.strip() for part in match.group(1).split(","))
    return found


def names(words: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~ ]", w, maxsplit=1)[0].lower() for w in words}


def test_demo_installs_only_the_demo_needs():
    installs = pip_installs("demo")
    words = [w for install in installs for w in install]
    assert {"tensorflow-cpu", "examples/digits"} <= set(words), installs
    assert "onnx" in extras(words), installs
    assert not names(words) & set(TEST_AND_DOCS_STACK), installs
    assert not extras(words) & TEST_AND_DOCS_EXTRAS, installs
    assert not any(name in w for w in words for name in TEST_AND_DOCS_STACK), installs


@pytest.mark.parametrize("target", ["test-tensorflow", "lint", "docs"])
def test_the_test_targets_still_install_the_whole_stack(target):
    installs = pip_installs(target)
    words = [w for install in installs for w in install]
    assert {"tensorflow-cpu", "examples/digits", "nbclient", "ipykernel"} <= set(words), installs
    assert {"test", "docs", "onnx", "litert", "s3"} <= extras(words), installs
    assert {"kedro-viz", "keras-hub", "tf-keras", "kedro-datasets"} <= names(words), installs
