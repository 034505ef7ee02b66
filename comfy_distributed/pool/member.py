"""The engine's way into the pool: live agents as participants, and a unit sent to one as a pool transport.

A master with a pool configured (:mod:`.settings`) holds one :class:`PoolMember` on its cluster. It keeps the pool's
live agents (their heartbeats, re-read every :data:`AGENTS_EVERY` seconds) and offers one *slot* per agent whose
ComfyUI answers as an enabled worker of the config a job is planned with (:meth:`PoolMember.with_slots`): the
scheduler, the job kinds and the collection treat a slot as any worker. Which agent runs a slot's unit is the
pool's choice, not the master's: the unit goes into the job's stream in Redis, and the first free agent that can
run it takes it (fair share between masters and capability matching happen there, :mod:`.agent`).

:class:`PoolTransport` is the :class:`~..cluster.transport.UnitTransport` of one slot for one job. Its input files go
into Redis once per content; its ``run_prompt`` submits one entry per attempt (the engine's attempt number, so a
late duplicate is one comparison), follows the agent's replies (progress, previews, the files it made), and every
:data:`RECLAIM_EVERY` seconds asks Redis whether the agent that took it stopped heartbeating: that attempt fails
("agent NAME stopped heartbeating") and the engine re-runs the unit with the same seed and position, counted
against ``max_retries``. A unit that no live agent can run fails at once, naming what is missing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, Callable

from ..config import GpuConfig, Settings, WorkerConfig
from ..errors import PoolError, WorkerError, WorkerExecutionFailed, WorkerLacks, WorkerProtocolError, WorkerTimeout
from ..worker_client import DEFAULT_MAX_FILE_BYTES, Channel, Limits, OutputFile, PreviewSink, PromptResult
from .broker import LiveAgent, PoolBroker
from .inbox import Replies
from .connection import Backoff, end_tasks, pause_unless
from .caps import needs_of, tags_fit
from .protocol import FileRef, Needs, UnitEntry, UnitReply, encode
from .settings import pool_config, pool_label
from .unit_run import file_value

log = logging.getLogger("comfy_distributed")

SLOT_PREFIX = "pool-"
"""The id of a pool slot as a worker: ``pool-1``, ``pool-2``... A configured worker may have such an id too: slots
are told apart by identity (:meth:`PoolMember.owns`), and one that would share a worker's id is left out."""
SLOT_PORT = 1
"""A slot's port: it has no address (nothing connects to it), but a worker config needs one."""
SLOT_HOST = "pool.invalid"
"""A slot's host: a name that resolves nowhere (RFC 2606), should anything try."""
AGENTS_EVERY = 2.0
"""Seconds between two reads of the pool's heartbeats."""
RECLAIM_EVERY = 5.0
"""Seconds between two checks, while a unit waits, for the entry of an agent that stopped heartbeating."""
JOIN_RETRY_LONGEST = 60.0
"""The longest pause between two tries to reach the pool's Redis at start."""
PROGRESS_REPLIES = 64.0
"""Progress replies a second the master asks of all its pool units together at most: each unit's are spaced by
the number of unit attempts it follows / this (at least a second), so that hundreds of them cost the master no more
than 64 a second. A unit whose previews someone watches keeps the agent's own pace."""
DEAD_AFTER_MS = 20_000
"""An entry its agent has not touched for this long (it refreshes every 5 s while it runs it): the agent died."""


