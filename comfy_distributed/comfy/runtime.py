"""The extension as it runs inside a ComfyUI master: its host, its orchestrator and its queue balancer.

ComfyUI creates the nodes itself, so they find the running extension here. Set once by
``comfy_adapter.install``; outside ComfyUI (tests, scripts) there is none and the nodes pass
their inputs through.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .host import DetachedHost, Host

if TYPE_CHECKING:
    from ..collector.orchestrator import Orchestrator
    from ..queue_mode.balancer import QueueBalancer


@dataclass(slots=True, frozen=True)
class Extension:
    host: Host
    orchestrator: Orchestrator
    balancer: QueueBalancer


current: Extension | None = None
"""The running extension; None outside a ComfyUI master (or on a passive worker)."""

DETACHED: Host = DetachedHost()


def host() -> Host:
    """The running extension's host, else the detached one."""
    return current.host if current is not None else DETACHED
