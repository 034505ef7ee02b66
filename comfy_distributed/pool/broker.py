"""The master's side of the pool: its jobs, units, files and replies in Redis, for the engine's pool transport.

A :class:`PoolBroker` is one master in one pool. It opens a job (its record, a place in the pool's ``jobs`` list, a
units stream with the agents' consumer group, and a lease it refreshes while the job is open), puts the job's input
files into Redis once per content, submits one entry per unit attempt, routes the agents' replies to the engine
(:meth:`PoolBroker.watch`, through :mod:`.inbox`) and finds the entries of agents that died (:meth:`reclaim`).
Attempt numbers pass through unchanged: the engine compares them, so a late duplicate is one comparison there.

Redis restarting without persistence loses the pool's keys: the lease task finds the job's record gone, writes the
job again, and reports each unit attempt it had submitted and not heard the end of as failed ("the pool's Redis lost
the unit"), so the engine re-runs it with its next attempt (counted against ``max_retries``) or the job fails
within its deadline saying so. Nothing here blocks on Redis for long: every command is bounded by the connection's
timeouts and raises :class:`~..errors.PoolUnavailable` when Redis does not answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable

from ..config import redacted_url
from ..errors import PoolError, PoolProtocolError, PoolUnavailable
from ..worker_client import DEFAULT_MAX_FILE_BYTES, MIB, clip_text
from ..worker_client.answers import size_text
from .caps import digest_of, lacks
from .connection import SOCKET_TIMEOUT, end_tasks, ensure_group, open_redis, pause_unless, redis_errors
from .inbox import READ_BLOCK_MS, Replies, ReplyInbox
from .keys import FILE_TTL, GROUP, LEASE_INTERVAL, LEASE_TTL, UNITS_MAXLEN, WAKE_MAXLEN, PoolKeys
from .protocol import (MAX_CAPS_BYTES, MAX_HEARTBEAT_BYTES, MAX_UNIT_BYTES, Caps, Heartbeat, JobRecord, Needs,
                       UnitEntry, UnitReply, decode, encode, field_of)

log = logging.getLogger("comfy_distributed")

MAX_AGENTS = 10_000
"""Heartbeats read by :meth:`PoolBroker.agents` (a pool larger than this is not one this code was measured on)."""
JOB_TTL_FACTOR = 3
"""A job's record and units stream live this many lease lifetimes unless refreshed: a dead master's job goes away."""
RECLAIM_BATCH = 1000
SUBMIT_BATCH = 500
"""Unit attempts sent to Redis in one pipeline at most."""


@dataclass(slots=True, frozen=True)
class LiveAgent:
    """An agent whose heartbeat is current, with what its ComfyUI can run (None: not published or unreadable)."""

    heartbeat: Heartbeat
    caps: Caps | None

    @property
    def id(self) -> str:
        return self.heartbeat.id

    @property
    def name(self) -> str:
        return self.heartbeat.name

    def lacks(self, needs: Needs, tags: Iterable[str] = ()) -> list[str]:
        """What this agent lacks for units with ``needs`` and ``tags`` (empty: it can run them)."""
        missing = [f"tag {tag}" for tag in sorted(set(tags) - set(self.heartbeat.tags))]
        if self.caps is None or not self.heartbeat.comfyui:
            return missing + ["a ComfyUI that answers"]
        return missing + lacks(self.caps, needs)


@dataclass(slots=True, frozen=True)
class Reclaimed:
    """A unit attempt whose agent stopped heartbeating: its entry is acknowledged and deleted; re-run it."""

    position: int
    attempt: int
    agent: str
    agent_name: str
    entry_id: str

    @property
    def message(self) -> str:
        return f"agent {self.agent_name} stopped heartbeating"


@dataclass(slots=True)
class _Outgoing:
    """A unit attempt on its way into its job's stream, and the future of its entry id."""

    job_id: str
    position: int
    attempt: int
    data: bytes
    done: asyncio.Future[str]


