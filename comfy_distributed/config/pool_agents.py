"""Workers given to the shared pool (``pool_agent``): what the config says that will not happen as written.

A worker with ``"pool_agent": true`` gets a pool agent beside it from the launcher, and a master with a pool leaves
it out of its direct participants (:attr:`.models.WorkerConfig.given_to_pool`). That needs a pool and a worker the
launcher starts on this machine; anywhere else the flag does nothing: the worker is launched and reached directly, as
without it. Since that silently differs from what the file asks, each case is a warning, said where the config's
other warnings are (``GET /multigpu/status``'s ``config_warnings``, the master's log at start, the launcher's
``status``). Whether a pool is configured is the caller's to say (``COMFY_DISTRIBUTED_POOL`` counts too, and the
config does not read the environment).
"""

from __future__ import annotations

from .models import GpuConfig
from .unknown_keys import worker_label


def pool_agent_warnings(config: GpuConfig, pool_configured: bool) -> list[str]:
    """One line per enabled worker whose ``pool_agent`` or ``pool_tags`` does nothing, saying why and what to do."""
    found = []
    for worker in config.enabled_workers():
        label = worker_label(worker)
        if worker.pool_tags and not worker.pool_agent:
            found.append(f"{label}: pool_tags are the tags of its pool agent, but it has no \"pool_agent\": true, "
                         "so they are ignored")
        if not worker.pool_agent:
            continue
        if worker.ssh is not None:
            found.append(f"{label}: pool_agent is for a worker the launcher starts on this machine; this one is "
                         f"started over SSH on {worker.ssh.host}, so no agent is started beside it and the master "
                         "reaches it directly. Run 'comfy-distributed agent' on that machine instead")
        elif not worker.given_to_pool:
            found.append(f"{label}: pool_agent is for a worker the launcher starts on this machine; this one's host "
                         f"is {worker.host}, so no agent is started beside it and the master reaches it directly. "
                         "Leave out its host (or make it 127.0.0.1) if it runs here")
        elif not pool_configured:
            found.append(f"{label}: pool_agent is set but no pool is configured (settings.pool or "
                         "COMFY_DISTRIBUTED_POOL), so no agent is started beside it and the master reaches it "
                         "directly")
    return found
