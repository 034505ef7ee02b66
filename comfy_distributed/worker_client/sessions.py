"""Connections kept between units and jobs: one HTTP session per worker, one websocket per worker and job.

Opening a connection costs a round trip and, on the master, CPU; a job of many units on the same
workers opened several per unit. A :class:`SessionPool` holds one session per worker for as long as
its owner (the orchestrator, the queue balancer) lives, so every unit of every job reuses the
worker's kept-alive connections; a :class:`Channel` is one ``/ws`` to a worker that every unit a job
runs there follows in turn (a worker runs one unit of a job at a time), each picking out its own
prompt's events by prompt id. A websocket is not kept across jobs: two jobs on one worker at once
(queue mode beside a Collector job) would each need to see the other's events.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp

from .following import MAX_WORKER_MESSAGE
from .transport import refuse_redirects

if TYPE_CHECKING:
    from .transport import WebSocket

def worker_session(connect_timeout: float | None = None) -> aiohttp.ClientSession:
    """The one kind of session that talks to a worker (the pool's, the health monitor's, a client's own).

    It refuses redirects also where aiohttp would follow one (ws_connect): per-worker headers must not
    travel to another address. It keeps no cookies: a worker must not set one that the next request
    carries, least of all to another worker on the same host name (a cookie ignores the port). It
    takes no proxy from the environment (trust_env stays off), and leaves every bound to each request
    but ``connect_timeout`` when given (a websocket's handshake, which ws_connect does not bound).
    """
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout),
                                 trace_configs=[refuse_redirects()], cookie_jar=aiohttp.DummyCookieJar(),
                                 trust_env=False)


class SessionPool:
    """One session per worker (by id), made on first use on the running loop and kept until :meth:`close`.

    A worker whose address changed in the config gets a new session; the old one may still carry a
    running unit, so it is kept open until :meth:`close` (config changes are rare). A worker asked
    from another event loop than its session's (a test's loop, say), which a session cannot serve,
    gets a new one too.
    """

    def __init__(self) -> None:
        self._sessions: dict[str, tuple[str, asyncio.AbstractEventLoop, aiohttp.ClientSession]] = {}
        self._retired: list[tuple[asyncio.AbstractEventLoop, aiohttp.ClientSession]] = []

    def get(self, worker_id: str, base_url: str) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        held = self._sessions.get(worker_id)
        if held is not None:
            url, held_loop, session = held
            if url == base_url and held_loop is loop and not session.closed:
                return session
            if not session.closed:
                self._retired.append((held_loop, session))
        session = worker_session()
        self._sessions[worker_id] = (base_url, loop, session)
        return session

    def __len__(self) -> int:
        return len(self._sessions)

    async def close(self) -> None:
        """Close every session made on the running loop (the others belong to loops that ended)."""
        loop = asyncio.get_running_loop()
        held, self._sessions = self._sessions, {}
        every = [(session_loop, session) for _, session_loop, session in held.values()] + self._retired
        self._retired = [(session_loop, session) for session_loop, session in every if session_loop is not loop]
        for session_loop, session in every:
            if session_loop is loop:
                await session.close()


CLOSE_WAIT = 1.0
"""Seconds a job's websocket waits for the worker to answer its close."""


@dataclass(slots=True)
class Channel:
    """One ``/ws`` to a worker for a job: opened by its first unit there, followed by each one after."""

    client_id: str = field(default_factory=lambda: f"multigpu-{uuid.uuid4().hex}")
    websocket: WebSocket | None = None
    frames: bool = False
    max_message: int = MAX_WORKER_MESSAGE
    """The socket's cap on one message (aiohttp's ``max_msg_size``), as it was opened (larger where it carries a
    unit's images)."""
    """Whether this socket negotiated ``supports_preview_metadata`` (:mod:`.image_frames`): a unit's images may
    come on it as frames that name their prompt and node."""

    def usable(self) -> WebSocket | None:
        return self.websocket if self.websocket is not None and not self.websocket.closed else None

    async def close(self) -> None:
        """Close the websocket, waiting at most :data:`CLOSE_WAIT` for the worker's answer (a hung worker
        must not hold the job's release; closing the session then drops the connection)."""
        websocket, self.websocket, self.frames = self.websocket, None, False
        if websocket is not None:
            try:
                await asyncio.wait_for(websocket.close(), CLOSE_WAIT)
            except (asyncio.TimeoutError, aiohttp.ClientError, OSError):
                pass
