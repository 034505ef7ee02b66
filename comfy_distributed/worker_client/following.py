"""Following a prompt on a worker's ``/ws``: which events end it, fail it or report its progress."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Callable

import aiohttp

from ..errors import WorkerExecutionFailed, WorkerTimeout
from .answers import clip_text, execution_error_text, json_or_none

if TYPE_CHECKING:
    from .transport import WebSocket

FINISH_GRACE = 2.0
"""Seconds to wait, after ``execution_success``, for the final ``executing`` event that
ComfyUI sends once the history entry is written."""


async def follow_websocket(websocket: WebSocket, name: str, prompt_id: str, deadline: float,
                           on_progress: Callable[[float, float], None] | None = None) -> None:
    """Return when the prompt has ended (or the socket closed); raise on error or deadline."""
    wait_until = deadline
    while True:
        event = await next_event(websocket, wait_until)
        if event is None:  # socket closed, or the grace after success ran out
            if wait_until < deadline:
                return
            if time.monotonic() >= deadline:
                raise WorkerTimeout(name, "the prompt did not finish before the worker timeout")
            return
        kind, data = event.get("type"), event.get("data") or {}
        if not isinstance(data, dict) or data.get("prompt_id") != prompt_id:
            continue
        if kind == "execution_error":
            raise WorkerExecutionFailed(name, execution_error_text(data))
        if kind == "execution_interrupted":
            raise WorkerExecutionFailed(name, f"the prompt was interrupted at node "
                                                   f"{clip_text(data.get('node_id'), 64)}")
        if kind == "progress" and on_progress is not None:
            value, maximum = data.get("value"), data.get("max")
            if isinstance(value, (int, float)) and isinstance(maximum, (int, float)):
                on_progress(float(value), float(maximum))
            continue
        if kind == "executing" and data.get("node") is None:
            return  # sent after the history entry is written
        if kind == "execution_success":
            wait_until = min(deadline, time.monotonic() + FINISH_GRACE)


async def next_event(websocket: WebSocket, until: float) -> dict | None:
    """The next JSON event, or None when the socket closed or ``until`` passed."""
    while True:
        remaining = until - time.monotonic()
        if remaining <= 0:
            return None
        try:
            message = await websocket.receive(timeout=remaining)
        except asyncio.TimeoutError:
            return None
        if message.type == aiohttp.WSMsgType.TEXT:
            parsed = json_or_none(message.data)
            if isinstance(parsed, dict):
                return parsed
        elif message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
                              aiohttp.WSMsgType.ERROR):
            return None
