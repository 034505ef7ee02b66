"""The agent: beside one plain ComfyUI, it takes the pool's units from Redis and runs them there.

It connects out to Redis only (no port of its own, no route to or from a master) and runs three loops:

- the heartbeat (every :data:`.keys.HEARTBEAT_INTERVAL`): its ``agent:{id}`` record, its caps kept alive, and the
  idle time of the entry it runs reset, so that the master can tell a dead agent's units apart;
- the ComfyUI watch: whether its ComfyUI answers (an agent whose ComfyUI does not takes no unit, and says so), and
  its ``/object_info`` read again every :data:`.keys.CAPS_REREAD` seconds and whenever it comes back;
- the work loop: the open jobs it can run (lease alive, needs met by its caps, tags a subset of its own), tried in
  the fair order of :mod:`.fairness`; the first with a unit for it is served (:mod:`.unit_run`). When none had one,
  it blocks in Redis on the pool's wake-up stream (every unit a master adds adds an entry there) for at most
  :data:`.keys.WAKE_WAIT` seconds: an idle agent costs Redis one command a few seconds, and starts a new unit as
  soon as it is added.

Everything read from Redis is checked; a unit entry that does not fit the protocol is acknowledged, deleted and
logged, never run and never fatal. Redis unreachable or restarted: every loop retries with backoff, and a units
stream whose consumer group Redis lost gets it again (NOGROUP) while its job's lease lives. Stopping
(:meth:`Agent.stop`): by default the unit it runs is finished first; ``give_back`` cancels it (its ComfyUI prompt is
interrupted) and marks its entry idle, so the master re-runs it elsewhere on its next reclaim.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlsplit

from ..config import Settings, WorkerConfig, redacted_url
from ..config.pool import MAX_POOL_WEIGHT
from ..errors import PoolError, PoolProtocolError, PoolUnavailable, WorkerError
from ..worker_client import WorkerClient
from . import fairness
from .caps import caps_json, caps_of, digest_of, lacks, tags_fit
from .connection import (SOCKET_TIMEOUT, Backoff, NoGroup, end_tasks, ensure_group, open_redis, pause_unless,
                         redis_errors)
from .keys import CAPS_REREAD, CAPS_TTL, GROUP, HEARTBEAT_INTERVAL, HEARTBEAT_TTL, WAKE_WAIT, PoolKeys
from .protocol import (AGENT_NAME, MAX_JOB_BYTES, MAX_TAGS, MAX_UNIT_BYTES, TAG, Busy, Caps, Heartbeat,
                       JobRecord, ReplyHead, UnitEntry, decode, encode, field_of)
from .unit_run import ReplySender, run_unit

log = logging.getLogger("comfy_distributed")

MAX_JOBS_SEEN = 1000
"""Open jobs an agent looks at per turn (the oldest first)."""
GIVEN_BACK_IDLE_MS = 24 * 3600 * 1000
"""The idle time a given-back entry is marked with: any reclaim finds it at once."""


@dataclass(slots=True, frozen=True)
class AgentTiming:
    """How often an agent does what; the defaults are the protocol's (:mod:`.keys`), tests shorten them."""

    heartbeat: float = HEARTBEAT_INTERVAL
    heartbeat_ttl: int = HEARTBEAT_TTL
    idle: float = WAKE_WAIT
    """The longest wait for a wake-up when no job had a unit for it."""
    comfyui_check: float = 5.0
    caps_reread: float = CAPS_REREAD
    progress: float = 1.0
    """At most one progress (or preview) reply a second: a master with hundreds of agents reads every one."""


def check_identity(name: str, tags: list[str]) -> None:
    """PoolError naming the bad agent name or tag (both are published to every pool member)."""
    if not AGENT_NAME.fullmatch(name):
        raise PoolError(f"agent name {name[:100]!r}: 1 to 100 letters, digits, spaces or _ . : @ ( ) + -")
    bad = [tag for tag in tags if not TAG.fullmatch(tag)]
    if bad:
        raise PoolError(f"agent tag {bad[0][:64]!r}: 1 to 64 letters, digits, '_', '.', '-'")
    if len(tags) > MAX_TAGS:
        raise PoolError(f"an agent has at most {MAX_TAGS} tags, not {len(tags)}")


