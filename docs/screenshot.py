"""Take docs/img/kedro-viz-preview.png: the Kedro-Viz panel of the digits
example's classifier_model, with the preview kedro-keras gives it.

    make screenshot     # after `make demo`; needs chromium-headless-shell (Debian)

Starts `kedro viz run` in examples/digits, opens the model node in headless
Chromium, and keeps the right-hand panel (metadata and preview).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROJECT = REPO / "examples" / "digits"
OUT = REPO / "docs" / "img" / "kedro-viz-preview.png"
PORT = 4141
WIDTH, HEIGHT, PANEL_LEFT = 1600, 1000, 1165  # the panel is the right-hand 435 pixels


def main() -> int:
    browser = shutil.which("chromium-headless-shell") or shutil.which("chromium")
    if browser is None:
        sys.exit("needs chromium-headless-shell: apt-get install chromium-headless-shell")
    env = {
        **os.environ,
        "KEDRO_DISABLE_TELEMETRY": "1",
        "KERAS_BACKEND": "tensorflow",
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    viz = subprocess.Popen(
        [sys.executable, "-m", "kedro", "viz", "run", "--no-browser", "--port", str(PORT)],
        cwd=PROJECT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        node = wait_for_node("classifier_model")
        with tempfile.TemporaryDirectory() as scratch:
            full = Path(scratch) / "full.png"
            subprocess.run(
                [
                    browser,
                    "--no-sandbox",
                    "--disable-gpu",
                    "--hide-scrollbars",
                    f"--window-size={WIDTH},{HEIGHT}",
                    "--virtual-time-budget=15000",
                    f"--screenshot={full}",
                    f"http://127.0.0.1:{PORT}/?pid=__default__&sid={node}&sn={node}",
                ],
                check=True,
                capture_output=True,
                timeout=120,
            )
            from PIL import Image

            Image.open(full).crop((PANEL_LEFT, 0, WIDTH, HEIGHT)).save(OUT)
    finally:
        viz.terminate()
        viz.wait(timeout=30)
    print(f"wrote {OUT.relative_to(REPO)}")
    return 0


def wait_for_node(name: str) -> str:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/api/main", timeout=5) as answer:
                nodes = json.load(answer)["nodes"]
            return next(node["id"] for node in nodes if node["name"] == name)
        except (OSError, ValueError, StopIteration):
            time.sleep(1)
    sys.exit(f"Kedro-Viz did not show '{name}' within 2 minutes")


if __name__ == "__main__":
    sys.exit(main())
