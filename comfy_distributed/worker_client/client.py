"""The client of one configured worker: a prompt run to its end within a deadline, its files fetched."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING, Callable

import aiohttp

from ..config import Settings, WorkerConfig
from ..errors import WorkerError, WorkerExecutionFailed, WorkerFramesLost, WorkerProtocolError, WorkerTimeout
from .answers import MAX_FILES_PER_OUTPUT, OutputFile, PromptResult, history_error, size_text
from .comfy import ComfyClient, Limits
from .following import MAX_WORKER_MESSAGE, follow_websocket, next_event
from .image_frames import INLINE_TYPE, ImageFrames, with_frame_nodes
from .preview_frames import MAX_METADATA_BYTES, PreviewSink
from .sessions import Channel

if TYPE_CHECKING:
    from .transport import WebSocket


FEATURE_FLAGS = {"type": "feature_flags", "data": {"supports_preview_metadata": True}}
"""The first message on a socket that may carry a unit's images: ComfyUI then sends preview-hook images (the
sampler's previews, ``SaveImageWebsocket``'s images) as type-4 frames that name their prompt and node."""


FLAGS_WAIT = 2.0
"""Seconds to wait for the worker's own ``feature_flags`` answer (a ComfyUI without them never answers: its
units keep their files)."""


HISTORY_POLL_INTERVAL = (0.05, 0.5)
"""First and longest pause between ``/history`` polls (the pause doubles in between)."""


class WorkerClient(ComfyClient):
    """Talks to one worker of the config. Use as ``async with WorkerClient(worker, settings) as client``.

    A :class:`ComfyClient` whose address, headers and limits come from the worker and the
    settings, so every job, forward and health beat reaches a worker by the same rules.
    """

    def __init__(
        self,
        worker: WorkerConfig,
        settings: Settings,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        super().__init__(worker.base_url, name=worker.display_name, headers=worker.headers,
                         limits=Limits.from_settings(settings), session=session)
        self.worker = worker
        self.settings = settings
        self.frames_offered = False
        """Whether the worker has ``SaveImageWebsocket`` and the job's kind reads files with :meth:`fetch_files`
        (set by the runner): a unit's images then come on the job's socket (:mod:`.image_frames`)."""
        self._frames: dict[str, bytes] = {}
        """Images that came as frames, by the name of the file entry they are listed under."""

    async def fetch_files(self, files: list[OutputFile], deadline: float, expected: int | None = None) -> list[bytes]:
        """Each file's bytes, in order, within what one output may bring back.

        ``expected`` is how many files the unit should make (its batch). Files are not
        counted against it one for one (a video is one batch item of many frames): their
        bytes are, at most ``expected`` times the file cap in all.
        """
        if len(files) > MAX_FILES_PER_OUTPUT:
            raise WorkerProtocolError(self.name, f"reported {len(files)} files for one output, more than "
                                                 f"{MAX_FILES_PER_OUTPUT}; none fetched")
        budget = self.max_file_bytes * expected if expected else None
        blobs, total = [], 0
        for file in files:
            if file.type == INLINE_TYPE:
                blob = self._frames.pop(file.filename, None)
                if blob is None:
                    raise WorkerProtocolError(self.name, "an image listed as a websocket frame did not come as one")
                blobs.append(blob)
            else:
                blobs.append(await self.view(file, timeout=max(deadline - time.monotonic(), 0.001)))
            total += len(blobs[-1])
            if budget is not None and total > budget:
                raise WorkerProtocolError(self.name, f"GET /view: the files of one output pass {size_text(budget)} "
                                                     f"({expected} x the file cap); the rest is not fetched")
        return blobs

    async def run_prompt(self, prompt: dict, deadline: float, extra_data: dict | None = None,
                         on_progress: Callable[[float, float], None] | None = None,
                         wanted: frozenset[str] = frozenset(), channel: Channel | None = None,
                         previews: PreviewSink | None = None, unit: tuple[int, int] | None = None) -> PromptResult:
        """Submit ``prompt``, follow it until its ``wanted`` output nodes have reported (else until it
        ends), and return its outputs.

        ``deadline`` is a ``time.monotonic()`` instant covering queue wait and execution.
        The worker's ``/ws`` events say when the outputs are written; when the websocket cannot
        be opened or drops, ``/history`` is polled instead, so either way the wait is bounded.
        With a ``channel`` (and this client's session from :func:`.worker_session`, which refuses
        redirects), the job's websocket to this worker is reused rather than opened for this prompt.
        The prompt's preview frames (a worker started with a preview method) go to ``previews``.
        """
        if channel is None:
            client_id = f"multigpu-{uuid.uuid4().hex}"
            async with self._websocket(client_id, deadline, required=False) as websocket:
                return await self._submit_and_follow(prompt, deadline, extra_data, on_progress, wanted, websocket,
                                                     client_id, previews)
        if channel.usable() is None:
            channel.frames = False
            channel.max_message = max(MAX_WORKER_MESSAGE, self.max_file_bytes + MAX_METADATA_BYTES + 16) \
                if self.frames_offered else MAX_WORKER_MESSAGE
            channel.websocket = await self._open_websocket(self.session, channel.client_id, deadline, required=False,
                                                           max_message=channel.max_message)
            if channel.websocket is not None and self.frames_offered:
                channel.frames = await self._negotiate_frames(channel.websocket, deadline)
        try:
            return await self._submit_and_follow(prompt, deadline, extra_data, on_progress, wanted, channel.usable(),
                                                 channel.client_id, previews,
                                                 frames=self.frames_offered and channel.frames,
                                                 max_message=channel.max_message)
        except WorkerProtocolError:
            await channel.close()  # it may be what went wrong (a flood, a message past its cap): opened anew next
            raise

    async def _negotiate_frames(self, websocket: WebSocket, deadline: float) -> bool:
        """Announce :data:`FEATURE_FLAGS` as the socket's first message; whether the worker answered with its own
        (what it sends before that, its queue's status, is of no prompt of ours)."""
        try:
            await websocket.send_json(FEATURE_FLAGS)
        except (aiohttp.ClientError, ConnectionError, RuntimeError):
            return False
        until = min(deadline, time.monotonic() + FLAGS_WAIT)
        while True:
            event = await next_event(websocket, until)
            if event is None:
                return False
            if event.get("type") == "feature_flags":
                return True

    async def _submit_and_follow(self, prompt: dict, deadline: float, extra_data: dict | None,
                                 on_progress: Callable[[float, float], None] | None, wanted: frozenset[str],
                                 websocket: WebSocket | None, client_id: str,
                                 previews: PreviewSink | None = None, frames: bool = False,
                                 max_message: int = MAX_WORKER_MESSAGE) -> PromptResult:
        prompt_id = str(uuid.uuid4())
        images = None
        if websocket is not None and frames:
            prompt, nodes = with_frame_nodes(prompt, wanted)
            images = ImageFrames(self.name, prompt_id, nodes, self.max_file_bytes) if nodes else None
        try:
            # ComfyUI before 0.3.4x ignores a client-chosen prompt_id: follow the one it answers
            prompt_id = await self.submit(prompt, client_id, prompt_id, extra_data)
            if images is not None:
                images.prompt_id = prompt_id
            if websocket is not None:
                outputs = await follow_websocket(websocket, self.name, prompt_id, deadline, on_progress, wanted,
                                                 previews, images, max_message)
                if images is not None:
                    return await self._with_frames(prompt_id, outputs, images, deadline)
                if outputs is not None:
                    return PromptResult(prompt_id, outputs, self.name)
            return await self._poll_history(prompt_id, deadline)
        except (asyncio.CancelledError, WorkerTimeout):
            await self._cancel_quietly(prompt_id)
            raise

    async def _with_frames(self, prompt_id: str, outputs: dict[str, dict] | None, images: ImageFrames,
                           deadline: float) -> PromptResult:
        """The result of a prompt whose frame nodes sent their images on the socket: refused when the socket did
        not carry it to its end (a frame may be missing), the other outputs from ``/history`` when their events
        were not all read."""
        if not images.complete:
            await self._cancel_quietly(prompt_id)
            raise WorkerFramesLost(self.name, "GET /ws: the connection closed before the prompt's images all came; "
                                              "none are taken")
        images.check()
        if outputs is None:
            outputs = (await self._poll_history(prompt_id, deadline)).outputs
        return PromptResult(prompt_id, {**outputs, **images.outputs(self._frames)}, self.name)

    async def _poll_history(self, prompt_id: str, deadline: float) -> PromptResult:
        pause = HISTORY_POLL_INTERVAL[0]
        while True:
            entry = await self.history(prompt_id)
            if entry is not None:
                status = entry.get("status") or {}
                if status.get("status_str") == "error":
                    raise WorkerExecutionFailed(self.name, history_error(status))
                return PromptResult(prompt_id, entry.get("outputs") or {}, self.name)
            if time.monotonic() + pause > deadline:
                raise WorkerTimeout(self.name, "the prompt did not finish before the worker timeout")
            await asyncio.sleep(pause)
            pause = min(pause * 2, HISTORY_POLL_INTERVAL[1])

    async def _cancel_quietly(self, prompt_id: str) -> None:
        """Best effort: take our prompt off the worker so it does not keep the GPU busy."""
        try:
            await asyncio.wait_for(asyncio.shield(self._cancel(prompt_id)), timeout=self.limits.connect_timeout)
        except (WorkerError, asyncio.TimeoutError, asyncio.CancelledError):
            pass

    async def _cancel(self, prompt_id: str) -> None:
        await self.delete_queued([prompt_id])
        await self.interrupt(prompt_id)
