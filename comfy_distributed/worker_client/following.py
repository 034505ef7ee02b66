"""Following a prompt on an instance's ``/ws``: which events end it, fail it or report its progress (and, for
whoever watches, its preview frames: :mod:`.preview_frames`), and how much a worker may send meanwhile."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import aiohttp

from ..errors import WorkerAnswerTooLarge, WorkerExecutionFailed, WorkerProtocolError, WorkerTimeout, WorkerUnreachable
from .answers import MIB, clip_text, execution_error_text, json_or_none, size_text
from .image_frames import ImageFrames
from .preview_frames import MAX_PREVIEW_BYTES, PreviewSink, PromptPreviews

if TYPE_CHECKING:
    from .transport import WebSocket

FINISH_GRACE = 2.0
"""Seconds to wait, after ``execution_success``, for the final ``executing`` event that
ComfyUI sends once the history entry is written."""

MAX_WORKER_MESSAGE = MAX_PREVIEW_BYTES + 1
"""The ``max_msg_size`` of a worker's ``/ws``: aiohttp refuses a message this large from its frame header (or
while inflating it), before holding it. aiohttp has one cap for both kinds: it fits the largest preview frame,
and :data:`MAX_EVENT_TEXT` holds text to far less."""

MAX_EVENT_TEXT = 256 * 1024
"""Largest text message (one JSON event) parsed from a worker. ComfyUI's are small (an ``executed`` that lists
many images is tens of KiB); a larger one fails the worker unparsed. Counted in characters: ComfyUI's JSON is
ASCII."""

FOLLOW_BURST = 64 * MIB
FOLLOW_RATE = 4 * MIB
"""What a worker may send on ``/ws`` while one prompt is followed: :data:`FOLLOW_BURST` at once, then
:data:`FOLLOW_RATE` bytes a second on average (its events and preview frames, ComfyUI's at their largest, take
a fraction of that). Past it, the worker is flooding the master's event loop: it fails, its unit runs elsewhere."""

UNREAD_EVENTS = ('{"type": "progress_state"',)
"""Text events never used while following a prompt, known by how ComfyUI's ``send_json`` starts them (``json.dumps``
of ``{"type": ..., "data": ...}``) and dropped unparsed, after the :class:`FrameGuard` counted them.
``progress_state`` (ComfyUI 0.3.6x: every node's state, sent again with each progress step of each node) is the most
frequent text a worker sends, and parsing it was a large part of the master's CPU per unit."""

MESSAGE_FLOOR = 1024
"""Each message counts at least this much: a flood of tiny messages costs the loop per message, not per byte."""


class FrameGuard:
    """The caps on what one worker sends while one of its prompts is followed (see :data:`FOLLOW_BURST`).

    A worker is untrusted, and every message it sends is read on the master's event loop: without a
    bound, one could keep that loop parsing for as long as the worker timeout allows.
    """

    def __init__(self, name: str, burst: int = FOLLOW_BURST, rate: int = FOLLOW_RATE,
                 max_message: int = MAX_WORKER_MESSAGE) -> None:
        self.name = name
        self.max_message = max_message
        self.burst = burst
        self.rate = rate
        self.started = time.monotonic()
        self.used = 0

    def text(self, data: str) -> None:
        """Before a text message is parsed: refused when it is too large, else counted."""
        if len(data) > MAX_EVENT_TEXT:
            raise WorkerAnswerTooLarge(self.name, f"GET /ws: a text message of {len(data) / MIB:.1f} MiB, more "
                                                  f"than the cap of {size_text(MAX_EVENT_TEXT)}; refused unparsed",
                                       MAX_EVENT_TEXT)
        self._count(len(data))

    def binary(self, data: bytes) -> None:
        self._count(len(data))

    def too_large(self) -> WorkerAnswerTooLarge:
        """aiohttp refused a message past the socket's cap (:data:`MAX_WORKER_MESSAGE`, or with images as frames
        the file cap: :mod:`.image_frames`) and closed the socket."""
        return WorkerAnswerTooLarge(self.name, f"GET /ws: a message larger than the cap of "
                                               f"{size_text(self.max_message - 1)}; refused unread",
                                    self.max_message - 1)

    def _count(self, size: int) -> None:
        self.used += max(size, MESSAGE_FLOOR)
        elapsed = time.monotonic() - self.started
        if self.used > self.burst + self.rate * elapsed:
            raise WorkerProtocolError(self.name, f"GET /ws: {self.used / MIB:.1f} MiB of messages in {elapsed:.1f} s "
                                                 f"while one prompt ran, past the budget of {size_text(self.burst)} "
                                                 f"plus {size_text(self.rate)} a second; the worker floods the master")


