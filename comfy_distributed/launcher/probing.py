"""Is an instance running? ``GET /system_stats`` tells ComfyUI from another program on its port."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from .model import PROBE_TIMEOUT, WINDOWS


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(slots=True)
class Probe:
    state: str
    """comfyui (answers GET /system_stats as ComfyUI), foreign (something else answers), closed."""
    stats: dict[str, Any] | None = None
    detail: str = ""


def probe(url: str, timeout: float = PROBE_TIMEOUT) -> Probe:
    """Ask ``url``'s ``GET /system_stats`` (no proxy: these are direct addresses)."""
    try:
        with _NO_PROXY.open(f"{url.rstrip('/')}/system_stats", timeout=timeout) as response:
            body = response.read(1_000_000)
    except urllib.error.HTTPError as exc:
        exc.close()
        return Probe("foreign", detail=f"it answers HTTP {exc.code} to GET /system_stats")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, (ConnectionRefusedError, FileNotFoundError)) or "refused" in str(reason).lower():
            return Probe("closed")
        if isinstance(reason, (TimeoutError, socket.timeout)) or "timed out" in str(reason).lower():
            return Probe("foreign", detail="it accepts connections but does not answer HTTP")
        return Probe("closed", detail=str(reason))
    try:
        stats = json.loads(body)
    except ValueError:
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