def comfyui_worker(url: str, name: str) -> WorkerConfig:
    """The agent's ComfyUI as a worker of the config, so that the master's own client reaches it."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PoolError(f"--comfyui {url[:200]!r}: give ComfyUI's address as http://host:port")
    return WorkerConfig(id="agent", name=name, port=parts.port or (443 if parts.scheme == "https" else 80),
                        host=url.rstrip("/"))


class Agent:
    """One agent. ``await agent.run()`` until :meth:`stop`; ``say`` gets the lines a person should read."""

    def __init__(self, pool_url: str, comfyui_url: str, *, pool: str = "default", name: str | None = None,
                 tags: list[str] | None = None, timing: AgentTiming | None = None, settings: Settings | None = None,
                 say: Callable[[str], None] | None = None) -> None:
        self.id = secrets.token_hex(8)
        self.name = name or f"agent-{self.id[:6]}"
        self.tags = sorted(set(tags or []))
        check_identity(self.name, self.tags)
        self.url, self.keys = pool_url, PoolKeys(pool)
        self.timing = timing or AgentTiming()
        self.comfy = WorkerClient(comfyui_worker(comfyui_url, self.name), settings or Settings())
        self.say = say or (lambda line: log.info("Multi-GPU agent: %s", line))
        self.caps: Caps | None = None
        self._caps_raw, self._caps_read = b"", 0.0
        self._caps_digest: str | None = None
        self.comfyui_up = False
        self.busy: Busy | None = None
        self._running: tuple[str, str] | None = None
        self.checkpoint: str | None = None
        self.credit: dict[str, float] = {}
        self.served: list[tuple[str, int, int]] = []
        """(job, position, attempt) of every unit it ran to a reply, in order (for tests and the log)."""
        self.refused = 0
        self._redis: Any = None
        self._woken = "0-0"
        """The newest wake-up entry seen before the last look at the jobs: a wait for work starts after it."""
        self._stopping = asyncio.Event()
        self._give_back = False
        self._unit: asyncio.Task[None] | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Work until :meth:`stop`. Redis or ComfyUI being away is waited out, never fatal."""
        self._redis = open_redis(self.url)
        tasks: list[asyncio.Task[None]] = []
        try:
            async with self.comfy:
                tasks = [asyncio.create_task(self._beat_loop(), name="agent-heartbeat"),
                         asyncio.create_task(self._comfy_loop(), name="agent-comfyui")]
                self.say(f"{self.name} ({self.id}) serves pool {self.keys.base[:-1]} at {redacted_url(self.url)} "
                         f"with ComfyUI at {self.comfy.base_url}")
                await self._work_loop()
        finally:
            # told to stop, the loops end between two commands; killed, they are cancelled where they are
            await end_tasks(tasks, SOCKET_TIMEOUT if self._stopping.is_set() else 0.0)
            await self._leave()

    def stop(self, give_back: bool = False) -> None:
        """Stop taking units; finish the running one, or with ``give_back`` hand it back to the pool."""
        self._stopping.set()
        if give_back and self._unit is not None:
            self._give_back = True
            self._unit.cancel()

    async def _leave(self) -> None:
        """On a clean stop, take the heartbeat away at once; killed, the heartbeat simply expires."""
        client, self._redis = self._redis, None
        if client is None:
            return
        if self._stopping.is_set():
            try:
                with redis_errors("DEL heartbeat", self.url):
                    await client.delete(self.keys.agent(self.id))
            except PoolError:
                pass
        await client.aclose()

    # --- heartbeat and ComfyUI -------------------------------------------------------------------

    def heartbeat(self) -> Heartbeat:
        return Heartbeat(id=self.id, name=self.name, tags=self.tags, caps=self._caps_digest, busy=self.busy,
                         checkpoint=self.checkpoint, comfyui=self.comfyui_up)

    async def _beat_loop(self) -> None:
        said = False
        while not self._stopping.is_set():
            try:
                await self._beat()
                said = False
            except PoolUnavailable as exc:
                if not said:
                    self.say(f"the pool's Redis does not answer ({exc}); retrying")
                    said = True
            except PoolError as exc:
                log.warning("Multi-GPU agent: heartbeat: %s", exc)
            await pause_unless(self._stopping, self.timing.heartbeat)

    async def _beat(self) -> None:
        client = self._redis
        with redis_errors("heartbeat", self.url):
            await client.set(self.keys.agent(self.id), encode(self.heartbeat()), ex=self.timing.heartbeat_ttl)
            if self._caps_digest is not None:
                key = self.keys.caps(self._caps_digest)
                if not await client.expire(key, CAPS_TTL):
                    await client.set(key, self._caps_raw, ex=CAPS_TTL)
            running = self._running
            if running is not None:  # the entry stays ours: its idle time starts again
                await client.xclaim(running[0], GROUP, self.id, 0, [running[1]], justid=True)

    async def _comfy_loop(self) -> None:
        while not self._stopping.is_set():
            up = await self._comfy_answers()
            if up and (not self.comfyui_up or time.monotonic() - self._caps_read >= self.timing.caps_reread):
                up = await self._read_caps()
            if up != self.comfyui_up:
                self.say(f"ComfyUI at {self.comfy.base_url} answers; taking units" if up else
                         f"ComfyUI at {self.comfy.base_url} does not answer; taking no units until it does")
                self.comfyui_up = up
                await self._beat_quietly()
            await pause_unless(self._stopping, self.timing.comfyui_check)

    async def _comfy_answers(self) -> bool:
        try:
            await asyncio.wait_for(self.comfy.system_stats(), timeout=max(self.timing.comfyui_check, 2.0))
        except (WorkerError, asyncio.TimeoutError):
            return False
        return True

    async def _read_caps(self) -> bool:
        """Read ``/object_info`` and publish the caps; False when ComfyUI did not answer as ComfyUI does."""
        from ..cluster.preflight import object_info_problem

        try:
            info = await self.comfy.object_info()
        except WorkerError as exc:
            log.warning("Multi-GPU agent: GET /object_info: %s", exc)
            return False
        problem = object_info_problem(info)
        if problem:
            self.say(f"ComfyUI at {self.comfy.base_url}: GET /object_info: {problem}; taking no units")
            return False
        self.caps = caps_of(info)
        self._caps_raw = caps_json(self.caps)
        self._caps_digest, self._caps_read = digest_of(self._caps_raw), time.monotonic()
        return True

    async def _beat_quietly(self) -> None:
        try:
            await self._beat()
        except PoolError:
            pass  # the heartbeat loop says it

    # --- work ------------------------------------------------------------------------------------

    async def _work_loop(self) -> None:
        backoff = Backoff()
        while not self._stopping.is_set():
            try:
                if not await self._turn():
                    await self._wait_for_work()  # where an idle agent spends its time: Redis may go away there too
                backoff.reset()
            except PoolUnavailable:
                await backoff.wait(self._stopping)  # the heartbeat loop says so
            except PoolError as exc:
                log.warning("Multi-GPU agent: %s; retrying", exc)
                await backoff.wait(self._stopping)

    async def _turn(self) -> bool:
        """Serve one unit of the fairest job that has one for this agent; False when none had."""
        if not self.comfyui_up or self.caps is None:
            return False
        jobs = await self._eligible_jobs()
        weights = [(job.job_id, min(job.weight, MAX_POOL_WEIGHT)) for job in jobs.values()]  # a member's own claim
        empty: list[str] = []
        loaded = {job.job_id for job in jobs.values() if self.checkpoint is not None and any(
            self.checkpoint in values for inputs in job.needs.choices.values() for values in inputs.values())}
        for job_id in fairness.order(weights, self.credit, loaded):
            taken = await self._take(jobs[job_id])
            if taken is None:
                empty.append(job_id)
                continue
            self.credit = fairness.charge(weights, self.credit, job_id, empty)
            await self._serve_guarded(jobs[job_id], *taken)
            return True
        return False

    async def _wait_for_work(self) -> None:
        """Until a master adds a unit after the last look at the jobs, or :attr:`AgentTiming.idle` seconds; a
        plain pause while its ComfyUI is not ready (it would take nothing anyway)."""
        if not self.comfyui_up or self.caps is None:
            await pause_unless(self._stopping, self.timing.idle)
            return
        with redis_errors("XREAD wake", self.url):
            await self._redis.xread({self.keys.wake: self._woken}, count=1, block=max(1, int(self.timing.idle * 1000)))

    async def _eligible_jobs(self) -> dict[str, JobRecord]:
        """The open jobs this agent can run, oldest first; jobs whose master is long gone are taken off the list."""
        client = self._redis
        with redis_errors("ZRANGE jobs", self.url):
            async with client.pipeline(transaction=False) as pipe:
                pipe.xrevrange(self.keys.wake, count=1)
                pipe.zrange(self.keys.jobs, 0, MAX_JOBS_SEEN - 1)
                newest, raw_ids = await pipe.execute()
            self._woken = _text(newest[0][0]) if newest else "0-0"
            ids = [_text(raw) for raw in raw_ids]
            if not ids:
                return {}
            async with client.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.get(self.keys.job(job_id))
                    pipe.exists(self.keys.lease(job_id))
                answers = await pipe.execute()
        eligible = {}
        for job_id, raw, lease in zip(ids, answers[::2], answers[1::2]):
            record = await self._record(job_id, raw, lease)
            if record is not None and tags_fit(record.tags, self.tags) and self.caps is not None \
                    and not lacks(self.caps, record.needs):
                eligible[job_id] = record
        return eligible

    async def _record(self, job_id: str, raw: bytes | None, lease: int) -> JobRecord | None:
        if raw is None and not lease:
            with redis_errors("ZREM jobs", self.url):
                await self._redis.zrem(self.keys.jobs, job_id)  # its master closed it or died long ago
            return None
        if raw is None or not lease:
            return None  # a dead lease: skipped; its entries expire with the job
        try:
            record = decode(JobRecord, raw, MAX_JOB_BYTES, f"job record {job_id[:128]}")
        except PoolProtocolError as exc:
            log.warning("Multi-GPU agent: %s; skipped", exc)
            return None
        return record if record.job_id == job_id else None

    async def _take(self, job: JobRecord) -> tuple[str, Any] | None:
        """One entry of the job's stream for this agent (non-blocking), or None."""
        stream = self.keys.units(job.job_id)
        try:
            with redis_errors(f"XREADGROUP {stream}", self.url):
                answer = await self._redis.xreadgroup(GROUP, self.id, {stream: ">"}, count=1)
        except NoGroup:
            with redis_errors("EXISTS lease", self.url):
                alive = await self._redis.exists(self.keys.lease(job.job_id))
            if alive:
                await ensure_group(self._redis, stream, self.url)
            return None
        for _stream, entries in answer or []:
            for entry_id, fields in entries:
                return _text(entry_id), fields
        return None

    async def _serve_guarded(self, job: JobRecord, entry_id: str, fields: Any) -> None:
        """Serve in a task of its own, so that :meth:`stop` with ``give_back`` can cancel just the unit."""
        self._unit = asyncio.create_task(self._serve(job, entry_id, fields), name="agent-unit")
        try:
            await asyncio.shield(self._unit)
        except asyncio.CancelledError:
            if not self._give_back:  # killed: the entry stays pending; the master reclaims it once it is idle
                self._unit.cancel()
                await asyncio.gather(self._unit, return_exceptions=True)  # its ComfyUI prompt interrupted first
                raise
            await self._hand_back(job, entry_id)
        finally:
            self._unit = None
            self.busy, self._running = None, None

    async def _hand_back(self, job: JobRecord, entry_id: str) -> None:
        try:
            with redis_errors("XCLAIM give back", self.url):
                await self._redis.xclaim(self.keys.units(job.job_id), GROUP, self.id, 0, [entry_id],
                                         idle=GIVEN_BACK_IDLE_MS, justid=True)
            self.say(f"gave unit entry {entry_id} of job {job.job_id} back to the pool")
        except PoolError as exc:
            self.say(f"could not give unit entry {entry_id} back ({exc}); the master reclaims it in a while")

    async def _serve(self, job: JobRecord, entry_id: str, fields: Any) -> None:
        stream = self.keys.units(job.job_id)
        try:
            unit = decode(UnitEntry, field_of(fields, "unit"), MAX_UNIT_BYTES, f"unit entry {entry_id}")
            if unit.job_id != job.job_id:
                raise PoolProtocolError(f"unit entry {entry_id} names job {unit.job_id}, not {job.job_id}")
        except PoolProtocolError as exc:
            self.refused += 1
            log.warning("Multi-GPU agent: job %s: %s; dropped", job.job_id, exc)
            await self._drop(stream, entry_id)
            return
        with redis_errors("EXISTS lease", self.url):
            alive = await self._redis.exists(self.keys.lease(job.job_id))
        if alive:
            self.busy = Busy(job_id=job.job_id, position=unit.position, attempt=unit.attempt, master=job.master)
            self._running = (stream, entry_id)
            await self._beat_quietly()
            head = ReplyHead(job_id=job.job_id, position=unit.position, attempt=unit.attempt, agent=self.id,
                             agent_name=self.name)
            sender = ReplySender(self._redis, self.url, job.reply, head, max(self.timing.progress,
                                                                               unit.progress_every))
            sender.start()
            try:
                await run_unit(self.comfy, self._redis, self.url, self.keys, self.caps, unit, sender)
            finally:
                await sender.stop()
            self.checkpoint = _checkpoint(unit.prompt) or self.checkpoint
            self.served.append((job.job_id, unit.position, unit.attempt))
        await self._drop(stream, entry_id)

    async def _drop(self, stream: str, entry_id: str) -> None:
        with redis_errors(f"XACK {stream}", self.url):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.xack(stream, GROUP, entry_id)
                pipe.xdel(stream, entry_id)
                await pipe.execute()


def _checkpoint(prompt: dict[str, Any]) -> str | None:
    """The checkpoint a prompt loads (its first ``ckpt_name`` literal), for the heartbeat."""
    for node in prompt.values():
        value = node.get("inputs", {}).get("ckpt_name") if isinstance(node, dict) else None
        if isinstance(value, str) and len(value) <= 1024:
            return value
    return None


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
