"""The pool agent the launcher starts beside a local worker given to the pool (``"pool_agent": true``).

With a pool configured (``settings.pool``, or ``COMFY_DISTRIBUTED_POOL`` in the launcher's environment), starting such
a worker starts ``comfy-distributed agent`` beside it, and stopping, restarting or watching the worker does the same
to its agent (:class:`.core.Launcher`). The agent is an instance of its own kind, ``agent``, so that ``status``,
``logs`` and a stop or restart by name find it:

- it is called as its worker with `` agent`` (``GPU 1 agent``); its key, ``agent-<worker key>`` (``agent-worker-1``),
  names its pid, log and lock files beside the worker's in the state folder (no worker's key begins so);
- it runs with the launcher's own Python (an agent needs this package and redis-py, not ComfyUI's environment),
  pointed at its worker's ComfyUI on this machine, named as the worker in the pool, with the worker's
  ``pool_tags``; the pool's URL goes in its environment (``COMFY_DISTRIBUTED_POOL``), never on its command line,
  since it may hold a password and anyone on the machine may read a process list.
"""

from __future__ import annotations

import os
import sys
import time

from ..config import PACKAGE_ROOT, PoolConfig, Settings
from ..errors import LaunchError, PoolError
from ..pool.settings import POOL_ENV, pool_config
from .discovery import probe_host
from .local import LocalProcesses
from .model import BOOTSTRAP, Instance, LaunchContext, Record
from .processes import spawn_detached, start_token

AGENT_PREFIX = "agent-"
AGENT = "agent"
"""The kind of an agent's :class:`~.model.Instance`."""


def agent_instance(worker: Instance) -> Instance:
    """The agent beside the worker instance ``worker``, whether or not its config asks for one."""
    assert worker.worker is not None
    address = f"http://{probe_host(worker.extra_args)}:{worker.port}"
    return Instance(f"{AGENT_PREFIX}{worker.key}", f"{worker.name} agent", f"{worker.field}.pool_agent", worker.port,
                    address, None, "", None, worker.enabled, AGENT, worker.worker)


def wants_agent(worker: Instance) -> bool:
    """Whether the config gives ``worker`` to the pool and the launcher starts it here (a pool aside)."""
    return worker.kind == "local" and worker.worker is not None and worker.worker.given_to_pool


def agents_pool(settings: Settings) -> PoolConfig | None:
    """The pool the agents join (:func:`..pool.settings.pool_config`); LaunchError for a malformed
    ``COMFY_DISTRIBUTED_POOL``."""
    try:
        return pool_config(settings)
    except PoolError as exc:
        raise LaunchError(f"{exc}: no pool agent can be started with it") from None


def agent_plan(agent: Instance, pool: PoolConfig) -> tuple[list[str], dict[str, str]]:
    """The agent's command line (``--option=value``: a name may begin with '-') and environment."""
    worker = agent.worker
    assert worker is not None
    command = [sys.executable, "-c", BOOTSTRAP, str(PACKAGE_ROOT), "agent", f"--comfyui={agent.url}",
               f"--name={worker.display_name}", f"--pool-name={pool.name}"]
    if worker.pool_tags:
        command.append(f"--tags={','.join(worker.pool_tags)}")
    return command, {**os.environ, "PYTHONUNBUFFERED": "1", POOL_ENV: pool.url}


def spawn_agent(local: LocalProcesses, context: LaunchContext, agent: Instance, pool: PoolConfig) -> Record:
    """Start the agent detached, its output in its log, and write its pid file."""
    command, env = agent_plan(agent, pool)
    log = local.log_path(agent.key)
    pid = spawn_detached(command, env, context.comfyui_root, log, f"start of {agent.label} for ComfyUI at {agent.url}")
    record = Record(pid, agent.port, time.time(), "local", start_token(pid), str(log),
                    f"{sys.executable} (the launcher's)")
    local.write(agent.key, record)
    return record
