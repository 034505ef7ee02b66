"""Keys of ``gpu_config.json`` that no part of the schema knows: kept in the file, but reported.

A misspelled key (``"enabeld": false``) is not an error, since the file may hold keys of another tool
or of a later version, but it silently does nothing: the field it meant keeps its default. So every
unknown key is named where it is, with the known key it is nearest to (:mod:`difflib`), or the level
it belongs to when it is a known key in the wrong place (``worker_timeout`` in ``master``). Keys that
begin with ``_`` (``"_comment"``) are notes and not reported.
"""

from __future__ import annotations

import difflib

from pydantic import BaseModel

from .models import GpuConfig, MasterConfig, Settings, SshConfig, WorkerConfig

NOTE_PREFIX = "_"
"""Keys that begin with it are the user's notes: kept and never reported."""

LEVELS: dict[str, type[BaseModel]] = {
    "the top level": GpuConfig, "master": MasterConfig, "a worker": WorkerConfig, "settings": Settings,
    "a worker's ssh block": SshConfig,
}
"""Each level of the file with its model, by the name a message gives it."""

MAX_WARNINGS = 20
"""Unknown keys named one by one; past them, one line says how many more there are."""
MAX_KEY_SHOWN = 64
"""Characters of an unknown key shown (a key may be as long as the file)."""


def worker_label(worker: WorkerConfig) -> str:
    """How a message names a worker: by its id and name, as the user wrote them (never its place in the list)."""
    return f"worker {worker.id} ({worker.name})" if worker.name else f"worker {worker.id}"


def unknown_key_warnings(config: GpuConfig) -> list[str]:
    """One line per unknown key of ``config``, in file order, each saying where it is and what it may mean.

    ``worker 2 (GPU 1): unknown key 'enabeld' (did you mean 'enabled'?) is ignored``. The keys are those
    the models kept (``extra="allow"``), so this works on any loaded or validated config.
    """
    found = _unknown(config, "top level", GpuConfig)
    found += _unknown(config.master, "master", MasterConfig)
    for worker in config.workers:
        found += _unknown(worker, worker_label(worker), WorkerConfig)
        if worker.ssh is not None:
            found += _unknown(worker.ssh, f"{worker_label(worker)}, ssh", SshConfig)
    found += _unknown(config.settings, "settings", Settings)
    if len(found) > MAX_WARNINGS:
        found[MAX_WARNINGS:] = [f"... and {len(found) - MAX_WARNINGS} more unknown keys"]
    return found


def _unknown(model: BaseModel, where: str, kind: type[BaseModel]) -> list[str]:
    extra = model.model_extra or {}
    return [f"{where}: unknown key {_shown(key)}{_hint(key, kind)} is ignored"
            for key in extra if not key.startswith(NOTE_PREFIX)]


def _shown(key: str) -> str:
    return repr(key) if len(key) <= MAX_KEY_SHOWN else repr(key[:MAX_KEY_SHOWN]) + "..."


def _hint(key: str, kind: type[BaseModel]) -> str:
    """`` (did you mean 'enabled'?)``, `` (it is a key of settings)``, or nothing."""
    homes = [level for level, model in LEVELS.items() if model is not kind and key in model.model_fields]
    if homes:
        return f" (it is a key of {' or '.join(homes)})"
    lowered, known = key.lower(), list(kind.model_fields)
    close = difflib.get_close_matches(lowered, known, n=1)
    if not close and len(lowered) >= 3:  # a shortened key: 'cuda' for 'cuda_device'
        close = [name for name in known if name.startswith(lowered)][:1]
    return f" (did you mean {close[0]!r}?)" if close else ""
