"""The edge to Redis: redis-py imported only here and only when a pool is used, its errors turned into ours.

redis-py is an optional dependency (``pip install 'redis>=5'``): nothing outside :mod:`..pool` imports it, and
without it a pool use fails with one clear message. Every exchange with Redis is bounded (connect and socket
timeouts); a dropped connection is retried by the caller's loop with :class:`Backoff`, and redis-py opens a new
connection on the next command, so a Redis that restarts is found again without a new client.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import ModuleType
from typing import Any, Iterator

from ..config import redacted_url
from ..errors import PoolError, PoolUnavailable
from ..worker_client import clip_text

MISSING_REDIS = "the pool needs redis-py: pip install 'redis>=5'"
CONNECT_TIMEOUT = 5.0
SOCKET_TIMEOUT = 15.0
"""Longer than any blocking read we issue (at most a few seconds), so a timeout means a dead connection."""
MAX_CONNECTIONS = 64
"""Connections one client (a master's broker, an agent) opens to Redis at most."""


class NoGroup(PoolError):
    """The stream or its consumer group is gone (Redis restarted without persistence, or the job was closed)."""


def redis_asyncio() -> ModuleType:
    """``redis.asyncio``; PoolError saying how to install it when it is missing."""
    try:
        import redis.asyncio as aioredis
    except ImportError:
        raise PoolError(MISSING_REDIS) from None
    return aioredis


def open_redis(url: str) -> Any:
    """A redis-py asyncio client for ``url`` (no connection is made until the first command); bytes in, bytes
    out, so file bytes and JSON travel unchanged.

    At most :data:`MAX_CONNECTIONS` connections; a command that finds them all in use waits for one (up to
    :data:`SOCKET_TIMEOUT` seconds) instead of failing: a master whose hundreds of pool slots submit their units at
    the same moment would otherwise pass redis-py's default cap (100 in redis-py 8) and lose those units."""
    aioredis = redis_asyncio()
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=MAX_CONNECTIONS, timeout=SOCKET_TIMEOUT, socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=SOCKET_TIMEOUT, decode_responses=False, health_check_interval=30, retry_on_timeout=False)
    client = aioredis.Redis(connection_pool=pool)
    client.auto_close_connection_pool = True  # aclose() closes the pool too, as from_url's client does
    return client


@contextlib.contextmanager
def redis_errors(what: str, url: str) -> Iterator[None]:
    """Raise redis-py's errors inside the block as ours: PoolUnavailable (retry later), NoGroup, PoolError."""
    import redis.exceptions as rex

    try:
        yield
    except rex.AuthenticationError as exc:
        raise PoolUnavailable(f"{what}: Redis at {redacted_url(url)} refused the user or password in the pool "
                              f"URL ({clip_text(exc, 120)})") from exc
    except (rex.ConnectionError, rex.TimeoutError, asyncio.TimeoutError, OSError) as exc:
        raise PoolUnavailable(f"{what}: Redis at {redacted_url(url)} does not answer "
                              f"({clip_text(exc, 160) or type(exc).__name__})") from exc
    except rex.ResponseError as exc:
        if str(exc).startswith("NOGROUP"):
            raise NoGroup(f"{what}: the stream or its consumer group is gone") from exc
        raise PoolError(f"{what}: Redis at {redacted_url(url)} answered: {clip_text(exc, 200)}") from exc


def busy_group(exc: BaseException) -> bool:
    """Whether ``exc`` is Redis saying the consumer group exists already (XGROUP CREATE of an existing one)."""
    return "BUSYGROUP" in str(exc)


class Backoff:
    """Pauses between tries to reach Redis: doubling from ``first`` up to ``longest``, reset once it answers."""

    def __init__(self, first: float = 0.2, longest: float = 5.0) -> None:
        self.first, self.longest = first, longest
        self.next = first

    def reset(self) -> None:
        self.next = self.first

    async def wait(self, stopping: asyncio.Event | None = None) -> None:
        """Pause (less when ``stopping`` is set meanwhile)."""
        pause, self.next = self.next, min(self.next * 2, self.longest)
        await pause_unless(stopping, pause)


async def pause_unless(stopping: asyncio.Event | None, seconds: float) -> None:
    """Sleep ``seconds``, or until ``stopping`` is set."""
    if stopping is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stopping.wait(), seconds)


async def end_tasks(tasks: list[asyncio.Task[None]], grace: float) -> None:
    """Wait up to ``grace`` seconds for tasks told to stop to end, then cancel what is left (and wait for that
    a little: a task stuck in redis-py is left behind rather than hanging its owner's close)."""
    if not tasks:
        return
    _done, pending = await asyncio.wait(tasks, timeout=grace) if grace > 0 else (set(), set(tasks))
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=2.0)


async def ensure_group(client: Any, stream: str, url: str) -> None:
    """Create ``stream``'s consumer group (and the stream) unless it exists: after Redis lost it, or for a new job.
    It starts at the stream's beginning, so entries already there are delivered."""
    import redis.exceptions as rex

    from .keys import GROUP

    with redis_errors(f"XGROUP CREATE {stream}", url):
        try:
            await client.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except rex.ResponseError as exc:
            if not busy_group(exc):
                raise
