"""The client of one configured worker: a prompt run to its end within a deadline, its files fetched."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING, Callable

import aiohttp

from ..config import Settings, WorkerConfig
from ..errors import WorkerError, WorkerExecutionFailed, WorkerProtocolError, WorkerTimeout
from .answers import OutputFile, PromptResult, history_error, size_text
from .comfy import ComfyClient, Limits
from .following import follow_websocket
from .preview_frames import PreviewSink
from .sessions import Channel

if TYPE_CHECKING:
    from .transport import WebSocket


MAX_FILES_PER_OUTPUT = 4096
"""Files one output node of one unit may list (frames of a long video included)."""


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
            channel.websocket = await self._open_websocket(self.session, channel.client_id, deadline, required=False)
        try:
            return await self._submit_and_follow(prompt, deadline, extra_data, on_progress, wanted, channel.usable(),
                                                 channel.client_id, previews)
        except WorkerProtocolError:
            await channel.close()  # it may be what went wrong (a flood, a message past its cap): opened anew next
            raise

    async def _submit_and_follow(self, prompt: dict, deadline: float, extra_data: dict | None,
                                 on_progress: Callable[[float, float], None] | None, wanted: frozenset[str],
                                 websocket: WebSocket | None, client_id: str,
                                 previews: PreviewSink | None = None) -> PromptResult:
        prompt_id = str(uuid.uuid4())
        try:
            # ComfyUI before 0.3.4x ignores a client-chosen prompt_id: follow the one it answers
            prompt_id = await self.submit(prompt, client_id, prompt_id, extra_data)
            if websocket is not None:
                outputs = await follow_websocket(websocket, self.name, prompt_id, deadline, on_progress, wanted,
                                                 previews)
                if outputs is not None:
                    return PromptResult(prompt_id, outputs, self.name)
            return await self._poll_history(prompt_id, deadline)
        except (asyncio.CancelledError, WorkerTimeout):
            await self._cancel_quietly(prompt_id)
            raise

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
