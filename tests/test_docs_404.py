"""The documentation site's 404 page works from the built folder (#30):
`make docs` leaves site/ to be opened from file://, and MkDocs wrote the 404
page's links from the server's root (/assets/..., /index.html), which from a
file are the root of the disk: no styles, no scripts, no page behind a link.
docs/hooks/relative_404.py makes them relative; the site is built here as
`make docs` builds it (a few seconds), into a temporary folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

REPO = Path(__file__).resolve().parents[1]

# The docs extra (mkdocs-material, mkdocstrings) is in the TensorFlow venv
# only: the Makefile's other runs leave this file out (DATASET_SUITE).


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(folder)],
        cwd=REPO,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return folder


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.config: str = ""
        self._in_config = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.links += [value for name, value in attrs if name in ("href", "src") and value is not None]
        self._in_config = tag == "script" and ("id", "__config") in attrs

    def handle_data(self, data: str) -> None:
        if self._in_config:
            self.config += data

    def handle_endtag(self, tag: str) -> None:
        self._in_config = False


def local_links(page: Path) -> tuple[list[str], dict]:
    parser = _Links()
    parser.feed(page.read_text(encoding="utf-8"))
    links = [link for link in parser.links if not urlsplit(link).scheme and not link.startswith("//")]
    return links, json.loads(parser.config)


def test_every_link_of_the_404_page_resolves_from_the_built_folder(site):
    page = site / "404.html"
    links, config = local_links(page)
    stylesheets = [link for link in links if link.endswith(".css")]
    assert any("assets/stylesheets/main." in link for link in stylesheets), links  # the theme's styles
    assert any(link.endswith("css/extra.css") for link in stylesheets), links
    assert any(link.endswith(".js") for link in links) and any(link.endswith("index.html") for link in links)
    absolute = [link for link in links if link.startswith("/")]
    assert not absolute, f"links from the disk's root, broken from file://: {absolute}"
    missing = [
        link
        for link in links
        if urlsplit(link).path and not (page.parent / unquote(urlsplit(link).path)).exists()
    ]
    assert not missing, f"404.html links to files the site does not have: {missing}"
    # The theme's scripts find the search worker and the pages from its config.
    assert config["base"] == "."
    assert (page.parent / config["base"] / config["search"]).is_file(), config["search"]


def test_the_other_pages_keep_their_links(site):
    """The hook changes the 404 page only: a page's links were already relative."""
    links, config = local_links(site / "index.html")
    assert config["base"] == "." and "assets/javascripts/bundle" in " ".join(links)
    assert not [link for link in links if link.startswith("/")]
