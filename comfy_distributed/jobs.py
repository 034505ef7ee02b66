"""A distributed job's data: its units, where each runs and what it brought back, and the job around them.

Plain records, changed only by :class:`~.orchestrator.Orchestrator` (on the server loop, under
its lock where the execution thread reads them too).
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable

import aiohttp

from .config import Settings, WorkerConfig
from .scheduler import JobScheduler
from .workflow import Prompt


Notify = Callable[[str, dict[str, Any]], None]
"""Sends an event to the master's UI clients: (event name, JSON-able data)."""

COLLECT_POLL = 0.1
"""Seconds between interrupt checks while a Collector waits."""

UNCLAIMED_JOB_TTL = 3600.0
"""Seconds a settled job waits for its Collectors (the master may be busy) before it is dropped."""

RESERVATION_TTL = 600.0
"""Seconds a job id from ``prepare_job`` stays valid for the prompt that is queued with it."""

PROGRESS_INTERVAL = 0.25
"""Seconds between two ``multigpu.job_progress`` events of one job."""

UNKNOWN_BATCH_IMAGES = 64
"""Images a share may post per Collector when the workflow's batch size is not a literal."""

EXTRA_DATA_KEY = "multigpu"
"""Key in a worker prompt's ``extra_data`` with what a worker running this extension needs
to post its results back (job id, worker id, the share's own token)."""


class UnitState(str, Enum):
    """Where a unit stands; sent as its value (``"done"``), in events and in ``GET /multigpu/status``."""

    PENDING = "pending"
    """Waiting for a participant."""
    RUNNING = "running"
    """Sent to a worker, which has not finished it."""
    DONE = "done"
    """A worker's results are here."""
    MASTER = "master"
    """Run by the master itself, in the Collector's prompt."""
    GIVEN_UP = "given_up"
    """Failed more often than ``settings.max_retries`` allows: left out."""
    SKIPPED = "skipped"
    """Its worker was unavailable and ``settings.skip_offline_workers`` says to leave it out."""

    def __str__(self) -> str:
        return self.value


FINISHED = frozenset({UnitState.DONE, UnitState.SKIPPED, UnitState.GIVEN_UP})
"""States after which a unit changes no more (a unit the master runs ends with the Collector's prompt)."""


@dataclass(slots=True)
class UnitRun:
    """One unit of a job: where it runs, and its images or what went wrong."""

    position: int
    seed_offset: int
    prompt: Prompt
    batch: int | None = None
    """Images in this unit; None: the workflow's own batch size (static mode)."""
    state: UnitState = UnitState.PENDING
    started: float = 0.0
    worker: WorkerConfig | None = None
    images: dict[str, list[bytes]] = field(default_factory=dict)
    token: str = ""
    task: asyncio.Task | None = None
    progress: float = 0.0
    causes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.worker.display_name if self.worker else f"unit {self.position}"

    @property
    def error(self) -> str | None:
        return "; ".join(self.causes) or None


@dataclass(slots=True)
class Job:
    job_id: str
    collectors: list[str]
    units: dict[int, UnitRun]
    workers: dict[str, WorkerConfig]
    settings: Settings
    created: float
    error: str | None = None
    prompt_id: str | None = None
    scheduler: JobScheduler | None = None
    settled: threading.Event = field(default_factory=threading.Event)
    claimed: set[str] = field(default_factory=set)
    master_free_sent: bool = False
    cancelled: bool = False
    loop: asyncio.AbstractEventLoop | None = None
    session: aiohttp.ClientSession | None = None
    last_progress: float = 0.0
    ended: bool = False
    mode: str = "static"
    plan: dict[str, list[int]] | None = None
    """Participant (``master`` or a worker id) -> the positions it runs first; None in dynamic mode."""
    master_positions: list[int] = field(default_factory=list)
    changed: threading.Event = field(default_factory=threading.Event)
    master_asked: bool = False
    master_started: float = 0.0
    kinds: dict[str, list[str]] = field(default_factory=dict)
    """Per Collector: what it collects (images, latent, audio)."""
    batch: int | None = None
    """The workflow's literal batch size, when it has one (for speed measurements)."""
    media_names: dict[str, dict[str, str]] = field(default_factory=dict)
    """Per worker: an input file's value in the prompt -> its name on that worker."""

    def unit_list(self) -> list[UnitRun]:
        return [self.units[p] for p in sorted(self.units)]


@dataclass(slots=True, frozen=True)
class ShareLimits:
    """What one worker's share of a job may carry back: Collectors, and images per Collector."""

    collectors: int
    images: int


@dataclass(slots=True)
class CollectorResult:
    """What a Collector needs: each worker unit's files by kind, units the master ran, what failed."""

    outputs: list[tuple[UnitRun, dict[str, list[bytes]]]]
    master_units: list[UnitRun]
    failures: list[UnitRun]

    @property
    def images(self) -> list[tuple[UnitRun, list[bytes]]]:
        return [(unit, files["images"]) for unit, files in self.outputs if "images" in files]
