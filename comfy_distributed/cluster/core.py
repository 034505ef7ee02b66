"""The cluster as the owners of jobs share it: one of each thing that is about the participants, not a job.

The Collector's orchestrator and the queue mode's balancer each own jobs of their kinds; what they both use is
here, once: the config, the workers' health, each worker's node classes (``/object_info``), how fast each
participant is, what it loaded last, the counters, one HTTP session per worker, one relay of preview frames
and one bound on uploads. A second owner, or a second way of reaching a worker, is handed the same object.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from ..config import ConfigStore, GpuConfig, Settings, WorkerConfig
from ..events import Notify, log_notify
from .metrics import Metrics
from ..worker_client import SessionPool, WorkerClient
from .loaded_models import LoadedModels
from .preflight import MediaUploads, ObjectInfoCache
from .previews import PreviewRelay
from .speeds import Speeds

from .transport import SharedPool, UnitTransport

if TYPE_CHECKING:
    from .health import HealthMonitor


class Cluster:
    """What every owner of jobs on one master shares (see the module doc); closed when the master stops."""

    def __init__(self, store: ConfigStore, notify: Notify = log_notify, health: "HealthMonitor | None" = None) -> None:
        self.store = store
        self.notify: Notify = notify
        """Sends an event to the UI (tests put their own in)."""
        self._health: "HealthMonitor | None" = None
        self._online: list[Callable[[str], None]] = []
        self.object_info = ObjectInfoCache(self._epoch)
        """Each worker's node classes; one fetch serves every owner."""
        self.files_only: set[str] = set()
        """Workers whose units lost an image sent as a websocket frame: theirs come as files from then on."""
        self.speeds = Speeds()
        self.models = LoadedModels()
        """The checkpoints each participant ran last (queue mode routes by them)."""
        self.metrics = Metrics()
        """The master's counters (``GET /multigpu/metrics``)."""
        self.sessions = SessionPool()
        """One HTTP session per worker, kept across units and jobs until :meth:`close`."""
        self.previews = PreviewRelay(lambda event, data: self.notify(event, data))
        """The units' preview frames, relayed while a client registered for previews watches."""
        self.uploads = MediaUploads()
        """Input files sent to workers, with one bound on how many at once."""
        self.health = health
        self.pool: SharedPool | None = None
        """This master in its shared pool, when one is configured: its live agents are participants too."""

    @property
    def health(self) -> "HealthMonitor | None":
        """The workers' health; whoever asked :meth:`on_online` hears from it when a worker comes online."""
        return self._health

    @health.setter
    def health(self, monitor: "HealthMonitor | None") -> None:
        self._health = monitor
        if monitor is not None:
            for callback in self._online:
                monitor.on_online(callback)

    def on_online(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(worker_id)`` when a worker comes (back) online."""
        self._online.append(callback)
        if self._health is not None:
            self._health.on_online(callback)

    def _epoch(self, worker_id: str) -> int:
        return self._health.epoch(worker_id) if self._health is not None else 0

    def config(self) -> GpuConfig:
        """The config a job is planned with now: the file's (less the workers given to the pool), and a slot per
        live agent of the pool among its enabled workers (:meth:`..pool.member.PoolMember.with_slots`). ConfigError when the file is broken."""
        config = self.store.get()
        return self.pool.with_slots(config.without_pool_workers()) if self.pool is not None else config

    def client(self, worker: WorkerConfig, settings: Settings, job_id: str = "") -> UnitTransport:
        """How ``worker`` is reached for ``job_id``: a slot of the pool through the pool, any other worker directly,
        on its kept session (its connections serve every unit of every job there)."""
        if self.pool is not None and self.pool.owns(worker):
            return self.pool.transport(worker, settings, job_id)
        return self.direct(worker, settings)

    def direct(self, worker: WorkerConfig, settings: Settings) -> WorkerClient:
        """A client of a configured worker on its kept session."""
        return WorkerClient(worker, settings, self.sessions.get(str(worker.id), worker.base_url))

    async def job_ended(self, job_id: str) -> None:
        """A job released its connections: the pool forgets it (its units not taken yet are deleted)."""
        if self.pool is not None:
            await self.pool.close_job(job_id)

    async def close(self) -> None:
        """Close the workers' sessions and leave the pool (the master shuts down); a job still running loses its
        connections."""
        await self.sessions.close()
        if self.pool is not None:
            await self.pool.close()
