"""A distributed job's data: its units, where each runs and what it brought back, and the job around them.

Plain records, changed only on the server loop by the runner and the job's owner
(:class:`~..collector.orchestrator.Orchestrator`, :class:`~..queue_mode.balancer.QueueBalancer`), under the owner's
lock where the execution thread reads them too. ``UnitState`` and ``FINISHED`` live in
:mod:`.scheduler`, the one owner of where a unit stands, and are re-exported here.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar


from .handoff import MasterHandoff
from ..cluster.transport import UnitTransport
from ..config import Settings, WorkerConfig
from .scheduler import FINISHED, Action, JobScheduler, UnitRecord, UnitState
from ..worker_client import Channel, PromptResult
from ..graph.workflow import Prompt


COLLECT_POLL = 0.1
"""Seconds between interrupt checks while a Collector waits."""

UNCLAIMED_JOB_TTL = 3600.0
"""Seconds a settled job waits for its Collectors (the master may be busy) before it is dropped."""

RESERVATION_TTL = 600.0
"""Seconds a job id from ``prepare_job`` stays valid for the prompt that is queued with it."""

PROGRESS_INTERVAL = 0.25
"""Seconds between two ``multigpu.job_progress`` events of one job that only report units' progress."""

STATE_INTERVAL = 0.05
"""Seconds between two ``multigpu.job_progress`` events of one job that report units changing state."""

DEADLINE_MARGIN = 30.0
"""Seconds added to a job's deadline (:meth:`UnitJob.deadline`)."""

UNKNOWN_BATCH_IMAGES = 64
"""Images a share may post per Collector when the workflow's batch size is not a literal."""

EXTRA_DATA_KEY = "multigpu"
"""Key in a worker prompt's ``extra_data`` with what a worker running this extension needs
to post its results back (job id, worker id, the share's own token)."""


@dataclass(slots=True)
class UnitRun:
    """One unit of a job: what it runs and what it brought back.

    Where it stands, where it runs, its attempts and why they failed are its record's, which the job's scheduler
    owns (:meth:`UnitJob.record`); nothing of that is kept here.
    """

    position: int
    seed_offset: int
    prompt: Prompt
    batch: int | None = None
    """Images in this unit; None: the workflow's own batch size (static mode)."""
    values: dict[str, Any] = field(default_factory=dict)
    """Multi-GPU Value node -> the literal this unit uses (its home participant's), wherever it runs."""
    images: dict[str, Any] = field(default_factory=dict)
    """What the unit brought back, by output key (a Collector's files by kind; a forwarded prompt's files)."""
    decoded: dict[str, Any] = field(default_factory=dict)
    """Files already decoded as they arrived, by output key (the Collector then only joins them)."""
    token: str = ""
    """The current attempt's share token: a worker running this extension posts its results with it."""
    task: asyncio.Task | None = None
    progress: float = 0.0


