"""The one client of a ComfyUI instance: every request bounded in time and size, every answer checked.

:class:`ComfyClient` is built from a base URL, for any instance: the CLI's master, a URL the
launcher probes, a benchmark's cluster. :class:`~.client.WorkerClient` is the same client built
from a configured worker, with what a job needs on top (a prompt run to its end, its files).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, Mapping, NoReturn, TypeVar

import aiohttp

from ..config import Settings
from ..errors import WorkerAnswerTooLarge, WorkerError, WorkerProtocolError, WorkerRejected, WorkerTimeout
from .answers import MIB, OutputFile, history_problem, json_or_none, node_errors, size_text, summarize_rejection
from .following import MAX_WORKER_MESSAGE, EventStream, Followed, finished
from .sessions import worker_session
from .transport import Redirected, convert, redirect_target, status_text

if TYPE_CHECKING:
    from .transport import WebSocket

log = logging.getLogger("comfy_distributed")

T = TypeVar("T")
Client = TypeVar("Client", bound="ComfyClient")


MAX_JSON_BYTES = 4 * MIB
"""Largest JSON answer read from an instance (queue, history, stats, a prompt's answer)."""


MAX_OBJECT_INFO_BYTES = 32 * MIB
"""``/object_info`` of a large install (thousands of node classes, long model lists) is the largest JSON."""


DEFAULT_MAX_FILE_BYTES = 256 * MIB
"""Largest output file read with ``/view`` when ``settings.max_file_mb`` is not set."""


LISTEN_MAX_MESSAGE = 4 * MIB
"""aiohttp's own cap, for :meth:`ComfyClient.listen` (the CLI follows its master, whose relayed previews are
base64 text). A worker's ``/ws`` is held to :data:`~.following.MAX_WORKER_MESSAGE` and a
:class:`~.following.FrameGuard`."""


ERROR_BODY_LOGGED = 1024
"""Bytes of an instance's error answer written to the debug log (never into an error message)."""


@dataclass(slots=True, frozen=True)
class Limits:
    """How long and how much one instance may take; a worker's come from :class:`Settings`."""

    connect_timeout: float = Settings.model_fields["connect_timeout"].default
    request_timeout: float = Settings.model_fields["request_timeout"].default
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    """The cap on one file read with ``/view``."""

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        megabytes = getattr(settings, "max_file_mb", None)
        max_file = int(megabytes * MIB) if isinstance(megabytes, (int, float)) and megabytes > 0 \
            else DEFAULT_MAX_FILE_BYTES
        return cls(settings.connect_timeout, settings.request_timeout, max_file)


@dataclass(slots=True, frozen=True)
class Reply:
    """An answer whatever its status, for a caller that tells statuses apart itself (the CLI, the probe)."""

    status: int
    body: bytes
    """Up to the cap: a success's whole body (refused past it), an error's or redirect's start."""

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body as JSON; None when it is not JSON."""
        return json_or_none(self.body)


class ComfyClient:
    """Talks to one ComfyUI instance through its native HTTP + websocket API.

    Use as ``async with ComfyClient(url) as client``. ``name`` is the instance in our errors;
    ``headers`` go with every request (an auth proxy's, the master's token). Without a ``session`` it makes
    its own with :func:`.worker_session` (no cookies, no redirects, no proxy from the environment).
    """

    def __init__(self, base_url: str, *, name: str | None = None, headers: Mapping[str, str] | None = None,
                 limits: Limits | None = None, session: aiohttp.ClientSession | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.name = name or self.base_url
        self.headers = dict(headers or {})
        self.limits = limits or Limits()
        self._session = session
        self._owns_session = session is None

    async def __aenter__(self: Client) -> Client:
        if self._session is None:
            self._session = worker_session()
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
            raise RuntimeError(f"{type(self).__name__} used outside 'async with'")
        return self._session

    @property
    def max_file_bytes(self) -> int:
        """The cap on one file read with ``/view``."""
        return self.limits.max_file_bytes

    def _timeout(self, total: float | None = None) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=total if total is not None else self.limits.request_timeout,
                                     sock_connect=self.limits.connect_timeout)

    async def _exchange(self, method: str, path: str, read: Callable[[aiohttp.ClientResponse, str], Awaitable[T]],
                        *, json_body: Any = None, params: Mapping[str, Any] | None = None,
                        timeout: float | None = None, data: Any = None) -> T:
        """Send one request and ``read`` its answer; never follows a redirect; aiohttp's errors become ours."""
        what = f"{method} {path}"
        try:
            async with self.session.request(
                method, self.base_url + path, json=json_body, params=params, timeout=self._timeout(timeout),
                headers=self.headers, data=data, allow_redirects=False,
            ) as response:
                return await read(response, what)
        except WorkerError:
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
            raise convert(exc, self.name, self.base_url, what) from exc

    async def _request(self, method: str, path: str, *, json_body: Any = None,
                       params: Mapping[str, Any] | None = None, timeout: float | None = None,
                       expect_json: bool = True, data: Any = None, limit: int = MAX_JSON_BYTES,
                       rejectable: bool = False) -> Any:
        """The answer (parsed JSON, or bytes) of a success, read up to ``limit`` bytes; any other status raised.

        ``rejectable``: a 400 is ComfyUI refusing a prompt (:class:`WorkerRejected` with its node errors).
        """
        async def read(response: aiohttp.ClientResponse, what: str) -> bytes:
            return await self._answer(response, what, path, limit, rejectable)

        body = await self._exchange(method, path, read, json_body=json_body, params=params, timeout=timeout,
                                    data=data)
        if not expect_json:
            return body
        parsed = json_or_none(body)
        if parsed is None:
            raise WorkerProtocolError(self.name, f"{method} {path}: the answer is not JSON; is this a ComfyUI server?")
        return parsed

    async def _answer(self, response: aiohttp.ClientResponse, what: str, path: str, limit: int,
                      rejectable: bool) -> bytes:
        """The body of a successful answer; a redirect, a rejection or an error status raised as ours."""
        self._refuse_redirect(response, what, path)
        if response.status == 400 and rejectable:
            parsed = json_or_none(await self._read_capped(response, what, MAX_JSON_BYTES))
            raise WorkerRejected(self.name, summarize_rejection(parsed), node_errors(parsed))
        if response.status >= 400:
            await self._log_error_body(response, what)
            raise WorkerProtocolError(self.name, f"{what}: {status_text(response.status)}")
        return await self._read_capped(response, what, limit)

    def _refuse_redirect(self, response: aiohttp.ClientResponse, what: str, path: str) -> None:
        """A redirect is never followed (per-worker headers would travel to the other address): it is refused."""
        if 300 <= response.status < 400:
            target = redirect_target(self.base_url + path, response.headers.get("Location"))
            raise WorkerProtocolError(self.name, f"{what}: redirected to {target}, not followed")

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
        raise WorkerAnswerTooLarge(self.name, f"{what}: the answer is larger than the cap of {size_text(limit)}; "
                                              "refused, not read further", limit)

    async def _log_error_body(self, response: aiohttp.ClientResponse, what: str) -> None:
        """The start of an error answer, for the debug log only: it is the instance's text, maybe anything."""
        if not log.isEnabledFor(logging.DEBUG):
            return
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, OSError):
            start = await response.content.read(ERROR_BODY_LOGGED)
            log.debug("Multi-GPU: worker %s: %s answered %s: %r", self.name, what, response.status, start)

    async def reply(self, method: str, path: str, *, json_body: Any = None, params: Mapping[str, Any] | None = None,
                    timeout: float | None = None, limit: int = MAX_JSON_BYTES) -> Reply:
        """The answer whatever its status, for routes whose error answers mean something to the caller.

        A success is read whole up to ``limit`` (refused past it); an error's or a redirect's
        body only up to ``limit`` (cut there: a message shows at most its start).
        """
        async def read(response: aiohttp.ClientResponse, what: str) -> Reply:
            if response.status < 300:
                return Reply(response.status, await self._read_capped(response, what, limit))
            start = bytearray()
            async for chunk in response.content.iter_any():
                start += chunk
                if len(start) >= limit:
                    break
            return Reply(response.status, bytes(start[:limit]))

        return await self._exchange(method, path, read, json_body=json_body, params=params, timeout=timeout)

    async def get_json(self, path: str, params: Mapping[str, Any] | None = None, timeout: float | None = None) -> Any:
        """A route's JSON answer, up to :data:`MAX_JSON_BYTES`; the caller checks its shape."""
        return await self._request("GET", path, params=params, timeout=timeout)

    async def submit(self, prompt: dict, client_id: str, prompt_id: str | None = None,
                     extra_data: dict | None = None, path: str = "/prompt") -> str:
        """Queue ``prompt`` with the native ``POST /prompt``; returns the prompt id the instance answers.

        ``prompt_id`` None lets the instance choose one; ``path`` is ``/api/prompt`` for the route
        ComfyUI's frontend uses.
        """
        body: dict[str, Any] = {"prompt": prompt, "client_id": client_id}
        if prompt_id is not None:
            body["prompt_id"] = prompt_id
        if extra_data:
            body["extra_data"] = extra_data
        answer = await self._request("POST", path, json_body=body, rejectable=True)
        answered = answer.get("prompt_id") if isinstance(answer, dict) else None
        if not isinstance(answered, (str, int)) or isinstance(answered, bool) or not 0 < len(str(answered)) <= 256:
            raise WorkerProtocolError(self.name, f"POST {path}: the answer has no prompt_id")
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

    async def stream_view(self, output: OutputFile, receive: Callable[[bytes], None], limit: int,
                          too_large: Callable[[int], WorkerError], timeout: float | None = None) -> int:
        """The file's bytes handed to ``receive`` as they arrive, never more than ``limit`` of them (past it the
        connection is dropped and ``too_large(size)`` raised); its size. For files written to disk as they come
        (queue mode), where :meth:`view` would hold a whole file in memory."""
        params = {"filename": output.filename, "subfolder": output.subfolder, "type": output.type}

        async def read(response: aiohttp.ClientResponse, what: str) -> int:
            self._refuse_redirect(response, what, "/view")
            if response.status >= 300:
                raise WorkerProtocolError(self.name, f"{what}: {status_text(response.status)}")
            size = response.content_length or 0
            if size > limit:
                response.close()  # nothing more is read from this connection
                raise too_large(size)
            size = 0
            async for chunk in response.content.iter_any():
                size += len(chunk)
                if size > limit:
                    response.close()
                    raise too_large(size)
                receive(chunk)
            return size

        return await self._exchange("GET", "/view", read, params=params, timeout=timeout)

    async def view(self, output: OutputFile, timeout: float | None = None, limit: int | None = None) -> bytes:
        """The file's bytes exactly as the instance wrote them, up to ``limit`` (:attr:`max_file_bytes`)."""
        params = {"filename": output.filename, "subfolder": output.subfolder, "type": output.type}
        return await self._request("GET", "/view", params=params, timeout=timeout, expect_json=False,
                                   limit=self.max_file_bytes if limit is None else limit)

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
        """Every node class the instance has, with its inputs and their allowed values (shape: see worker_prep)."""
        return await self._request("GET", "/object_info", timeout=max(self.limits.request_timeout, 30.0),
                                   limit=MAX_OBJECT_INFO_BYTES)

    async def upload_input(self, path: Path, name: str, subfolder: str = "") -> dict:
        """Put a file into the instance's input folder (native ``POST /upload/image``).

        Without overwrite, ComfyUI keeps an identical file as it is and gives a file of the same
        name but other content a new name, which it returns.
        """
        return await self.upload_bytes(path.read_bytes(), name, subfolder)

    async def upload_bytes(self, data: bytes, name: str, subfolder: str = "", folder: str = "input",
                           overwrite: bool = False) -> dict:
        """Put ``data`` into the instance's ``folder`` (``input``, or ``temp``: emptied when it starts) as
        ``name``; the answer names the file as the instance keeps it (see :meth:`upload_input`)."""
        form = aiohttp.FormData()
        form.add_field("image", data, filename=name, content_type="application/octet-stream")
        form.add_field("type", folder)
        form.add_field("subfolder", subfolder)
        form.add_field("overwrite", "true" if overwrite else "false")
        answer = await self._request("POST", "/upload/image", data=form)
        if not isinstance(answer, dict) or not isinstance(answer.get("name"), str) or not answer["name"] \
                or not isinstance(answer.get("subfolder", ""), (str, type(None))):
            raise WorkerProtocolError(self.name, "POST /upload/image: the answer has no name")
        return answer

    async def queue_info(self) -> dict:
        """ComfyUI's ``GET /prompt``: ``{"exec_info": {"queue_remaining": n}}``."""
        return await self._request("GET", "/prompt")

    @contextlib.asynccontextmanager
    async def listen(self, client_id: str, deadline: float) -> AsyncIterator[EventStream]:
        """``client_id``'s events on the instance's ``/ws``, as ComfyUI's page gets them; WorkerError if it cannot
        be opened."""
        async with self._websocket(client_id, deadline, required=True, max_message=LISTEN_MAX_MESSAGE) as websocket:
            assert websocket is not None  # required: opened, or raised
            yield EventStream(websocket, self.name)

    async def queue_and_follow(self, prompt: dict, deadline: float, path: str = "/prompt",
                               client_id: str | None = None) -> Followed:
        """Queue ``prompt`` as ComfyUI's page does (its ``/ws`` open first) and follow it until the instance says
        it finished, recording every event; WorkerError when it fails to queue, the socket closes or time runs out.

        It does not judge the prompt: its history entry says whether it succeeded. ``client_id``: the socket's
        (a new one by default), for a caller that registered it for a master's events.
        """
        client_id = client_id or uuid.uuid4().hex
        async with self.listen(client_id, deadline) as events:
            started = time.monotonic()
            followed = Followed(await self.submit(prompt, client_id, path=path))
            while True:
                event = await events.next(deadline)
                followed.seconds = time.monotonic() - started
                followed.events.append((followed.seconds, event))
                if finished(event, followed.prompt_id):
                    return followed

    @contextlib.asynccontextmanager
    async def _websocket(self, client_id: str, deadline: float, required: bool,
                         max_message: int = MAX_WORKER_MESSAGE) -> AsyncIterator[WebSocket | None]:
        """The instance's ``/ws`` for ``client_id``; None (not ``required``) when polling ``/history`` can do instead.

        It has a session of its own (:func:`.worker_session`, whatever session this client was given):
        ws_connect cannot be told not to follow redirects, but that session's trace hook stops one, and
        its handshake is bounded by the deadline here.
        """
        async with worker_session(self.limits.connect_timeout) as session:
            websocket = await self._open_websocket(session, client_id, deadline, required, max_message)
            try:
                yield websocket
            finally:
                if websocket is not None:
                    await websocket.close()

    async def _open_websocket(self, session: aiohttp.ClientSession, client_id: str, deadline: float,
                              required: bool, max_message: int = MAX_WORKER_MESSAGE) -> WebSocket | None:
        """The socket, whose messages aiohttp refuses past ``max_message`` bytes before holding them."""
        what, url = "GET /ws", self.base_url + "/ws"
        # aiohttp's handshake waits up to the session's total (300 s by default): ours ends with the job's time
        bound = max(min(self.limits.connect_timeout, deadline - time.monotonic()), 0.001)
        try:
            return await asyncio.wait_for(session.ws_connect(
                url, params={"clientId": client_id}, timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
                heartbeat=30.0, autoping=True, headers=self.headers, max_msg_size=max_message,
            ), timeout=bound)
        except Redirected as exc:
            target = redirect_target(url, exc.location)
            raise WorkerProtocolError(self.name, f"{what}: redirected to {target}, not followed") from exc
        except asyncio.TimeoutError as exc:
            if time.monotonic() >= deadline:
                raise WorkerTimeout(self.name, f"{what}: no websocket handshake before the worker timeout") from exc
            if required:
                raise convert(exc, self.name, self.base_url, what) from exc
            log.debug("Multi-GPU: worker %s: no websocket handshake in %.1f s; polling /history", self.name, bound)
            return None
        except aiohttp.ClientError as exc:
            if required or isinstance(exc, aiohttp.ClientConnectorError):
                raise convert(exc, self.name, self.base_url, what) from exc
            return None  # e.g. a proxy without websocket support: fall back to polling history
