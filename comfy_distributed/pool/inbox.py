"""The master's reply stream, read and sorted out: each checked reply goes to the queue of the unit attempt it is for.

One task per master reads ``reply:{master_id}`` with plain ``XREAD`` (the master is its only reader, so no group is
needed) and deletes what it has read, so the stream holds only what is not read yet. Each entry is checked
(:func:`.protocol.decode_reply`: shapes, each file against the master's file cap, all of them against a total), then
handed to the queue registered for its ``(job_id, position, attempt)``; a reply nobody watches (a late duplicate of
an attempt the engine gave up, a unit of a job that ended) is dropped, and a reply that does not fit the protocol is
logged and dropped. Redis going away pauses the reading (with backoff), never ends it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from typing import Any, Callable

from ..errors import PoolError, PoolProtocolError, PoolUnavailable
from .connection import Backoff, redis_errors
from .protocol import UnitReply, decode_reply

log = logging.getLogger("comfy_distributed")

READ_COUNT = 16
"""Entries read at once while the replies are small (progress, a unit's small files): redis-py reads an answer
whole, so once a read brought :data:`HEAVY_READ` bytes or more, the next reads take :data:`HEAVY_COUNT` at a time."""
HEAVY_READ = 4 * 1024 * 1024
HEAVY_COUNT = 2
READ_GATHER = 0.01
"""Seconds between a read that found replies and the next: the replies of many agents that finish together are
read in a few round trips instead of one each (a reply waits at most this much longer)."""
READ_BLOCK_MS = 500
"""How long one XREAD waits for an entry: also how long :meth:`ReplyInbox.run` takes to notice it should stop."""

Key = tuple[str, int, int]


class Replies:
    """The replies for one unit attempt, in order: a queue whose waiter is one future (not a task per reply, as
    ``asyncio.wait_for(queue.get(), ...)`` makes on Python 3.10 and 3.11; a master may follow hundreds)."""

    def __init__(self) -> None:
        self._items: collections.deque[UnitReply] = collections.deque()
        self._bell: asyncio.Future[None] | None = None

    def put_nowait(self, reply: UnitReply) -> None:
        self._items.append(reply)
        if self._bell is not None and not self._bell.done():
            self._bell.set_result(None)

    def empty(self) -> bool:
        return not self._items

    def get_nowait(self) -> UnitReply:
        """The next reply; IndexError when none is there."""
        return self._items.popleft()

    async def next(self, timeout: float) -> UnitReply | None:
        """The next reply, waiting at most ``timeout`` seconds for it (None: none came)."""
        if not self._items:
            loop = asyncio.get_running_loop()
            self._bell = bell = loop.create_future()
            timer = loop.call_later(timeout, _ring, bell)
            try:
                await bell
            finally:
                timer.cancel()
                self._bell = None
        return self._items.popleft() if self._items else None

    async def get(self) -> UnitReply:
        """The next reply, however long it takes (what a test or benchmark waits on)."""
        while True:
            reply = await self.next(3600.0)
            if reply is not None:
                return reply


def _ring(bell: asyncio.Future[None]) -> None:
    if not bell.done():
        bell.set_result(None)


class ReplyInbox:
    """Reads one master's replies and routes them to the queues of :meth:`watch`."""

    def __init__(self, client: Callable[[], Any], stream: str, url: str, max_file_bytes: int,
                 max_reply_bytes: int, finished: Callable[[UnitReply], None]) -> None:
        self._client, self.stream, self._url = client, stream, url
        self.max_file_bytes, self.max_reply_bytes = max_file_bytes, max_reply_bytes
        self._finished = finished
        """Told of every done or failed reply (the broker forgets the attempt's entry)."""
        self._queues: dict[Key, Replies] = {}
        self.last_id = "0-0"
        self._read: list[Any] = []
        self._count = READ_COUNT
        """Entries read and routed, deleted from the stream with the next read."""
        self.dropped = 0
        """Replies refused or nobody watched (for tests and logs)."""

    def watch(self, key: Key) -> Replies:
        return self._queues.setdefault(key, Replies())

    def watching(self) -> int:
        """How many unit attempts someone waits for now."""
        return len(self._queues)

    def unwatch(self, key: Key) -> None:
        self._queues.pop(key, None)

    def unwatch_job(self, job_id: str) -> None:
        for key in [key for key in self._queues if key[0] == job_id]:
            del self._queues[key]

    def deliver(self, reply: UnitReply) -> None:
        """Hand ``reply`` to its watcher (the broker's own failures, e.g. units Redis lost, come this way too)."""
        if reply.kind in ("done", "failed"):
            self._finished(reply)
        queue = self._queues.get(reply.key)
        if queue is None:
            self.dropped += 1
            log.debug("Multi-GPU pool: a %s reply for job %s unit %d attempt %d that nobody waits for; dropped",
                      reply.kind, reply.job_id, reply.position, reply.attempt)
            return
        queue.put_nowait(reply)

    async def run(self, stopping: asyncio.Event) -> None:
        """Read until ``stopping`` is set; Redis unreachable is waited out with backoff. It ends between two reads
        rather than being cancelled in one: redis-py can hang when a command is cancelled while it connects."""
        backoff, said = Backoff(), False
        while not stopping.is_set():
            try:
                if await self._read_once():
                    await asyncio.sleep(READ_GATHER)  # replies that come together are read together
                backoff.reset()
                said = False
            except PoolUnavailable as exc:
                if not said:
                    log.warning("Multi-GPU pool: reading replies paused: %s; retrying", exc)
                    said = True
                await backoff.wait(stopping)
            except PoolError as exc:
                log.warning("Multi-GPU pool: reading replies: %s; retrying", exc)
                await backoff.wait(stopping)
        if self._read:
            with contextlib.suppress(PoolError):
                with redis_errors(f"XDEL {self.stream}", self._url):
                    await self._client().xdel(self.stream, *self._read)
            self._read = []

    async def _read_once(self) -> bool:
        """Read what came (waiting up to :data:`READ_BLOCK_MS`), route it; the entries read before are deleted in
        the same round trip (a done reply's files must not stay in Redis until the stream is trimmed)."""
        client = self._client()
        with redis_errors(f"XREAD {self.stream}", self._url):
            async with client.pipeline(transaction=False) as pipe:
                if self._read:
                    pipe.xdel(self.stream, *self._read)
                pipe.xread({self.stream: self.last_id}, count=self._count, block=READ_BLOCK_MS)
                answer = (await pipe.execute())[-1]
        self._read = []
        size = 0
        for _stream, entries in answer or []:
            for entry_id, fields in entries:
                size += sum(len(value) for value in fields.values() if isinstance(value, bytes)) \
                    if isinstance(fields, dict) else 0
                self._read.append(entry_id)
                self.last_id = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
                self._route(self.last_id, fields)
        self._count = HEAVY_COUNT if size >= HEAVY_READ else READ_COUNT
        return bool(self._read)

    def _route(self, entry_id: str, fields: Any) -> None:
        try:
            reply = decode_reply(fields if isinstance(fields, dict) else {}, self.max_file_bytes, self.max_reply_bytes)
        except PoolProtocolError as exc:
            self.dropped += 1
            log.warning("Multi-GPU pool: reply %s refused: %s", entry_id, exc)
            return
        self.deliver(reply)
