"""Typed model of ``gpu_config.json``: validation that names the bad field, atomic saves.

The schema is the original README's (master, workers, settings) with ``host`` optional per worker.
Keys we do not know are kept (``extra="allow"``) so a round trip never loses what a user
or another tool wrote, and reported with the known key they are nearest to (:mod:`.unknown_keys`),
since a misspelled key silently does nothing. A file that does not validate is reported and never replaced by
defaults.

:mod:`.models` holds the model, :mod:`.files` reading, saving and the shared :class:`ConfigStore`,
:mod:`.unknown_keys` the warnings about keys the model does not know, :mod:`.pool` ``settings.pool`` (the shared
pool's Redis URL, shown only without its password), :mod:`.pool_agents` the warnings about workers given to the pool
(``pool_agent``) where that does nothing.
"""

from ..errors import ConfigError
from .files import (
    ConfigStore,
    config_path,
    format_validation_error,
    load_config,
    parse_config,
    save_config,
    set_api_token,
)
from .models import (
    CONFIG_ENV,
    DEFAULT_CONFIG_PATH,
    FILE_ONLY_SETTINGS,
    MAX_CONFIG_BYTES,
    PACKAGE_ROOT,
    REDACTED,
    SECRET_SETTINGS,
    GpuConfig,
    MasterConfig,
    Settings,
    SshConfig,
    WorkerConfig,
    public_view,
    settings_form,
)
from .pool import PoolConfig, redacted_url
from .pool_agents import pool_agent_warnings
from .unknown_keys import unknown_key_warnings, worker_label

__all__ = [
    "CONFIG_ENV", "DEFAULT_CONFIG_PATH", "FILE_ONLY_SETTINGS", "MAX_CONFIG_BYTES", "PACKAGE_ROOT", "REDACTED",
    "SECRET_SETTINGS", "ConfigError", "ConfigStore", "GpuConfig", "MasterConfig", "PoolConfig", "Settings", "SshConfig",
    "WorkerConfig", "config_path", "format_validation_error", "load_config", "parse_config", "pool_agent_warnings",
    "public_view", "redacted_url", "save_config", "set_api_token", "settings_form", "unknown_key_warnings",
    "worker_label",
]
