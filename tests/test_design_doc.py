"""docs/design.md's layout is the one list of the package's modules (#28):
every module is on it, in its folder, and everything on it exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def listed_modules() -> set[str]:
    """The paths the Layout block names, from its indentation (two spaces a level)."""
    text = (ROOT / "docs" / "design.md").read_text()
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    folders: list[str] = []
    found = set()
    for line in block.splitlines():
        match = re.match(r"^( *)(\S+)", line)
        if not match:
            continue
        depth, name = len(match[1]) // 2, match[2]
        del folders[depth:]
        if name.endswith("/"):
            folders.append(name.rstrip("/"))
        elif name.endswith(".py"):
            found.add("/".join([*folders, name]))
    return found


def test_the_layout_lists_every_module_where_it_is():
    package = ROOT / "src"
    modules = {
        path.relative_to(package).as_posix()
        for path in package.rglob("*.py")
        if path.name != "__init__.py" or path.parent.name == "stores"  # stores/__init__ holds code
    }
    listed = listed_modules()
    assert {"kedro_keras/__init__.py", "kedro_keras/_dataset/base.py"} <= listed  # the parse works
    listed.discard("kedro_keras/__init__.py")
    assert sorted(modules - listed) == [], "modules docs/design.md does not list"
    assert sorted(listed - modules) == [], "modules docs/design.md lists that do not exist"