class PoolMember:
    """This master in its pool: the broker, the live agents, the slots they give (see the module doc)."""

    def __init__(self, broker: PoolBroker, label: str, tags: list[str] | None = None, weight: float = 1.0) -> None:
        self.broker = broker
        self.label = label
        """The pool in messages (its name and URL without the password)."""
        self.tags = sorted(set(tags or []))
        """The tags an agent must offer to run this master's units (``settings.pool.tags``)."""
        self.weight = weight
        """This master's share of the pool against other masters' (``settings.pool.weight``)."""
        self.live: list[LiveAgent] = []
        """Every agent whose heartbeat is current."""
        self.agents: list[LiveAgent] = []
        """Those whose ComfyUI answers and that offer this master's tags: one slot each."""
        self._able: dict[bytes, list[LiveAgent]] = {}
        """Per a unit's needs (as JSON): those of :attr:`agents` that can run it, until the agents are read again."""
        self._info: dict[str, Any] | None = None
        """:meth:`object_info`, until the agents are read again."""
        self._reclaimed: dict[str, float] = {}
        """Per job: when Redis was last asked for its dead agents' entries (one ask serves all its waiting units)."""
        self.slots: dict[str, WorkerConfig] = {}
        """The slots live agents give now (``pool-1`` ... ``pool-N``)."""
        self._issued: dict[str, WorkerConfig] = {}
        """Every slot ever given, by id, each the same object from then on: a job planned with slot k keeps
        reaching the pool through it after the agents were read again, or went away."""
        self._warned: set[str] = set()
        self.joined = False
        """Whether Redis answered once: before, the pool gives no slot."""
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._opened: set[str] = set()
        self.files: dict[str, dict[str, FileRef]] = {}
        """Per job: how its prompts name an input file (``sub/name``, ``name [temp]``) -> the file in the pool."""

    def start(self) -> None:
        """Join the pool in the background on the running loop: reach Redis (again and again, with a growing
        pause, while it does not answer), then read the agents every :data:`AGENTS_EVERY` seconds."""
        self._task = asyncio.get_running_loop().create_task(self.run(), name="multigpu-pool")

    async def run(self) -> None:
        await self._join()
        said = False
        while not self._stopping.is_set():
            await pause_unless(self._stopping, AGENTS_EVERY)
            try:
                await self.refresh()
                said = False
            except PoolError as exc:
                if not said:
                    log.warning("Multi-GPU pool: %s: its agents could not be read: %s; retrying", self.label, exc)
                    said = True

    async def _join(self) -> None:
        backoff, said = Backoff(1.0, JOIN_RETRY_LONGEST), False
        while not self._stopping.is_set():
            try:
                await self.broker.connect()
                await self.refresh()
            except PoolError as exc:
                if not said:
                    log.warning("Multi-GPU pool: %s cannot be reached yet: %s; trying again", self.label, exc)
                    said = True
                await self.broker.close()
                await backoff.wait(self._stopping)
                continue
            self.joined = True
            log.info("Multi-GPU pool: joined %s: %d live agent(s)", self.label, len(self.agents))
            return

    async def close(self) -> None:
        """Leave the pool (the master shuts down): its open jobs' leases lapse and the agents drop them."""
        self._stopping.set()
        if self._task is not None:
            await end_tasks([self._task], AGENTS_EVERY + 1.0)
        await self.broker.close()

    async def refresh(self) -> None:
        """Read the live agents; one slot per agent whose ComfyUI answers."""
        self.live = await self.broker.agents()
        self.agents = [agent for agent in self.live
                       if agent.heartbeat.comfyui and tags_fit(self.tags, agent.heartbeat.tags)]
        self._able, self._info = {}, None
        self.slots = {str(slot.id): slot for slot in map(self._slot, range(1, len(self.agents) + 1))}

    def _slot(self, k: int) -> WorkerConfig:
        key = f"{SLOT_PREFIX}{k}"
        if key not in self._issued:
            self._issued[key] = WorkerConfig(id=key, name=f"pool {k}", port=SLOT_PORT, host=SLOT_HOST)
        return self._issued[key]

    def status(self) -> dict[str, Any]:
        """The pool as ``GET /multigpu/status`` shows it: its live agents, what each runs, and this master's id in
        the pool (an agent's ``busy.master``: whether the unit it runs is this master's or another's)."""
        return {"pool": self.label, "joined": self.joined, "master": self.broker.master_id, "agents": [
            {"id": a.id, "name": a.name, "tags": list(a.heartbeat.tags), "comfyui": a.heartbeat.comfyui,
             "busy": a.heartbeat.busy.model_dump() if a.heartbeat.busy is not None else None,
             "checkpoint": a.heartbeat.checkpoint} for a in self.live]}

    def owns(self, worker: WorkerConfig) -> bool:
        """Whether ``worker`` is a slot this pool gave (a configured worker of the same id is not)."""
        return self._issued.get(str(worker.id)) is worker

    def with_slots(self, config: GpuConfig) -> GpuConfig:
        """``config`` with a slot per live agent among its enabled workers: the participants of a job planned now.
        A slot whose id a configured worker already has is left out (and said once): a worker's id is the user's."""
        taken = {str(worker.id) for worker in config.workers}
        slots = [slot for key, slot in self.slots.items() if key not in taken]
        for key in sorted(set(self.slots) & taken - self._warned):
            self._warned.add(key)
            log.warning("Multi-GPU pool: a configured worker has the id %s, which a slot of %s would have: that slot "
                        "is left out (give the worker another id)", key, self.label)
        return config.model_copy(update={"workers": [*config.workers, *slots]}) if slots else config

    def object_info(self) -> dict[str, Any]:
        """What some live agent can run, in ``/object_info``'s shape (a preflight against a slot asks this); merged
        once per reading of the agents (every slot of every job asks)."""
        if self._info is None:
            self._info = self._merged_info()
        return self._info

    def _merged_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {}
        seen: set[str] = set()
        caps = {agent.heartbeat.caps: agent.caps for agent in self.agents if agent.caps is not None}
        for one in caps.values():  # agents of the same install share their caps
            for class_type, inputs in one.classes.items():
                required = info.setdefault(class_type, {"input": {"required": {}}})["input"]["required"]
                for name, choices in inputs.items():
                    known = required.setdefault(name, [[]])[0]
                    for choice in choices:
                        if (key := f"{class_type}\0{name}\0{choice}") not in seen:
                            seen.add(key)
                            known.append(choice)
        return info

    def uploaded(self, job_id: str) -> list[str]:
        """How the job's prompts name its input files in the pool (a unit brings them: no agent needs to have
        them)."""
        return [value for named in self.files.get(job_id, {}) for value in (named, named + " [input]")]

    async def open_job(self, job_id: str, prompt: dict) -> None:
        """Make the job known to the agents (once), with what its first unit needs of them."""
        if job_id not in self._opened:
            self._opened.add(job_id)
            await self.broker.open_job(job_id, needs_of(prompt, self.uploaded(job_id)), self.tags, self.weight)

    async def close_job(self, job_id: str) -> None:
        self.files.pop(job_id, None)
        self._reclaimed.pop(job_id, None)
        if job_id in self._opened:
            self._opened.discard(job_id)
            try:
                await self.broker.close_job(job_id)
            except PoolError as exc:  # its lease lapses: the agents drop it anyway
                log.warning("Multi-GPU pool: job %s not closed: %s", job_id, exc)

    def transport(self, slot: WorkerConfig, settings: Settings, job_id: str) -> PoolTransport:
        return PoolTransport(self, slot, settings, job_id)

    def able(self, needs: Needs) -> list[LiveAgent]:
        """The slot-giving agents that can run a unit with ``needs`` (worked out once per needs and reading of the
        agents: a job's units share their needs, and a pool may have hundreds of agents)."""
        key = encode(needs)
        if key not in self._able:
            self._able[key] = [agent for agent in self.agents if not agent.lacks(needs)]
        return self._able[key]

    def lacking(self, needs: Needs) -> list[str]:
        """What the live agents lack for ``needs`` (each problem once): why no agent can run such a unit."""
        missing = {l for agent in self.live for l in agent.lacks(needs, self.tags)}
        return sorted(missing) or [f"a live agent{' with the tags ' + ', '.join(self.tags) if self.tags else ''}"]

    async def reclaim(self, job_id: str) -> None:
        """Ask Redis for the job's entries whose agent died, at most every :data:`RECLAIM_EVERY` seconds per job:
        each reclaimed attempt is failed to the unit that waits for it (:meth:`PoolBroker.reclaim`)."""
        now = time.monotonic()
        if now - self._reclaimed.get(job_id, float("-inf")) >= RECLAIM_EVERY:
            self._reclaimed[job_id] = now
            await self.broker.reclaim(job_id, DEAD_AFTER_MS)


