"""The README's logging config quiets the plugin's INFO lines (#30): a
fresh `kedro new` project has no conf/logging.yml, and the README's first
advice (one key under `loggers:`) made `kedro run` fail with "dictionary
doesn't specify a version"; the README now shows a whole file."""

from __future__ import annotations

import logging
import logging.config
import re
from pathlib import Path

import yaml

from kedro_keras.hooks import KerasHooks

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readmes_logging_config_quiets_our_info_lines_and_keeps_warnings(caplog):
    text = README.read_text()
    block = re.search(r"To quiet them.*?```yaml\n(.*?)```", text, re.S)
    assert block, "the README's logging config"
    config = yaml.safe_load(block.group(1))
    ours = logging.getLogger("kedro_keras")
    before = {name: logging.getLogger(name).level for name in ("kedro", "kedro_keras")}
    root_handlers = logging.getLogger().handlers[:]
    try:
        logging.config.dictConfig(config)  # as Kedro applies conf/logging.yml
        KerasHooks().after_context_created(context=None)  # the plugin's hook leaves a set level alone
        assert ours.getEffectiveLevel() == logging.WARNING
        assert not ours.isEnabledFor(logging.INFO) and ours.isEnabledFor(logging.WARNING)
    finally:
        for name, level in before.items():
            logging.getLogger(name).setLevel(level)
        logging.getLogger().handlers[:] = root_handlers