async def follow_websocket(websocket: WebSocket, name: str, prompt_id: str, deadline: float,
                           on_progress: Callable[[float, float], None] | None = None,
                           wanted: frozenset[str] = frozenset(),
                           previews: PreviewSink | None = None,
                           frames: ImageFrames | None = None,
                           max_message: int = MAX_WORKER_MESSAGE) -> dict[str, dict[str, Any]] | None:
    """Follow the prompt until its ``wanted`` output nodes have reported their files, or until it ended.

    Returns those nodes' outputs (as ``executed`` events give them, the shape of ``/history``'s
    outputs) as soon as the last of them reports: the files are on the worker's disk then, while
    the worker still finishes the prompt (its history, and a garbage collection that can hold it
    for a fraction of a second). Returns None when the prompt ended (or the socket closed) first:
    ``/history`` tells the rest. Raises on an execution error, at the deadline, and when the worker sends more
    than a :class:`FrameGuard` allows. The prompt's preview frames go to ``previews`` while it wants them.

    ``frames``: the wanted nodes that send their images on the socket (no ``executed``): their frames are kept
    there, and they are done when the prompt succeeded (``frames.complete``), which ComfyUI says after the last.
    """
    wait_until = deadline
    outputs: dict[str, dict[str, Any]] = {}
    watch = PromptPreviews(previews, prompt_id) if previews is not None else None
    guard = FrameGuard(name, max_message=max_message)
    if frames is not None:
        wanted = wanted - frames.nodes
    while True:
        event = await next_event(websocket, wait_until, watch.read if watch is not None else None, guard,
                                 UNREAD_EVENTS, frames.take if frames is not None else None)
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
        if kind == "progress" and frames is not None and frames.progress(data.get("node"), data.get("max")):
            continue  # a frame node's count of images, not the unit's progress
        if kind == "progress" and on_progress is not None:
            value, maximum = data.get("value"), data.get("max")
            if isinstance(value, (int, float)) and isinstance(maximum, (int, float)):
                on_progress(float(value), float(maximum))
        elif kind == "executed" and data.get("node") in wanted and isinstance(data.get("output"), dict):
            outputs[str(data["node"])] = data["output"]
            if len(outputs) == len(wanted) and frames is None:
                return outputs
        elif kind == "executing" and data.get("node") is None:
            if frames is not None:
                frames.complete = True
            return None  # sent after the history entry is written
        elif kind == "execution_success":
            if frames is not None:
                frames.complete = True  # every frame of the prompt came before this
                if len(outputs) == len(wanted):
                    return outputs
            wait_until = min(deadline, time.monotonic() + FINISH_GRACE)


async def next_event(websocket: WebSocket, until: float, on_binary: Callable[[bytes], None] | None = None,
                     guard: FrameGuard | None = None, unread: tuple[str, ...] = (),
                     take: Callable[[bytes], bool] | None = None) -> dict | None:
    """The next JSON event, or None when the socket closed or ``until`` passed; binary messages read on the way
    go to ``on_binary`` (without it they are dropped). With a ``guard`` (a worker's socket), every message is
    measured against it first, and a message aiohttp refused as too large is raised, not taken for a close.
    Text that starts with one of ``unread`` is dropped unparsed (:data:`UNREAD_EVENTS`). A binary message that
    ``take`` keeps (an image of the prompt, :class:`.image_frames.ImageFrames`, held to caps of its own) is not
    counted by the guard."""
    while True:
        remaining = until - time.monotonic()
        if remaining <= 0:
            return None
        try:
            message = await websocket.receive(timeout=remaining)
        except asyncio.TimeoutError:
            return None
        if message.type == aiohttp.WSMsgType.TEXT:
            if guard is not None:
                guard.text(message.data)
            if unread and message.data.startswith(unread):
                continue
            parsed = json_or_none(message.data)
            if isinstance(parsed, dict):
                return parsed
        elif message.type == aiohttp.WSMsgType.BINARY:
            if take is not None and take(message.data):
                continue
            if guard is not None:
                guard.binary(message.data)
            if on_binary is not None:
                on_binary(message.data)
        elif guard is not None and _too_big(message):
            raise guard.too_large()
        elif message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
                              aiohttp.WSMsgType.ERROR):
            return None


def _too_big(message: Any) -> bool:
    """A message aiohttp made of a frame past the socket's ``max_msg_size`` (it closed the socket then)."""
    return (message.type == aiohttp.WSMsgType.ERROR and isinstance(message.data, aiohttp.WebSocketError)
            and message.data.code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG)


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
