"""Project settings: the Kedro defaults, written out where this example relies on them.

See https://docs.kedro.org/en/stable/configure/configuration_basics/
"""

from kedro.config import OmegaConfigLoader

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    # conf/base is always read; conf/local is the default run environment and
    # `kedro run --env s3` reads conf/s3 instead of conf/local.
    "base_env": "base",
    "default_run_env": "local",
}
