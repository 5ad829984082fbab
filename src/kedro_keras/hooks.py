"""Kedro hooks that kedro-keras registers for every project it is installed in
(the ``kedro.hooks`` entry point, which Kedro loads unless the project's
``settings.py`` lists it in ``DISABLE_HOOKS_FOR_PLUGINS``).

Our one line per save, load, checkpoint and export is at INFO, and a project
made by ``kedro new`` logs only Kedro's and its own package's INFO records:
the root logger stays at WARNING. So when a session's context is created
(after the project's logging configuration is applied), the ``kedro_keras``
logger is put at INFO, unless that configuration gives it a level of its own
(``kedro_keras: {level: WARNING}`` quiets it).

Before a run, every export entry the pipeline writes or reads is asked what
this machine lacks for it (a package such as ``kedro-keras[onnx]``, a
backend that can write the format), so that a missing extra stops the run
before the training, not after it. Imports nothing of Keras, unless the run
is one of several processes (``KERAS_DISTRIBUTION_NUM_PROCESSES`` set above
1 by the launcher): then the processes are joined through
``keras.distribution.initialize()`` before any node runs, so the node only
chooses its layout (docs/processes.md).
"""

from __future__ import annotations

import logging
from typing import Any

from kedro.framework.hooks import hook_impl


class KerasHooks:
    @hook_impl
    def after_context_created(self, context: Any) -> None:
        logger = logging.getLogger("kedro_keras")
        if logger.level == logging.NOTSET:  # the project's logging config left it alone
            logger.setLevel(logging.INFO)

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        """An export entry whose format needs a package this machine lacks
        (onnx, litert) failed only when its node ran, after the training
        before it: say so before any node runs."""
        from kedro.io import DatasetError

        from kedro_keras._keras import processes
        from kedro_keras.keras_export_dataset import KerasExportDataset

        try:
            joined = processes.join_from_environment()
        except ValueError as exc:
            raise DatasetError(f"Before any node runs: {exc}") from None
        if joined > 1:
            logging.getLogger("kedro_keras").info(
                "This run is process %d of %d (keras.distribution): process 0 writes each save, or, for .orbax entries, each process its own shards",
                processes.process_index(),
                joined,
            )

        outputs = {name for node in pipeline.nodes for name in node.outputs}
        inputs = {name for node in pipeline.nodes for name in node.inputs}
        problems = []
        for name in sorted(outputs | inputs):
            dataset = catalog.get(name) if not name.startswith("params:") and name != "parameters" else None
            if isinstance(dataset, KerasExportDataset):
                lacks = dataset.lacks_for_run(saves=name in outputs, loads=name in inputs)
                if lacks:
                    problems.append(f"'{name}': {lacks}")
        if problems:
            raise DatasetError(
                "Before any node runs: this run cannot write or read these export entries: "
                + "; ".join(problems)
            )


hooks = KerasHooks()