class PoolTransport:
    """One slot of the pool for one job, as the engine uses a worker (see the module doc)."""

    def __init__(self, member: PoolMember, slot: WorkerConfig, settings: Settings, job_id: str) -> None:
        self.member, self.slot, self.settings, self.job_id = member, slot, settings, job_id
        self._made: dict[tuple[str, str, str], bytes] = {}

    @property
    def name(self) -> str:
        return self.slot.display_name

    @property
    def worker(self) -> WorkerConfig:
        return self.slot

    @property
    def max_file_bytes(self) -> int:
        """The same cap as a configured worker's (``settings.max_file_mb``)."""
        return Limits.from_settings(self.settings).max_file_bytes

    async def object_info(self) -> dict:
        return self.member.object_info()

    async def upload_input(self, path: Path, name: str, subfolder: str = "") -> dict:
        data = await asyncio.to_thread(path.read_bytes)
        return await self.upload_bytes(data, name, subfolder)

    async def upload_bytes(self, data: bytes, name: str, subfolder: str = "", folder: str = "input",
                           overwrite: bool = False) -> dict:
        """The bytes go into the pool once per content; the agent that takes a unit naming them uploads them to
        its ComfyUI under this name."""
        if folder not in ("input", "temp"):
            raise WorkerError(self.name, f"the pool carries input and temp files, not {folder!r} ones")
        try:
            sha = await self.member.broker.put_file(data)
            ref = FileRef(sha256=sha, name=name, subfolder=subfolder, folder="temp" if folder == "temp" else "input")
        except (PoolError, ValueError) as exc:
            raise WorkerError(self.name, f"the input file {name!r} could not go into the pool: {exc}") from None
        self.member.files.setdefault(self.job_id, {})[file_value(ref)] = ref
        return {"name": name, "subfolder": subfolder, "type": folder}

    def _files_of(self, prompt: dict) -> list[FileRef]:
        """The job's input files that ``prompt`` names (a LoadImage's ``image``: ``name``, ``sub/name``, with
        `` [input]`` or, for a temp file, `` [temp]``)."""
        values = {v.removesuffix(" [input]") for node in prompt.values() if isinstance(node, dict)
                  for v in (node.get("inputs") or {}).values() if isinstance(v, str)}
        return [ref for named, ref in self.member.files.get(self.job_id, {}).items() if named in values]

    async def run_prompt(self, prompt: dict, deadline: float, extra_data: dict | None = None,
                         on_progress: Callable[[float, float], None] | None = None,
                         wanted: frozenset[str] = frozenset(), channel: Channel | None = None,
                         previews: PreviewSink | None = None, unit: tuple[int, int] | None = None) -> PromptResult:
        position, attempt = unit if unit is not None else (0, 0)
        needs = needs_of(prompt, self.member.uploaded(self.job_id))
        if not self.member.able(needs):
            raise WorkerLacks(self.name, f"no live agent of {self.member.label} can run it: it lacks "
                                         + "; ".join(self.member.lacking(needs)[:8]))
        broker, entry_previews = self.member.broker, previews is not None and previews.wanted()
        replies = broker.watch(self.job_id, position, attempt)
        try:
            await asyncio.sleep(0)  # the units dispatched with this one watch theirs too: counted in progress_every
            entry = UnitEntry.model_construct(  # the engine's own prompt: the agent checks what it reads
                job_id=self.job_id, position=position, attempt=attempt, prompt=prompt, extra_data=None,
                files=self._files_of(prompt), wanted=sorted(wanted),
                deadline=time.time() + max(0.0, deadline - time.monotonic()),
                previews=entry_previews,
                progress_every=0.0 if entry_previews else max(1.0, broker.inbox.watching() / PROGRESS_REPLIES))
            await self.member.open_job(self.job_id, prompt)
            await broker.submit(self.job_id, entry)
            return await self._follow(replies, position, attempt, deadline, on_progress, previews)
        except PoolError as exc:
            raise WorkerError(self.name, str(exc)) from None
        finally:
            broker.unwatch(self.job_id, position, attempt)

    async def _follow(self, replies: Replies, position: int, attempt: int, deadline: float,
                      on_progress: Callable[[float, float], None] | None, previews: PreviewSink | None) -> PromptResult:
        next_check = time.monotonic() + RECLAIM_EVERY
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise WorkerTimeout(self.name, "no agent of the pool finished the unit before the worker timeout")
            reply = await replies.next(max(0.01, min(deadline, next_check) - now))
            if reply is None:
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + RECLAIM_EVERY
                    await self.member.reclaim(self.job_id)  # each waiter hears of its own
                continue
            if reply.kind == "progress" and on_progress is not None:
                on_progress(reply.value, reply.max)
            elif reply.kind == "preview" and previews is not None and reply.preview is not None:
                previews.show(reply.preview)
            elif reply.kind == "failed":  # its text names the agent (or the pool) already
                raise WorkerExecutionFailed(self.name, reply.error)
            elif reply.kind == "done":
                return self._result(reply)

    def _result(self, reply: UnitReply) -> PromptResult:
        outputs: dict[str, dict[str, Any]] = {node: dict(values) for node, values in reply.values.items()}
        for node_id, kinds in reply.outputs.items():
            for key, files in kinds.items():
                for file in files:
                    self._made[(file.filename, file.subfolder, file.type)] = file.data
                outputs.setdefault(node_id, {})[key] = [
                    {"filename": f.filename, "subfolder": f.subfolder, "type": f.type} for f in files]
        return PromptResult(f"pool-{reply.job_id}-{reply.position}-{reply.attempt}", outputs,
                            f"{self.name} (agent {reply.agent_name})")

    def _bytes(self, file: OutputFile) -> bytes:
        data = self._made.get((file.filename, file.subfolder, file.type))
        if data is None:
            raise WorkerProtocolError(self.name, f"the agent sent no file {file.filename!r}")
        return data

    async def fetch_files(self, files: list[OutputFile], deadline: float, expected: int | None = None) -> list[bytes]:
        return [self._bytes(file) for file in files]

    async def stream_view(self, output: OutputFile, receive: Callable[[bytes], None], limit: int,
                          too_large: Callable[[int], WorkerError], timeout: float | None = None) -> int:
        data = self._bytes(output)
        if len(data) > limit:
            raise too_large(len(data))
        receive(data)
        return len(data)


def member_for(settings: Settings | None) -> PoolMember | None:
    """The pool this master joins (``COMFY_DISTRIBUTED_POOL``, else ``settings.pool``), not joined yet; None: no
    pool. PoolError for a malformed ``COMFY_DISTRIBUTED_POOL``."""
    pool = pool_config(settings)
    if pool is None:
        return None
    cap = Limits.from_settings(settings).max_file_bytes if settings is not None else DEFAULT_MAX_FILE_BYTES
    return PoolMember(PoolBroker(pool.url, pool.name, max_file_bytes=cap), pool_label(pool), pool.tags, pool.weight)
