"""Whether the ComfyUI that loaded this extension is the master or one of its workers.

Local workers share the master's ``custom_nodes`` folder, so they load the extension too. Only the
master distributes: on a worker the extension stays passive (its nodes are registered, nothing
else: no health monitor, no heartbeats, no ``/multigpu`` routes, no prompt hook).

The launcher says which one it starts in ``COMFY_DISTRIBUTED_ROLE`` (``master`` or ``worker``);
an instance started by hand is a worker when its port is a local worker's port of the config and
not the master's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from ..config import GpuConfig, WorkerConfig
from ..config.models import ROLE_ENV

ROLES = ("master", "worker")


@dataclass(frozen=True, slots=True)
class Role:
    is_master: bool
    reason: str
    """Why, for the log line: the environment variable, or the port matched."""
    worker: WorkerConfig | None = None


def decide_role(config: GpuConfig | None, port: int | None, env: Mapping[str, str]) -> Role:
    """The role of a ComfyUI listening on ``port``; ``config`` is None when the file cannot be read."""
    named = env.get(ROLE_ENV, "").strip().lower()
    if named == "master":
        return Role(True, f"{ROLE_ENV}=master")
    if named == "worker":
        worker = None
        if config is not None and port is not None:
            worker = next((w for w in config.workers if w.port == port and w.on_this_machine), None)
        return Role(False, f"{ROLE_ENV}=worker", worker)
    if config is None or port is None or port == config.master.port:
        return Role(True, "its port is the master's" if config is not None and port is not None else "default")
    worker = next((w for w in config.workers if w.port == port and w.on_this_machine), None)
    if worker is not None:
        return Role(False, f"its port {port} is worker {worker.id}'s in the config, not the master's "
                           f"({config.master.port})", worker)
    return Role(True, f"port {port} is no local worker's in the config")


def passive_line(role: Role, config_path: object, port: int | None) -> str:
    """The one line a worker logs instead of starting the master's machinery."""
    who = f"worker {role.worker.id} ({role.worker.display_name})" if role.worker is not None else "a worker"
    return (f"Multi-GPU: this ComfyUI (port {port}) is {who} of {config_path} ({role.reason}): the extension stays "
            "passive here (no health checks, heartbeats or /multigpu routes); the master distributes the work")
