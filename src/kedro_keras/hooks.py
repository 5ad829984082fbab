"""Kedro hooks that kedro-keras registers for every project it is installed in
(the ``kedro.hooks`` entry point, which Kedro loads unless the project's
``settings.py`` lists it in ``DISABLE_HOOKS_FOR_PLUGINS``).

Our one line per save, load, checkpoint and export is at INFO, and a project
made by ``kedro new`` logs only Kedro's and its own package's INFO records:
the root logger stays at WARNING. So when a session's context is created
(after the project's logging configuration is applied), the ``kedro_keras``
logger is put at INFO, unless that configuration gives it a level of its own
(``kedro_keras: {level: WARNING}`` quiets it). Imports nothing of Keras.
"""

from __future__ import annotations

import logging
from typing import Any

from kedro.framework.hooks import hook_impl


class KerasLoggingHooks:
    @hook_impl
    def after_context_created(self, context: Any) -> None:
        logger = logging.getLogger("kedro_keras")
        if logger.level == logging.NOTSET:  # the project's logging config left it alone
            logger.setLevel(logging.INFO)


hooks = KerasLoggingHooks()