@dataclass(slots=True)
class _OpenJob:
    record: JobRecord
    submitted: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Entry id -> (position, attempt) of each submitted attempt not yet done, failed or reclaimed."""
    entries: dict[tuple[int, int], str] = field(default_factory=dict)
    """The other way round: (position, attempt) -> entry id."""


class PoolBroker:
    """One master in one pool. Use as ``async with PoolBroker(url, name, master_id) as broker``.

    ``max_file_bytes``: the cap on one file an agent sends back; ``max_reply_bytes``: on all files of one reply."""

    def __init__(self, url: str, name: str = "default", master_id: str | None = None, *,
                 max_file_bytes: int = DEFAULT_MAX_FILE_BYTES, max_reply_bytes: int = 4096 * MIB,
                 lease_interval: float = LEASE_INTERVAL, lease_ttl: int = LEASE_TTL) -> None:
        self.url = url
        self.keys = PoolKeys(name)
        self.master_id = master_id or uuid.uuid4().hex
        self.lease_interval, self.lease_ttl = lease_interval, lease_ttl
        self._redis: Any = None
        self._jobs: dict[str, _OpenJob] = {}
        self._names: dict[str, str] = {}
        self._caps: dict[str, Caps] = {}
        self._beats: dict[bytes, Heartbeat] = {}
        """The heartbeats read last, by their bytes."""
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._outbox: list[_Outgoing] = []
        """Unit attempts submitted and not yet sent: those of one moment go to Redis in one round trip."""
        self._sending: asyncio.Task[None] | None = None
        self.inbox = ReplyInbox(self._client, self.keys.reply(self.master_id), url, max_file_bytes,
                                max_reply_bytes, self._finished)

    async def __aenter__(self) -> PoolBroker:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _client(self) -> Any:
        if self._redis is None:
            raise PoolError("the pool broker is used before connect() or after close()")
        return self._redis

    async def connect(self) -> None:
        """Reach Redis (PoolUnavailable when it does not answer) and start reading replies and keeping leases."""
        self._redis = open_redis(self.url)
        try:
            with redis_errors("PING", self.url):
                await self._redis.ping()
        except BaseException:
            await self.close()
            raise
        self._stopping = asyncio.Event()
        self._tasks = [asyncio.create_task(self.inbox.run(self._stopping), name="pool-replies"),
                       asyncio.create_task(self._keep_leases(), name="pool-leases")]

    async def close(self) -> None:
        """Stop the tasks and close the connection; open jobs are left to expire (call close_job first)."""
        tasks, self._tasks = self._tasks, []
        self._stopping.set()
        if self._sending is not None:  # the units submitted last reach Redis (or fail) before the connection goes
            await asyncio.gather(self._sending, return_exceptions=True)
        await end_tasks(tasks, READ_BLOCK_MS / 1000 + SOCKET_TIMEOUT)
        client, self._redis = self._redis, None
        if client is not None:
            await client.aclose()

    # --- agents ----------------------------------------------------------------------------------

    async def agents(self) -> list[LiveAgent]:
        """Every agent whose heartbeat is current, checked, with its caps; a malformed heartbeat is skipped."""
        client = self._client()
        with redis_errors("SCAN agents", self.url):
            keys = [key async for key in client.scan_iter(match=self.keys.agent_pattern, count=1000)][:MAX_AGENTS]
            raws = await client.mget(keys) if keys else []
        live, beats = [], {}
        for key, raw in zip(keys, raws):
            if raw is None:
                continue  # expired between SCAN and MGET
            beat = self._beats.get(raw) or self._heartbeat(key, raw)
            if beat is None:
                continue
            beats[raw] = beat
            self._names[beat.id] = beat.name
            live.append(LiveAgent(beat, await self._caps_of(beat.caps)))
        self._beats = beats  # an agent's heartbeat changes when its state does: the others are not decoded again
        return sorted(live, key=lambda agent: (agent.name, agent.id))

    def _heartbeat(self, key: Any, raw: bytes) -> Heartbeat | None:
        try:
            return decode(Heartbeat, raw, MAX_HEARTBEAT_BYTES, f"heartbeat {key!r}")
        except PoolProtocolError as exc:
            log.warning("Multi-GPU pool: %s; skipped", exc)
            return None

    async def _caps_of(self, digest: str | None) -> Caps | None:
        if digest is None:
            return None
        if digest not in self._caps:
            with redis_errors("GET caps", self.url):
                raw = await self._client().get(self.keys.caps(digest))
            if raw is None or len(raw) > MAX_CAPS_BYTES or digest_of(raw) != digest:
                return None  # not published yet, expired, or not what its digest says
            try:
                self._caps[digest] = decode(Caps, raw, MAX_CAPS_BYTES, f"caps {digest[:12]}")
            except PoolProtocolError as exc:
                log.warning("Multi-GPU pool: %s; skipped", exc)
                return None
        return self._caps[digest]

    # --- files and jobs --------------------------------------------------------------------------

    async def put_file(self, data: bytes, max_bytes: int = 512 * MIB) -> str:
        """Put an input file into the pool once per content (kept :data:`.keys.FILE_TTL` seconds from its last
        use); its sha256, which names it in a unit's ``files``."""
        if len(data) > max_bytes:
            raise PoolError(f"an input file of {len(data)} bytes is larger than the pool's cap of "
                            f"{size_text(max_bytes)}")
        sha = digest_of(data)
        key = self.keys.file(sha)
        with redis_errors("SET file", self.url):
            if not await self._client().expire(key, FILE_TTL):
                await self._client().set(key, data, nx=True, ex=FILE_TTL)
        return sha

    async def open_job(self, job_id: str, needs: Needs, tags: Iterable[str] = (), weight: float = 1.0) -> None:
        """Make the job known to the agents: its record, its units stream and group, its lease, its turn."""
        record = JobRecord(job_id=job_id, master=self.master_id, reply=self.inbox.stream, needs=needs,
                           tags=sorted(set(tags)), weight=weight)
        self._jobs[job_id] = _OpenJob(record)
        await self._write_job(record)

    async def _write_job(self, record: JobRecord) -> None:
        client, job_id, life = self._client(), record.job_id, self.lease_ttl * JOB_TTL_FACTOR
        await ensure_group(client, self.keys.units(job_id), self.url)
        with redis_errors(f"open job {job_id}", self.url):
            async with client.pipeline(transaction=True) as pipe:
                pipe.set(self.keys.job(job_id), encode(record), ex=life)
                pipe.set(self.keys.lease(job_id), self.master_id, ex=self.lease_ttl)
                pipe.expire(self.keys.units(job_id), life)
                pipe.zadd(self.keys.jobs, {job_id: time.time()}, nx=True)
                await pipe.execute()

    async def close_job(self, job_id: str) -> None:
        """Take the job off the pool: agents stop seeing it; its units not taken yet are deleted."""
        self._jobs.pop(job_id, None)
        self.inbox.unwatch_job(job_id)
        client = self._client()
        with redis_errors(f"close job {job_id}", self.url):
            async with client.pipeline(transaction=True) as pipe:
                pipe.zrem(self.keys.jobs, job_id)
                pipe.delete(self.keys.units(job_id), self.keys.job(job_id), self.keys.lease(job_id))
                await pipe.execute()

    async def submit(self, job_id: str, unit: UnitEntry) -> str:
        """Add one unit attempt to the job's stream; its entry id. Watch its replies first (:meth:`watch`).

        The attempts submitted in the same moment (a job's first units, hundreds with a big pool) go to Redis in
        one pipeline with one wake-up entry for the idle agents (:data:`.keys.WAKE_MAXLEN`)."""
        if self._jobs.get(job_id) is None or unit.job_id != job_id:
            raise PoolError(f"unit {unit.position} names job {unit.job_id}, which this broker has not opened")
        data = encode(unit)
        if len(data) > MAX_UNIT_BYTES:
            raise PoolError(f"unit {unit.position} of job {job_id} is {len(data)} bytes of JSON, more than the "
                            f"pool's cap of {size_text(MAX_UNIT_BYTES)}")
        outgoing = _Outgoing(job_id, unit.position, unit.attempt, data, asyncio.get_running_loop().create_future())
        self._outbox.append(outgoing)
        if self._sending is None or self._sending.done():
            self._sending = asyncio.create_task(self._send_outbox(), name="pool-submit")
        return await outgoing.done

    async def _send_outbox(self) -> None:
        batch: list[_Outgoing] = []
        try:
            await asyncio.sleep(0)  # the units submitted in this moment join the batch
            while self._outbox:
                batch = self._outbox[:SUBMIT_BATCH]
                del self._outbox[:SUBMIT_BATCH]
                await self._send_batch(batch)
        except BaseException as exc:  # not foreseen, or cancelled (the broker closes): no submitter waits forever
            for item in [*batch, *self._outbox]:
                if not item.done.done():
                    item.done.set_exception(PoolError(f"the unit could not be added to the pool ({exc!r:.200})"))
            self._outbox.clear()
            if not isinstance(exc, Exception):
                raise
            log.warning("Multi-GPU pool: submitting units: %r", exc)

    async def _send_batch(self, batch: list[_Outgoing]) -> None:
        for item in batch:
            if item.job_id not in self._jobs and not item.done.done():  # closed meanwhile: its stream is gone
                item.done.set_exception(PoolError(f"job {item.job_id} was closed before its unit went to the pool"))
        batch = [item for item in batch if not item.done.done()]  # cancelled or closed: not sent
        if not batch:
            return
        try:
            with redis_errors(f"XADD units of job {batch[0].job_id}", self.url):
                async with self._client().pipeline(transaction=False) as pipe:
                    for item in batch:
                        pipe.xadd(self.keys.units(item.job_id), {"unit": item.data}, maxlen=UNITS_MAXLEN,
                                  approximate=True)
                    for job_id in {item.job_id for item in batch}:  # a job closed meanwhile leaves nothing for long
                        pipe.expire(self.keys.units(job_id), self.lease_ttl * JOB_TTL_FACTOR)
                    pipe.xadd(self.keys.wake, {"job": batch[-1].job_id.encode()}, maxlen=WAKE_MAXLEN,
                              approximate=True)  # after the units: an agent it wakes finds them
                    answers = await pipe.execute(raise_on_error=False)
        except PoolError as exc:
            for item in batch:
                if not item.done.done():
                    item.done.set_exception(exc)
            return
        late = []
        for item, answer in zip(batch, answers):
            if item.done.done():  # cancelled while its batch was on the way: no agent should run it
                if isinstance(answer, (bytes, str)):
                    late.append((item.job_id, answer))
                continue
            if isinstance(answer, Exception):
                item.done.set_exception(PoolError(f"XADD units of job {item.job_id}: Redis at "
                                                  f"{redacted_url(self.url)} answered: {clip_text(answer, 200)}"))
                continue
            entry_id = answer.decode() if isinstance(answer, bytes) else str(answer)
            job = self._jobs.get(item.job_id)
            if job is not None:
                job.submitted[entry_id] = (item.position, item.attempt)
                job.entries[(item.position, item.attempt)] = entry_id
            item.done.set_result(entry_id)
        for job_id, entry in late:
            with contextlib.suppress(PoolError):
                with redis_errors(f"XDEL units of job {job_id}", self.url):
                    await self._client().xdel(self.keys.units(job_id), entry)

    # --- replies ---------------------------------------------------------------------------------

    def watch(self, job_id: str, position: int, attempt: int) -> Replies:
        """The queue that gets every reply (progress, preview, then done or failed) for this unit attempt."""
        return self.inbox.watch((job_id, position, attempt))

    def unwatch(self, job_id: str, position: int, attempt: int) -> None:
        self.inbox.unwatch((job_id, position, attempt))

    def _finished(self, reply: UnitReply) -> None:
        job = self._jobs.get(reply.job_id)
        entry_id = job.entries.pop((reply.position, reply.attempt), None) if job is not None else None
        if job is not None and entry_id is not None:
            job.submitted.pop(entry_id, None)

    async def reclaim(self, job_id: str, idle_ms: int) -> list[Reclaimed]:
        """The unit attempts of ``job_id`` taken by an agent that has not touched them for ``idle_ms``: each
        entry is acknowledged and deleted (it will not run again), its attempt failed to whoever watches it (so
        that whichever of the job's waiting units asks, each hears of its own), and returned."""
        client, stream = self._client(), self.keys.units(job_id)
        with redis_errors(f"XPENDING units of job {job_id}", self.url):
            pending = await client.xpending_range(stream, GROUP, "-", "+", RECLAIM_BATCH, idle=idle_ms)
        found = []
        for item in pending:
            entry_id = _text(item["message_id"])
            agent = _text(item["consumer"])
            unit = await self._attempt_of(job_id, entry_id)
            with redis_errors(f"XACK units of job {job_id}", self.url):
                async with client.pipeline(transaction=True) as pipe:
                    pipe.xack(stream, GROUP, entry_id)
                    pipe.xdel(stream, entry_id)
                    await pipe.execute()
            if unit is not None:
                dead = Reclaimed(unit[0], unit[1], agent, clip_text(self._names.get(agent, agent), 100), entry_id)
                found.append(dead)
                self.inbox.deliver(UnitReply("failed", job_id, dead.position, dead.attempt, agent, dead.agent_name,
                                             error=dead.message))
        return found

    async def _attempt_of(self, job_id: str, entry_id: str) -> tuple[int, int] | None:
        """(position, attempt) of an entry: as submitted, else read back (a broker that restarted)."""
        job = self._jobs.get(job_id)
        if job is not None and entry_id in job.submitted:
            attempt = job.submitted.pop(entry_id)
            job.entries.pop(attempt, None)
            return attempt
        with redis_errors(f"XRANGE units of job {job_id}", self.url):
            entries = await self._client().xrange(self.keys.units(job_id), entry_id, entry_id)
        for _id, fields in entries:
            with contextlib.suppress(PoolProtocolError):
                unit = decode(UnitEntry, field_of(fields, "unit"), MAX_UNIT_BYTES, "a unit entry")
                return (unit.position, unit.attempt)
        return None

    # --- leases ----------------------------------------------------------------------------------

    async def _keep_leases(self) -> None:
        """Refresh each open job's lease; re-open a job Redis lost (a restart) and fail its lost attempts."""
        said = False
        while not self._stopping.is_set():
            await pause_unless(self._stopping, self.lease_interval)
            if self._stopping.is_set():
                return
            try:
                for job in list(self._jobs.values()):
                    await self._refresh(job)
                said = False
            except PoolUnavailable as exc:
                if not said:
                    log.warning("Multi-GPU pool: leases not refreshed: %s; retrying", exc)
                    said = True
            except PoolError as exc:
                log.warning("Multi-GPU pool: leases: %s", exc)

    async def _refresh(self, job: _OpenJob) -> None:
        client, job_id, life = self._client(), job.record.job_id, self.lease_ttl * JOB_TTL_FACTOR
        with redis_errors(f"lease of job {job_id}", self.url):
            async with client.pipeline(transaction=True) as pipe:
                pipe.set(self.keys.lease(job_id), self.master_id, ex=self.lease_ttl)
                pipe.expire(self.keys.job(job_id), life)
                pipe.expire(self.keys.units(job_id), life)
                _lease, had_job, _units = await pipe.execute()
        if had_job or job_id not in self._jobs:
            return
        log.warning("Multi-GPU pool: job %s was lost by Redis (restarted?); opened again, its %d running unit(s) "
                    "re-run", job_id, len(job.submitted))
        await self._write_job(job.record)
        lost, job.submitted, job.entries = list(job.submitted.values()), {}, {}
        for position, attempt in lost:
            self.inbox.deliver(UnitReply("failed", job_id, position, attempt, "", "the pool",
                                         error="the pool's Redis lost the unit (it restarted); run again"))


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