@dataclass(slots=True, kw_only=True)
class UnitJob:
    """What every kind of job has for the runner: units, the workers that may run them, the scheduler
    that owns where each unit stands, and the connections of the job while it runs (server loop)."""

    job_id: str
    kind: "JobKind[Any]"
    """What its kind adds to the runner: how a unit is sent and fetched, what the job does with the rest."""
    units: dict[int, UnitRun]
    workers: dict[str, WorkerConfig]
    settings: Settings
    scheduler: JobScheduler
    created: float = field(default_factory=time.monotonic)
    settled: threading.Event = field(default_factory=threading.Event)
    """Set once no unit waits for a participant or runs on a worker (or the job ended early)."""
    begun: bool = False
    """The scheduler has been started (for a Collector job, after the workers' preflight)."""
    cancelled: bool = False
    loop: asyncio.AbstractEventLoop | None = None
    channels: dict[str, Channel] = field(default_factory=dict)
    """Per worker: the websocket its units of this job follow."""
    released: bool = False
    """Its connections are being released (the job settled)."""
    closed: bool = False
    """Its unit tasks have ended and its websockets are closed."""
    media_names: dict[str, dict[str, str]] = field(default_factory=dict)
    """Per worker: an input file's value in the prompt -> its name on that worker."""
    media: list[Any] = field(default_factory=list)
    """The master's input files the prompt loads (``worker_prep.MediaFile``), for a worker that joins late."""
    joining: set[str] = field(default_factory=set)
    """Workers being prepared to join the job after its start."""
    prompt_id: str | None = None
    """The master's prompt the job belongs to (its id in the master's queue, once the master accepted it)."""
    claimed: set[str] = field(default_factory=set)
    """The outputs (Collectors, stand-ins' nodes) that took their part of the job."""

    def state_of(self, position: int) -> UnitState:
        return self.scheduler.state_of(position)

    def record(self, position: int) -> UnitRecord:
        """The unit's one record (state, worker, attempt, causes), the scheduler's."""
        return self.scheduler.record(position)

    def worker_of(self, position: int) -> WorkerConfig | None:
        """The worker the unit was last sent to (None: never sent to one)."""
        worker = self.scheduler.record(position).worker
        return self.workers.get(worker) if worker is not None else None

    def shown_worker(self, position: int) -> tuple[int | str | None, str | None]:
        """(id, name) of the worker the unit was last sent to, as events and the status show it; (None, None)."""
        worker = self.worker_of(position)
        return (worker.id, worker.display_name) if worker is not None else (None, None)

    def name_of(self, position: int) -> str:
        """The name of the worker the unit was last sent to, or ``unit N``."""
        worker = self.worker_of(position)
        return worker.display_name if worker is not None else f"unit {position}"

    def collected(self, position: int) -> Collected:
        """The unit as a Collector receives it."""
        unit, worker = self.units[position], self.worker_of(position)
        return Collected(position, unit.seed_offset, unit.batch, unit.decoded, worker.id if worker else None,
                         self.name_of(position), self.record(position).error)

    def unit_list(self) -> list[UnitRun]:
        return [self.units[p] for p in sorted(self.units)]

    def progress(self) -> tuple[float, dict[int, float]]:
        """The job's progress (0 to 1) and each unit's: a finished unit counts whole, whatever it reported; what
        ``multigpu.job_progress`` and ``GET /multigpu/status`` both say."""
        each = {p: 1.0 if self.state_of(p) in FINISHED else unit.progress for p, unit in sorted(self.units.items())}
        return (round(sum(each.values()) / len(each), 4) if each else 1.0), each

    def deadline(self, start: float | None = None) -> float:
        """The latest the job can settle, from ``start`` (its creation): every unit run has its own worker
        timeout, so this only guards a wait against a bug. Each participant's share of the units, each tried
        ``1 + max_retries`` times, one more round, and a margin."""
        rounds = max(1.0, len(self.units) / (len(self.workers) + 1))
        per_round = self.settings.worker_timeout * (2 + self.settings.max_retries)
        return (self.created if start is None else start) + per_round * rounds + DEADLINE_MARGIN

    def running_on(self, worker_id: str) -> int:
        """How many of this job's units run on ``worker_id`` now."""
        return self.scheduler.running_on(worker_id)


J = TypeVar("J", bound="UnitJob")


