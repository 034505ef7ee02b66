"""Following a prompt on an instance's ``/ws``: which events end it, fail it or report its progress (and, for
whoever watches, its preview frames: :mod:`.preview_frames`)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import aiohttp

from ..errors import WorkerExecutionFailed, WorkerTimeout, WorkerUnreachable
from .answers import clip_text, execution_error_text, json_or_none
from .preview_frames import PreviewSink, PromptPreviews

if TYPE_CHECKING:
    from .transport import WebSocket

FINISH_GRACE = 2.0
"""Seconds to wait, after ``execution_success``, for the final ``executing`` event that
ComfyUI sends once the history entry is written."""


async def follow_websocket(websocket: WebSocket, name: str, prompt_id: str, deadline: float,
                           on_progress: Callable[[float, float], None] | None = None,
                           wanted: frozenset[str] = frozenset(),
                           previews: PreviewSink | None = None) -> dict[str, dict[str, Any]] | None:
    """Follow the prompt until its ``wanted`` output nodes have reported their files, or until it ended.

    Returns those nodes' outputs (as ``executed`` events give them, the shape of ``/history``'s
    outputs) as soon as the last of them reports: the files are on the worker's disk then, while
    the worker still finishes the prompt (its history, and a garbage collection that can hold it
    for a fraction of a second). Returns None when the prompt ended (or the socket closed) first:
    ``/history`` tells the rest. Raises on an execution error or at the deadline. The prompt's preview
    frames go to ``previews`` while it wants them.
    """
    wait_until = deadline
    outputs: dict[str, dict[str, Any]] = {}
    watch = PromptPreviews(previews, prompt_id) if previews is not None else None
    while True:
        event = await next_event(websocket, wait_until, watch.read if watch is not None else None)
        if event is None:  # socket closed, or the grace after success ran out
            if wait_until >= deadline and time.monotonic() >= deadline:
                raise WorkerTimeout(name, "the prompt did not finish before the worker timeout")
            return None
        kind, data = event.get("type"), event.get("data") or {}
        if watch is not None and isinstance(data, dict):
            watch.saw(data)
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
        elif kind == "executed" and data.get("node") in wanted and isinstance(data.get("output"), dict):
            outputs[str(data["node"])] = data["output"]
            if len(outputs) == len(wanted):
                return outputs
        elif kind == "executing" and data.get("node") is None:
            return None  # sent after the history entry is written
        elif kind == "execution_success":
            wait_until = min(deadline, time.monotonic() + FINISH_GRACE)


async def next_event(websocket: WebSocket, until: float,
                     on_binary: Callable[[bytes], None] | None = None) -> dict | None:
    """The next JSON event, or None when the socket closed or ``until`` passed; binary messages read on the way
    go to ``on_binary`` (without it they are dropped)."""
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
        elif message.type == aiohttp.WSMsgType.BINARY:
            if on_binary is not None:
                on_binary(message.data)
        elif message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
                              aiohttp.WSMsgType.ERROR):
            return None


def finished(event: dict[str, Any], prompt_id: str) -> bool:
    """ComfyUI's last word on a prompt: ``executing`` with no node, sent once its history entry is written."""
    data = event.get("data")
    return (event.get("type") == "executing" and isinstance(data, dict) and data.get("node") is None
            and data.get("prompt_id") == prompt_id)


class EventStream:
    """An instance's ``/ws`` read as JSON events, for callers that show or record every one (the CLI, tests).

    The socket's end and the deadline are raised as ours, told apart: a caller says "it closed"
    and "it took too long" in its own words.
    """

    def __init__(self, websocket: WebSocket, name: str) -> None:
        self.websocket = websocket
        self.name = name

    async def next(self, deadline: float) -> dict[str, Any]:
        """The next event; WorkerTimeout once ``deadline`` passes, WorkerUnreachable when the socket closes."""
        event = await next_event(self.websocket, deadline)
        if event is not None:
            return event
        if time.monotonic() >= deadline:
            raise WorkerTimeout(self.name, "GET /ws: no end of the prompt before the deadline")
        raise WorkerUnreachable(self.name, "GET /ws: the connection closed before the prompt ended")


@dataclass(slots=True)
class Followed:
    """A prompt queued and followed to its end: what a benchmark times and a test inspects."""

    prompt_id: str
    seconds: float = 0.0
    """From just before ``POST /prompt`` to the event that ended the prompt."""
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    """Every event read, with its arrival in seconds after the POST (some may predate it)."""
