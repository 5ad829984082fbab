"""An MkDocs hook: the 404 page's links relative, so that site/404.html opened
from the built folder (file://) loads its styles and scripts and its links
lead to the pages (#30).

MkDocs renders error pages with links from the server's root (`/assets/...`,
or under `site_url`'s path), so that a server can answer a missing URL at any
depth with them; opened as a file, `/assets/...` is the root of the disk. Our
site is made to be browsed from its folder (`use_directory_urls: false`), and
404.html sits at its top, beside index.html: there, links relative to the
page (`assets/...`, `index.html`) find the files. A site published with a
`site_url`, and `mkdocs serve`, keep MkDocs's own links.
"""

from __future__ import annotations

from typing import Any

_command: str | None = None


def on_startup(command: str, dirty: bool) -> None:
    global _command
    _command = command


def on_template_context(context: dict[str, Any], template_name: str, config: Any) -> dict[str, Any]:
    # The theme writes every link through MkDocs's `url` filter and its
    # `__config` script from `base_url`, both read here.
    if template_name == "404.html" and not config.site_url and _command != "serve":
        context["base_url"] = "."
    return context
