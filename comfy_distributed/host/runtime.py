"""The extension as it runs inside a ComfyUI master: its host, its orchestrator and its queue balancer.

ComfyUI creates the nodes itself, so they find the running extension here. Set once by
``comfy.adapter.install``; outside ComfyUI (tests, scripts) there is none and the nodes pass
their inputs through.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .interface import DetachedHost, Host


@dataclass(slots=True, frozen=True)
class Extension:
    """The running extension's parts. The job owners are typed where they are taken (a node names the owner it
    asks, ``collector.orchestrator.Orchestrator`` or ``queue_mode.balancer.QueueBalancer``), so that this module
    stays below every folder whose nodes find them here."""

    host: Host
    orchestrator: Any
    balancer: Any


current: Extension | None = None
"""The running extension; None outside a ComfyUI master (or on a passive worker)."""

installed: Host | None = None
"""The host of the ComfyUI that loaded the extension, whatever its role (None outside ComfyUI)."""

DETACHED: Host = DetachedHost()


def host() -> Host:
    """The running extension's host, else that of the ComfyUI that loaded it, else the detached one."""
    if current is not None:
        return current.host
    return installed if installed is not None else DETACHED


def running() -> Extension:
    """The running extension, for a node that needs it (a prompt that carries a job it started)."""
    if current is None:
        raise RuntimeError("Multi-GPU: this prompt carries a distributed job, but the extension is not running here")
    return current
