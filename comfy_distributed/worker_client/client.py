"""The client of one worker: every request bounded in time and size, a prompt run to its end."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, NoReturn

import aiohttp

from ..config import Settings, WorkerConfig
from ..errors import (
    WorkerError,
    WorkerExecutionFailed,
    WorkerProtocolError,
    WorkerRejected,
    WorkerTimeout,
    WorkerUnreachable,
)
from .answers import (
    MIB,
    OutputFile,
    PromptResult,
    clip_text,
    history_error,
    history_problem,
    json_or_none,
    node_errors,
    size_text,
    summarize_rejection,
)
from .following import follow_websocket
from .transport import Redirected, client_error_text, redirect_target, refuse_redirects, status_text


if TYPE_CHECKING:
    from .transport import WebSocket

log = logging.getLogger("comfy_distributed")



MAX_JSON_BYTES = 4 * MIB
"""Largest JSON answer read from a worker (queue, history, stats, a prompt's answer)."""



MAX_OBJECT_INFO_BYTES = 32 * MIB
"""``/object_info`` of a large install (thousands of node classes, long model lists) is the largest JSON."""



DEFAULT_MAX_FILE_BYTES = 256 * MIB
"""Largest output file read with ``/view`` when ``settings.max_file_mb`` is not set."""



MAX_FILES_PER_OUTPUT = 4096
"""Files one output node of one unit may list (frames of a long video included)."""



ERROR_BODY_LOGGED = 1024
"""Bytes of a worker's error answer written to the debug log (never into an error message)."""



HISTORY_POLL_INTERVAL = (0.05, 0.5)
"""First and longest pause between ``/history`` polls (the pause doubles in between)."""






class WorkerClient:
    """Talks to one worker. Use as ``async with WorkerClient(worker, settings) as client``."""

    def __init__(
        self,
        worker: WorkerConfig,
        settings: Settings,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.worker = worker
        self.name = worker.display_name
        self.base_url = worker.base_url
        self.settings = settings
        self._session = session
        self._owns_session = session is None

    async def __aenter__(self) -> "WorkerClient":
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("WorkerClient used outside 'async with'")
        return self._session

    @property
    def max_file_bytes(self) -> int:
        """The cap on one file read with ``/view`` (``settings.max_file_mb``, else the default)."""
        megabytes = getattr(self.settings, "max_file_mb", None)
        return int(megabytes * MIB) if isinstance(megabytes, (int, float)) and megabytes > 0 else DEFAULT_MAX_FILE_BYTES

    def _timeout(self, total: float | None = None) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(
            total=total if total is not None else self.settings.request_timeout,
            sock_connect=self.settings.connect_timeout,
        )

    def _convert(self, exc: BaseException, what: str) -> WorkerError:
        if isinstance(exc, asyncio.TimeoutError):
            return WorkerTimeout(self.name, f"{what}: no answer from {self.base_url} in time")
        if isinstance(exc, aiohttp.ClientConnectorError):
            return WorkerUnreachable(self.name, f"{what}: cannot connect to {self.base_url} ({exc.os_error or exc})")
        if isinstance(exc, aiohttp.ClientResponseError):
            return WorkerProtocolError(self.name, f"{what}: {status_text(exc.status)}")
        if isinstance(exc, aiohttp.ClientError):
            return WorkerUnreachable(self.name, f"{what}: connection to {self.base_url} failed "
                                                f"({client_error_text(exc)})")
        return WorkerProtocolError(self.name, f"{what}: {clip_text(exc, 200)}")

    async def _request(self, method: str, path: str, *, json_body: Any = None, params: dict | None = None,
                       timeout: float | None = None, expect_json: bool = True, data: Any = None,
                       limit: int = MAX_JSON_BYTES) -> Any:
        """The answer (parsed JSON, or bytes), read up to ``limit`` bytes; never follows a redirect."""
        what = f"{method} {path}"
        try:
            async with self.session.request(
                method, self.base_url + path, json=json_body, params=params, timeout=self._timeout(timeout),
                headers=self.worker.headers, data=data, allow_redirects=False,
            ) as response:
                body = await self._answer(response, what, path, limit)
        except WorkerError:
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
            raise self._convert(exc, what) from exc
        if not expect_json:
            return body
        parsed = json_or_none(body)
        if parsed is None:
            raise WorkerProtocolError(self.name, f"{what}: the answer is not JSON; is this a ComfyUI server?")
        return parsed

    async def _answer(self, response: aiohttp.ClientResponse, what: str, path: str, limit: int) -> bytes:
        """The body of a successful answer; a redirect, a rejection or an error status raised as ours."""
        if 300 <= response.status < 400:
            target = redirect_target(self.base_url + path, response.headers.get("Location"))
            raise WorkerProtocolError(self.name, f"{what}: redirected to {target}, not followed")
        if response.status == 400 and path == "/prompt":
            parsed = json_or_none(await self._read_capped(response, what, MAX_JSON_BYTES))
            raise WorkerRejected(self.name, summarize_rejection(parsed), node_errors(parsed))
        if response.status >= 400:
            await self._log_error_body(response, what)
            raise WorkerProtocolError(self.name, f"{what}: {status_text(response.status)}")
        return await self._read_capped(response, what, limit)

    async def _read_capped(self, response: aiohttp.ClientResponse, what: str, limit: int) -> bytes:
        """The body, refused as soon as it is known to pass ``limit`` bytes (its header says so, or it does)."""
        if response.content_length is not None and response.content_length > limit:
            self._too_large(response, what, limit)
        body = bytearray()
        async for chunk in response.content.iter_any():
            body += chunk
            if len(body) > limit:
                self._too_large(response, what, limit)
        return bytes(body)

    def _too_large(self, response: aiohttp.ClientResponse, what: str, limit: int) -> NoReturn:
        response.close()  # drop the connection: nothing more is read from it
        raise WorkerProtocolError(self.name, f"{what}: the answer is larger than the cap of {size_text(limit)}; "
                                             "refused, not read further")

    async def _log_error_body(self, response: aiohttp.ClientResponse, what: str) -> None:
        """The start of an error answer, for the debug log only: it is the worker's text, maybe anything."""
        if not log.isEnabledFor(logging.DEBUG):
            return
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, OSError):
            start = await response.content.read(ERROR_BODY_LOGGED)
            log.debug("Multi-GPU: worker %s: %s answered %s: %r", self.name, what, response.status, start)

    async def submit(self, prompt: dict, client_id: str, prompt_id: str, extra_data: dict | None = None) -> str:
        """Queue ``prompt`` with the worker's native ``POST /prompt``; returns the prompt id."""
        body: dict[str, Any] = {"prompt": prompt, "client_id": client_id, "prompt_id": prompt_id}
        if extra_data:
            body["extra_data"] = extra_data
        body = await self._request("POST", "/prompt", json_body=body)
        answered = body.get("prompt_id") if isinstance(body, dict) else None
        if not isinstance(answered, (str, int)) or isinstance(answered, bool) or not 0 < len(str(answered)) <= 256:
            raise WorkerProtocolError(self.name, "POST /prompt: the answer has no prompt_id")
        return str(answered)

    async def history(self, prompt_id: str) -> dict | None:
        """The prompt's history entry (None while it has none), checked to have ComfyUI's shape."""
        body = await self._request("GET", f"/history/{prompt_id}")
        if not isinstance(body, dict):
            raise WorkerProtocolError(self.name, "GET /history: the answer is not an object")
        if prompt_id not in body:
            return None
        entry = body[prompt_id]
        problem = history_problem(entry)
        if problem:
            raise WorkerProtocolError(self.name, f"GET /history: the entry of prompt {prompt_id} {problem}")
        return entry

    async def view(self, output: OutputFile, timeout: float | None = None) -> bytes:
        """The file's bytes exactly as the worker wrote them, up to :attr:`max_file_bytes`."""
        params = {"filename": output.filename, "subfolder": output.subfolder, "type": output.type}
        return await self._request("GET", "/view", params=params, timeout=timeout, expect_json=False,
                                   limit=self.max_file_bytes)

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

    async def interrupt(self, prompt_id: str | None = None) -> None:
        await self._request("POST", "/interrupt", json_body={"prompt_id": prompt_id} if prompt_id else {},
                            expect_json=False)

    async def delete_queued(self, prompt_ids: list[str]) -> None:
        await self._request("POST", "/queue", json_body={"delete": prompt_ids}, expect_json=False)

    async def free(self, unload_models: bool = True, free_memory: bool = True) -> None:
        await self._request("POST", "/free", json_body={"unload_models": unload_models, "free_memory": free_memory},
                            expect_json=False)

    async def system_stats(self) -> dict:
        return await self._request("GET", "/system_stats")

    async def object_info(self) -> dict:
        """Every node class the worker has, with its inputs and their allowed values (shape: see worker_prep)."""
        info = await self._request("GET", "/object_info", timeout=max(self.settings.request_timeout, 30.0),
                                   limit=MAX_OBJECT_INFO_BYTES)
        return info

    async def upload_input(self, path: Path, name: str, subfolder: str = "") -> dict:
        """Put a file into the worker's input folder (native ``POST /upload/image``).

        Without overwrite, ComfyUI keeps an identical file as it is and gives a file of the same
        name but other content a new name, which it returns.
        """
        form = aiohttp.FormData()
        form.add_field("image", path.read_bytes(), filename=name, content_type="application/octet-stream")
        form.add_field("type", "input")
        form.add_field("subfolder", subfolder)
        form.add_field("overwrite", "false")
        answer = await self._request("POST", "/upload/image", data=form)
        if not isinstance(answer, dict) or not isinstance(answer.get("name"), str) or not answer["name"] \
                or not isinstance(answer.get("subfolder", ""), (str, type(None))):
            raise WorkerProtocolError(self.name, "POST /upload/image: the answer has no name")
        return answer

    async def queue_info(self) -> dict:
        """ComfyUI's ``GET /prompt``: ``{"exec_info": {"queue_remaining": n}}``."""
        return await self._request("GET", "/prompt")

    async def run_prompt(self, prompt: dict, deadline: float, extra_data: dict | None = None,
                         on_progress: Callable[[float, float], None] | None = None) -> PromptResult:
        """Submit ``prompt``, follow it until it ends, and return its outputs.

        ``deadline`` is a ``time.monotonic()`` instant covering queue wait and execution.
        The worker's ``/ws`` events say when the prompt ends; when the websocket cannot be
        opened or drops, ``/history`` is polled instead, so either way the wait is bounded.
        """
        client_id = f"multigpu-{uuid.uuid4().hex}"
        prompt_id = str(uuid.uuid4())
        async with self._events(client_id, deadline) as websocket:
            try:
                # ComfyUI before 0.3.4x ignores a client-chosen prompt_id: follow the one it answers
                prompt_id = await self.submit(prompt, client_id, prompt_id, extra_data)
                if websocket is not None:
                    await follow_websocket(websocket, self.name, prompt_id, deadline, on_progress)
                return await self._poll_history(prompt_id, deadline)
            except (asyncio.CancelledError, WorkerTimeout):
                await self._cancel_quietly(prompt_id)
                raise

    @contextlib.asynccontextmanager
    async def _events(self, client_id: str, deadline: float) -> AsyncIterator[WebSocket | None]:
        """The worker's ``/ws`` for ``client_id`` (None: follow ``/history`` instead).

        It has a session of its own: ws_connect cannot be told not to follow redirects, but a
        session's trace hook can stop one, and its handshake is bounded by the deadline here.
        """
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.settings.connect_timeout)
        async with aiohttp.ClientSession(timeout=timeout, trace_configs=[refuse_redirects()]) as session:
            websocket = await self._open_websocket(session, client_id, deadline)
            try:
                yield websocket
            finally:
                if websocket is not None:
                    await websocket.close()

    async def _open_websocket(self, session: aiohttp.ClientSession, client_id: str,
                              deadline: float) -> WebSocket | None:
        what, url = "GET /ws", self.base_url + "/ws"
        # aiohttp's handshake waits up to the session's total (300 s by default): ours ends with the job's time
        bound = max(min(self.settings.connect_timeout, deadline - time.monotonic()), 0.001)
        try:
            return await asyncio.wait_for(session.ws_connect(
                url, params={"clientId": client_id}, timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
                heartbeat=30.0, autoping=True, headers=self.worker.headers,
            ), timeout=bound)
        except Redirected as exc:
            target = redirect_target(url, exc.location)
            raise WorkerProtocolError(self.name, f"{what}: redirected to {target}, not followed") from exc
        except aiohttp.ClientConnectorError as exc:
            raise self._convert(exc, what) from exc
        except asyncio.TimeoutError as exc:
            if time.monotonic() >= deadline:
                raise WorkerTimeout(self.name, f"{what}: no websocket handshake before the worker timeout") from exc
            log.debug("Multi-GPU: worker %s: no websocket handshake in %.1f s; polling /history", self.name, bound)
            return None
        except aiohttp.ClientError:
            return None  # e.g. a proxy without websocket support: fall back to polling history

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
            await asyncio.wait_for(asyncio.shield(self._cancel(prompt_id)), timeout=self.settings.connect_timeout)
        except (WorkerError, asyncio.TimeoutError, asyncio.CancelledError):
            pass

    async def _cancel(self, prompt_id: str) -> None:
        await self.delete_queued([prompt_id])
        await self.interrupt(prompt_id)
