"""One remote ComfyUI, reached only through its native HTTP + websocket API.

Every aiohttp error, timeout and unexpected answer is converted here, at the edge, into
the :mod:`errors` hierarchy, so callers handle one kind of failure per cause.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import aiohttp

from .config import Settings, WorkerConfig
from .errors import (
    WorkerError,
    WorkerExecutionFailed,
    WorkerProtocolError,
    WorkerRejected,
    WorkerTimeout,
    WorkerUnreachable,
)

HISTORY_POLL_INTERVAL = (0.05, 0.5)
"""First and longest pause between ``/history`` polls (the pause doubles in between)."""

FINISH_GRACE = 2.0
"""Seconds to wait, after ``execution_success``, for the final ``executing`` event that
ComfyUI sends once the history entry is written."""


@dataclass(slots=True, frozen=True)
class OutputFile:
    """A file a worker wrote, as ComfyUI names it in ``executed`` events and history."""

    filename: str
    subfolder: str
    type: str


@dataclass(slots=True)
class PromptResult:
    prompt_id: str
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def images(self, node_id: str) -> list[OutputFile]:
        return self.files(node_id, "images")

    def files(self, node_id: str, key: str) -> list[OutputFile]:
        """The files an output node reported under ``key`` (images, latents, audio)."""
        entries = self.outputs.get(node_id, {}).get(key, [])
        return [OutputFile(e["filename"], e.get("subfolder", ""), e.get("type", "output"))
                for e in entries if isinstance(e, dict) and "filename" in e]


def summarize_rejection(body: Any) -> str:
    """A readable sentence from ComfyUI's 400 body: the error, then each node's errors."""
    if not isinstance(body, dict):
        return "the prompt was rejected"
    parts = []
    error = body.get("error")
    if isinstance(error, dict):
        parts.append(str(error.get("message") or error.get("type") or "rejected").rstrip("."))
        if error.get("details"):
            parts.append(str(error["details"]))
    elif error:
        parts.append(str(error))
    node_errors = body.get("node_errors") or {}
    if isinstance(node_errors, dict):
        for node_id, info in node_errors.items():
            if not isinstance(info, dict):
                continue
            messages = "; ".join(
                f"{e.get('message', '')}: {e.get('details', '')}".strip(": ")
                for e in info.get("errors", [])
                if isinstance(e, dict)
            )
            parts.append(f"node {node_id} ({info.get('class_type', '?')}): {messages}")
    return " - ".join(p for p in parts if p) or "the prompt was rejected"


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
            return WorkerProtocolError(self.name, f"{what}: HTTP {exc.status} {exc.message}")
        if isinstance(exc, aiohttp.ClientError):
            return WorkerUnreachable(self.name, f"{what}: connection to {self.base_url} failed ({exc})")
        return WorkerProtocolError(self.name, f"{what}: {exc}")

    async def _request(self, method: str, path: str, *, json_body: Any = None, params: dict | None = None,
                       timeout: float | None = None, expect_json: bool = True, data: Any = None) -> Any:
        what = f"{method} {path}"
        try:
            async with self.session.request(
                method, self.base_url + path, json=json_body, params=params, timeout=self._timeout(timeout),
                headers=self.worker.headers, data=data,
            ) as response:
                body = await response.read()
                if response.status == 400 and path == "/prompt":
                    raise WorkerRejected(self.name, summarize_rejection(_json_or_none(body)), _node_errors(body))
                if response.status >= 400:
                    raise WorkerProtocolError(
                        self.name, f"{what}: HTTP {response.status} {body[:200].decode('utf-8', 'replace')}"
                    )
                if not expect_json:
                    return body
                parsed = _json_or_none(body)
                if parsed is None:
                    raise WorkerProtocolError(self.name, f"{what}: the answer is not JSON; is this a ComfyUI server?")
                return parsed
        except WorkerError:
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
            raise self._convert(exc, what) from exc

    async def submit(self, prompt: dict, client_id: str, prompt_id: str, extra_data: dict | None = None) -> str:
        """Queue ``prompt`` with the worker's native ``POST /prompt``; returns the prompt id."""
        body: dict[str, Any] = {"prompt": prompt, "client_id": client_id, "prompt_id": prompt_id}
        if extra_data:
            body["extra_data"] = extra_data
        body = await self._request("POST", "/prompt", json_body=body)
        if not isinstance(body, dict) or "prompt_id" not in body:
            raise WorkerProtocolError(self.name, "POST /prompt: the answer has no prompt_id")
        return str(body["prompt_id"])

    async def history(self, prompt_id: str) -> dict | None:
        body = await self._request("GET", f"/history/{prompt_id}")
        if not isinstance(body, dict):
            raise WorkerProtocolError(self.name, "GET /history: the answer is not an object")
        entry = body.get(prompt_id)
        return entry if isinstance(entry, dict) else None

    async def view(self, output: OutputFile, timeout: float | None = None) -> bytes:
        """The file's bytes exactly as the worker wrote them."""
        params = {"filename": output.filename, "subfolder": output.subfolder, "type": output.type}
        return await self._request("GET", "/view", params=params, timeout=timeout, expect_json=False)

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
        """Every node class the worker has, with its inputs and their allowed values."""
        return await self._request("GET", "/object_info", timeout=max(self.settings.request_timeout, 30.0))

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
        if not isinstance(answer, dict) or "name" not in answer:
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
        websocket = await self._open_websocket(client_id)
        try:
            # ComfyUI before 0.3.4x ignores a client-chosen prompt_id: follow the one it answers
            prompt_id = await self.submit(prompt, client_id, prompt_id, extra_data)
            if websocket is not None:
                await self._follow_websocket(websocket, prompt_id, deadline, on_progress)
            return await self._poll_history(prompt_id, deadline)
        except asyncio.CancelledError:
            await self._cancel_quietly(prompt_id)
            raise
        except WorkerTimeout:
            await self._cancel_quietly(prompt_id)
            raise
        finally:
            if websocket is not None:
                await websocket.close()

    async def _open_websocket(self, client_id: str) -> aiohttp.ClientWebSocketResponse | None:
        url = self.base_url + "/ws"
        try:
            return await self.session.ws_connect(
                url, params={"clientId": client_id}, timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
                heartbeat=30.0, autoping=True, headers=self.worker.headers,
            )
        except aiohttp.ClientConnectorError as exc:
            raise self._convert(exc, "GET /ws") from exc
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return None  # e.g. a proxy without websocket support: fall back to polling history

    async def _follow_websocket(self, websocket: aiohttp.ClientWebSocketResponse, prompt_id: str,
                                deadline: float, on_progress: Callable[[float, float], None] | None = None) -> None:
        """Return when the prompt has ended (or the socket closed); raise on error or deadline."""
        wait_until = deadline
        while True:
            event = await _next_event(websocket, wait_until)
            if event is None:  # socket closed, or the grace after success ran out
                if wait_until < deadline:
                    return
                if time.monotonic() >= deadline:
                    raise WorkerTimeout(self.name, "the prompt did not finish before the worker timeout")
                return
            kind, data = event.get("type"), event.get("data") or {}
            if not isinstance(data, dict) or data.get("prompt_id") != prompt_id:
                continue
            if kind == "execution_error":
                raise WorkerExecutionFailed(
                    self.name,
                    f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                    f"{data.get('exception_type', 'Error')}: {str(data.get('exception_message', '')).strip()}",
                )
            if kind == "execution_interrupted":
                raise WorkerExecutionFailed(self.name, f"the prompt was interrupted at node {data.get('node_id')}")
            if kind == "progress" and on_progress is not None:
                value, maximum = data.get("value"), data.get("max")
                if isinstance(value, (int, float)) and isinstance(maximum, (int, float)):
                    on_progress(float(value), float(maximum))
                continue
            if kind == "executing" and data.get("node") is None:
                return  # sent after the history entry is written
            if kind == "execution_success":
                wait_until = min(deadline, time.monotonic() + FINISH_GRACE)

    async def _poll_history(self, prompt_id: str, deadline: float) -> PromptResult:
        pause = HISTORY_POLL_INTERVAL[0]
        while True:
            entry = await self.history(prompt_id)
            if entry is not None:
                status = entry.get("status") or {}
                if status.get("status_str") == "error":
                    raise WorkerExecutionFailed(self.name, _history_error(status))
                return PromptResult(prompt_id, entry.get("outputs") or {})
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


async def _next_event(websocket: aiohttp.ClientWebSocketResponse, until: float) -> dict | None:
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
            parsed = _json_or_none(message.data)
            if isinstance(parsed, dict):
                return parsed
        elif message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
                              aiohttp.WSMsgType.ERROR):
            return None
        # binary frames are previews and progress text: not needed here


def _history_error(status: dict) -> str:
    for message in status.get("messages", []):
        if isinstance(message, list) and len(message) == 2 and message[0] == "execution_error":
            data = message[1] or {}
            return (f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                    f"{data.get('exception_type', 'Error')}: {str(data.get('exception_message', '')).strip()}")
        if isinstance(message, list) and len(message) == 2 and message[0] == "execution_interrupted":
            return "the prompt was interrupted"
    return "the prompt ended with an error"


def _json_or_none(body: bytes | str) -> Any:
    try:
        return json.loads(body)
    except (ValueError, TypeError):
        return None


def _node_errors(body: bytes) -> dict:
    parsed = _json_or_none(body)
    if isinstance(parsed, dict) and isinstance(parsed.get("node_errors"), dict):
        return parsed["node_errors"]
    return {}
