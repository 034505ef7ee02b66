"""Connections kept between the units of a job: one HTTP session per job, one websocket per worker and job.

Opening a connection costs a round trip and, on the master, CPU; a job of many units on the same
workers opened several per unit. A job's session (:func:`job_session`) keeps its connections for
all its units, and a :class:`Channel` is one ``/ws`` to a worker that every unit the job runs there
follows in turn (a worker runs one unit of a job at a time), each picking out its own prompt's
events by prompt id.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp

from .transport import refuse_redirects

if TYPE_CHECKING:
    from .transport import WebSocket

def job_session() -> aiohttp.ClientSession:
    """The session a job reaches its workers with: kept for the whole job, so its units reuse connections.

    It refuses redirects also where aiohttp would follow one (ws_connect), keeps no cookies (nothing
    one answer sets travels with the next request), takes no proxy from the environment, and leaves
    every bound to each request.
    """
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None), trace_configs=[refuse_redirects()],
                                 cookie_jar=aiohttp.DummyCookieJar())


CLOSE_WAIT = 1.0
"""Seconds a job's websocket waits for the worker to answer its close."""


@dataclass(slots=True)
class Channel:
    """One ``/ws`` to a worker for a job: opened by its first unit there, followed by each one after."""

    client_id: str = field(default_factory=lambda: f"multigpu-{uuid.uuid4().hex}")
    websocket: WebSocket | None = None

    def usable(self) -> WebSocket | None:
        return self.websocket if self.websocket is not None and not self.websocket.closed else None

    async def close(self) -> None:
        """Close the websocket, waiting at most :data:`CLOSE_WAIT` for the worker's answer (a hung worker
        must not hold the job's release; closing the session then drops the connection)."""
        websocket, self.websocket = self.websocket, None
        if websocket is not None:
            try:
                await asyncio.wait_for(websocket.close(), CLOSE_WAIT)
            except (asyncio.TimeoutError, aiohttp.ClientError, OSError):
                pass