class JobKind(Generic[J]):
    """What one kind of job adds to the runner. The defaults fit a job with nothing to add."""

    name = "units"
    """The kind's name in the metrics (``jobs_started_total{kind=...}``)."""

    master_runs_given_up = False
    """Whether the master runs a unit the scheduler gives up (so a worker's failure always means a re-run)."""

    learns_speeds = True
    """Whether a unit's time says how fast its participant makes images (a tile's does not)."""

    image_frames = False
    """Whether a unit's ``PreviewImage`` outputs may come as websocket frames where a worker offers
    ``SaveImageWebsocket`` (:mod:`..worker_client.image_frames`): only for a kind that reads its files with
    ``fetch_files``."""

    def extra_data(self, job: J, unit: UnitRun, worker: WorkerConfig) -> dict | None:
        """The ``extra_data`` the unit's prompt is queued with on the worker."""
        return None

    counts_its_end = False
    """Whether :meth:`Runner.settle` counts the job's end in the metrics (else its owner does, when it reports it)."""

    def synced(self, job: J) -> set[str]:
        """Values of the unit prompts' file inputs that reach a worker with the unit (a preflight takes them as
        present)."""
        return set()

    async def unit_prompt(self, job: J, unit: UnitRun, client: UnitTransport) -> dict:
        """The unit's prompt as ``client``'s worker runs it (a kind may first put a file there)."""
        return unit.prompt

    def wanted(self, job: J, unit: UnitRun) -> frozenset[str]:
        """The output nodes whose files make the unit's result: once they all reported them on the
        worker's websocket, the files are fetched without waiting for the prompt's end."""
        return frozenset()

    async def fetch(self, job: J, unit: UnitRun, client: UnitTransport, result: PromptResult,
                    deadline: float) -> dict[str, Any]:
        """What the finished prompt brought back, by output key (kept in ``unit.images``)."""
        raise NotImplementedError

    def unit_done(self, job: J, unit: UnitRun, worker: WorkerConfig, seconds: float) -> None:
        """A worker delivered the unit in ``seconds`` (before the scheduler hears of it)."""

    def unit_images(self, job: J, unit: UnitRun) -> int:
        """How many images the unit made (the metrics count them)."""
        return unit.batch or 1

    def carry_out(self, job: J, action: Action) -> None:
        """An action other than a dispatch (run units on the master, a unit given up or skipped)."""

    def changed(self, job: J, force: bool) -> None:
        """Something moved (a unit's progress, or its state when ``force``): report it if the kind reports."""

    def failure_job_id(self, job: J) -> str | None:
        """The job id to name in a ``multigpu.worker_failed`` event (None: none the UI knows)."""
        return job.job_id

    def settled(self, job: J) -> None:
        """The job settled (every unit done, given up or cancelled); may be told more than once."""


@dataclass(slots=True, kw_only=True)
class Job(UnitJob):
    """A Collector job: the units of one prompt's batch spread over the master and the workers."""

    collectors: list[str]
    error: str | None = None
    last_progress: float = 0.0
    progress_due: bool = False
    """A change of state waits to be reported (at most STATE_INTERVAL after the last report)."""
    ended: bool = False
    mode: str = "static"
    master: MasterHandoff = field(default_factory=MasterHandoff)
    """The units the master runs, handed from the loop to the Collector on the execution thread."""
    kinds: dict[str, list[str]] = field(default_factory=dict)
    """Per Collector: what it collects (images, latent, audio)."""
    batch: int | None = None
    """The workflow's literal batch size, when it has one (for speed measurements)."""


@dataclass(slots=True, frozen=True)
class ShareLimits:
    """What one worker's share of a job may carry back: Collectors, and images per Collector."""

    collectors: int
    images: int


@dataclass(slots=True, frozen=True)
class Collected:
    """A unit as a Collector receives it: what it brought, and who ran it (read from its record once)."""

    position: int
    seed_offset: int
    batch: int | None
    decoded: dict[str, Any]
    worker_id: int | str | None
    name: str
    """The worker's name, or ``unit N``."""
    error: str | None
    """Why it was left out (a skipped unit)."""


@dataclass(slots=True)
class CollectorResult:
    """What a Collector needs: each worker unit's files by kind, units the master ran, what failed."""

    outputs: list[tuple[Collected, dict[str, Any]]]
    master_units: list[UnitRun]
    failures: list[Collected]

    @property
    def images(self) -> list[tuple[Collected, list[bytes]]]:
        return [(unit, files["images"]) for unit, files in self.outputs if "images" in files]

