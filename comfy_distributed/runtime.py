"""Process-wide state of the extension inside a running ComfyUI master.

Set once by the ComfyUI entry point (``comfy_adapter.install``); the defaults make the
nodes pass-through when the package is used outside ComfyUI (tests, scripts).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .orchestrator import Orchestrator
    from .queue_balancer import QueueBalancer
    from .worker_client import OutputFile

orchestrator: "Orchestrator | None" = None
balancer: "QueueBalancer | None" = None


def _never() -> bool:
    return False


def _no_op() -> None:
    return None


def _log_only(event: str, data: dict[str, Any]) -> None:
    return None


interrupted: Callable[[], bool] = _never
"""Whether the user cancelled the running prompt on the master."""

raise_if_interrupted: Callable[[], None] = _no_op
"""Raises ComfyUI's own interrupt exception so a cancel is shown as a cancel, not an error."""

notify: Callable[[str, dict[str, Any]], None] = _log_only
"""Sends an event to the master's UI clients."""


def _cannot_save(file: "OutputFile", data: bytes, worker_tag: str) -> dict[str, str]:
    raise RuntimeError("Multi-GPU: saving files needs a running ComfyUI")


save_output: Callable[["OutputFile", bytes, str], dict[str, str]] = _cannot_save
"""Saves a file a worker made into the master's output or temp folder; returns its /view reference."""
