"""Worker health: a heartbeat to every configured worker and a status derived from it.

Each beat asks a worker's native ``GET /prompt`` (queue) and ``GET /system_stats``
(devices, VRAM). A worker is offline when it refuses connections, or when no beat has
succeeded within ``settings.health_ttl`` seconds. A status change is pushed to the UI as a
``multigpu.worker_status`` event.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import aiohttp

from .. import events
from ..config import ConfigError, ConfigStore, Settings, WorkerConfig
from ..errors import WorkerError, WorkerUnreachable
from ..worker_client import WorkerClient, clip_text, worker_session

log = logging.getLogger("comfy_distributed")

STATUSES = ("disabled", "offline", "launching", "idle", "busy", "error")


@dataclass(slots=True)
class WorkerHealth:
    id: int | str
    name: str
    address: str
    enabled: bool
    status: str = "offline"
    queue_remaining: int | None = None
    device: str | None = None
    vram_total: int | None = None
    vram_free: int | None = None
    last_seen: float | None = None
    """Seconds since the last successful beat (in snapshots)."""
    error: str | None = None

    def as_json(self, now: float) -> dict[str, Any]:
        data = asdict(self)
        data["last_seen"] = None if self.last_seen is None else round(now - self.last_seen, 3)
        return data


class HealthMonitor:
    """Heartbeats on the master's event loop. ``async with HealthMonitor(...)`` or start()/close()."""

    def __init__(self, store: ConfigStore, notify: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self.store = store
        self.notify = notify or (lambda event, data: None)
        self._health: dict[str, WorkerHealth] = {}
        self._epochs: dict[str, int] = {}
        self._launching_until: dict[str, float] = {}
        self._task: asyncio.Task | None = None
        self._checks: dict[str, asyncio.Task] = {}
        self._online_listeners: list[Callable[[str], None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._wake: asyncio.Event | None = None  # made in start(), on the running loop

    async def __aenter__(self) -> "HealthMonitor":
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def start(self) -> None:
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="multigpu-health")

    async def close(self) -> None:
        for check in list(self._checks.values()):
            check.cancel()
        await asyncio.gather(*self._checks.values(), return_exceptions=True)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def poke(self) -> None:
        """Beat now (after a config change or a failure seen during a job)."""
        if self._wake is not None:
            self._wake.set()

    def on_online(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(worker_id)`` each time a worker comes (back) online (on the server loop)."""
        self._online_listeners.append(listener)

    def check(self, worker_ids: "set[str] | list[str]") -> list[asyncio.Task]:
        """Ask these workers now, without waiting for the next beat (a job found them unavailable: its
        answer may predate their start). Bounded like a beat; one check per worker at a time. The tasks
        end once the answers are in (a worker that came online has been announced by then)."""
        for key in worker_ids:
            if key not in self._checks:
                task = asyncio.get_running_loop().create_task(self._check_one(key), name=f"multigpu-check-{key}")
                self._checks[key] = task
                task.add_done_callback(functools.partial(self._check_done, key))
        return [self._checks[key] for key in worker_ids if key in self._checks]

    def _check_done(self, key: str, _task: asyncio.Task) -> None:
        self._checks.pop(key, None)

    async def _check_one(self, key: str) -> None:
        try:
            config = self.store.get()
        except ConfigError:
            return
        for worker in config.workers:
            if str(worker.id) == key:
                await self._beat_one(worker, config.settings)

    def mark_launching(self, worker_id: int | str, seconds: float) -> None:
        """A launcher started this worker: show it as launching until it answers or time runs out."""
        self._launching_until[str(worker_id)] = time.monotonic() + seconds
        self.poke()

    def epoch(self, worker_id: int | str) -> int:
        """Changes each time the worker comes (back) online: what was learnt about it before may be stale."""
        return self._epochs.get(str(worker_id), 0)

    def status(self, worker_id: int | str) -> str | None:
        health = self._health.get(str(worker_id))
        return None if health is None else health.status

    def unavailable(self) -> dict[str, str]:
        """Workers that should not be given work now, with why."""
        return {key: (h.error or h.status) for key, h in self._health.items()
                if h.status in ("offline", "error", "launching")}

    def snapshot(self, workers: list[WorkerConfig]) -> list[dict[str, Any]]:
        """Every configured worker in config order; one not checked yet shows as offline."""
        now = time.monotonic()
        result = []
        for worker in workers:
            health = self._health.get(str(worker.id))
            if health is None or health.address != worker.base_url:
                health = WorkerHealth(worker.id, worker.display_name, worker.base_url, worker.enabled,
                                      status="offline" if worker.enabled else "disabled",
                                      error="no heartbeat yet" if worker.enabled else None)
            result.append(health.as_json(now))
        return result

    async def _run(self) -> None:
        while True:
            try:
                settings = await self.beat()
            except Exception:  # never let the monitor die: log and keep beating
                log.exception("Multi-GPU: health check failed")
                settings = Settings()
            assert self._wake is not None
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=settings.heartbeat_interval)
            except asyncio.TimeoutError:
                pass

    async def beat(self) -> Settings:
        """One round of heartbeats to every configured worker; returns the settings used."""
        try:
            config = self.store.get()
        except ConfigError:
            return Settings()  # reported elsewhere; keep the last known state
        known = {str(w.id) for w in config.workers}
        for key in [k for k in self._health if k not in known]:
            del self._health[key]
        await asyncio.gather(*(self._beat_one(worker, config.settings) for worker in config.workers))
        return config.settings

    async def _beat_one(self, worker: WorkerConfig, settings: Settings) -> None:
        key = str(worker.id)
        health = self._health.get(key)
        if health is None or health.address != worker.base_url:
            health = WorkerHealth(worker.id, worker.display_name, worker.base_url, worker.enabled)
            self._health[key] = health
        health.name, health.enabled = worker.display_name, worker.enabled
        previous = health.status
        if not worker.enabled:
            health.status, health.error = "disabled", None
        else:
            await self._probe(worker, settings, health)
        came_online = health.status in ("idle", "busy") and previous not in ("idle", "busy")
        if came_online:
            self._epochs[key] = self._epochs.get(key, 0) + 1  # (re)connected: cached facts may be stale
        if health.status != previous:
            routine = {previous, health.status} <= {"idle", "busy"}  # every job does this: keep the log quiet
            log.log(logging.DEBUG if routine else logging.INFO, "Multi-GPU: worker %s is %s%s", health.name,
                    health.status, f" ({health.error})" if health.error else "")
            self.notify(*events.worker_status(health.as_json(time.monotonic()), previous))
        if came_online:
            for listener in self._online_listeners:
                listener(key)

    async def _probe(self, worker: WorkerConfig, settings: Settings, health: WorkerHealth) -> None:
        beat_timeout = min(settings.health_ttl, settings.request_timeout)
        quick = settings.model_copy(update={"connect_timeout": min(settings.connect_timeout, beat_timeout),
                                            "request_timeout": beat_timeout})
        if self._session is None or self._session.closed:
            self._session = worker_session()  # shared by every worker: it must keep no cookie of one for another
        client = WorkerClient(worker, quick, self._session)
        key = str(worker.id)
        now = time.monotonic()
        try:
            queue = await client.queue_info()
            stats = await client.system_stats()
        except WorkerError as exc:
            health.error = exc.message
            refused = isinstance(exc, WorkerUnreachable)
            stale = health.last_seen is None or now - health.last_seen > settings.health_ttl
            launching = self._launching_until.get(key, 0) > now
            if launching:
                health.status = "launching"
            elif refused or stale:
                health.status = "offline"
            # otherwise keep the last status until the TTL runs out (one lost beat is not a death)
            return
        self._launching_until.pop(key, None)
        try:
            remaining, device = beat_facts(queue, stats)
        except ValueError:
            health.status, health.error = "error", "the answers are not ComfyUI's (GET /prompt, /system_stats)"
            return
        health.last_seen = now
        health.error = None
        health.queue_remaining = remaining
        health.status = "busy" if remaining else "idle"
        health.device, health.vram_total, health.vram_free = device


def beat_facts(queue: Any, stats: Any) -> tuple[int, tuple[str | None, int | None, int | None]]:
    """Queue length and (device name, VRAM total, VRAM free) from ``GET /prompt`` and ``/system_stats``.

    ValueError for answers of another shape; the device name is shortened (it is shown to anyone).
    """
    exec_info = (queue.get("exec_info") or {}) if isinstance(queue, dict) else None
    remaining = exec_info.get("queue_remaining", 0) if isinstance(exec_info, dict) else None
    if isinstance(remaining, bool) or not isinstance(remaining, (int, float)) or not 0 <= remaining < 2**31:
        raise ValueError("queue_remaining is not a count")  # also refuses NaN and infinity
    devices = (stats.get("devices") if isinstance(stats, dict) else None) or [{}]
    device = devices[0] if isinstance(devices, list) else None
    if not isinstance(device, dict):
        raise ValueError("devices is not a list of objects")
    name = device.get("name")
    return int(remaining), (clip_text(name, 100) if isinstance(name, str) else None,
                            _byte_count(device.get("vram_total")), _byte_count(device.get("vram_free")))


def _byte_count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63 else None
