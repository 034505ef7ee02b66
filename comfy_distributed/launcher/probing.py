"""Is an instance running? ``GET /system_stats`` tells ComfyUI from another program on its port.

Asked through the package's one ComfyUI client (:func:`~comfy_distributed.worker_client.run_blocking`:
the launcher runs no event loop), so the probe follows no redirect, reads a capped answer and
uses no proxy from the environment (these are direct addresses).
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Any

from ..errors import WorkerAnswerTooLarge, WorkerError, WorkerRefused, WorkerTimeout
from ..worker_client import Limits, Reply, run_blocking
from .model import PROBE_TIMEOUT, WINDOWS


PROBE_BYTES = 1_000_000
"""Most bytes of a ``GET /system_stats`` answer read (ComfyUI's is a few hundred)."""


@dataclass(slots=True)
class Probe:
    state: str
    """comfyui (answers GET /system_stats as ComfyUI), foreign (something else answers), closed."""
    stats: dict[str, Any] | None = None
    detail: str = ""


def probe(url: str, timeout: float = PROBE_TIMEOUT) -> Probe:
    """Ask ``url``'s ``GET /system_stats`` what listens there."""
    limits = Limits(connect_timeout=timeout, request_timeout=timeout)
    try:
        reply = run_blocking(url, lambda client: client.reply("GET", "/system_stats", limit=PROBE_BYTES),
                             limits=limits)
    except WorkerRefused:
        return Probe("closed")
    except WorkerTimeout:
        return Probe("foreign", detail="it accepts connections but does not answer HTTP")
    except WorkerAnswerTooLarge:
        return Probe("foreign", detail="its GET /system_stats is not JSON")
    except WorkerError as exc:  # no such host, no route, a dropped connection
        return Probe("closed", detail=exc.message)
    return judge(reply)


def judge(reply: Reply) -> Probe:
    """Whether an answer to ``GET /system_stats`` is ComfyUI's (its system and its devices)."""
    if not 200 <= reply.status < 300:
        return Probe("foreign", detail=f"it answers HTTP {reply.status} to GET /system_stats")
    try:
        stats = json.loads(reply.body)
    except (ValueError, RecursionError):
        return Probe("foreign", detail="its GET /system_stats is not JSON")
    if isinstance(stats, dict) and isinstance(stats.get("system"), dict) and isinstance(stats.get("devices"), list):
        return Probe("comfyui", stats)
    return Probe("foreign", detail="its GET /system_stats is not ComfyUI's")


def port_in_use(address: str, port: int) -> bool:
    """Whether binding ``address:port`` fails the way ComfyUI's own bind would."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        if not WINDOWS:  # as asyncio does: a port in TIME_WAIT is free
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address.strip("[]"), port))
        except OSError as exc:
            return exc.errno in (98, 48, 10048, 10013)  # EADDRINUSE (Linux, macOS, Windows), WSAEACCES
    return False


def vram_text(stats: dict[str, Any] | None) -> str | None:
    try:
        device = (stats or {}).get("devices", [])[0]
        free, total = device["vram_free"], device["vram_total"]
        name = str(device.get("name", ""))[:24]
        memory = "RAM " if device.get("type") == "cpu" or name == "cpu" else ""  # a --cpu instance reports system RAM
        return f"{memory}{free / 2**30:.1f}/{total / 2**30:.1f} GiB {name}".strip()
    except (IndexError, KeyError, TypeError, AttributeError, ZeroDivisionError):
        return None
