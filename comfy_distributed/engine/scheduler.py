"""Which participant runs which unit of a job: a pure state machine, no I/O, the one owner of unit state.

A unit is (position, seed offset): position 0 is the master's own batch, position k + 1
is worker k's share, and its seed offset equals its position, so a unit gives the same
images wherever it runs. Events go in (a unit finished or failed, the master became free),
actions come out (dispatch a unit to a worker, run units on the master, give a unit up).
The runner (:mod:`.runner`) carries the actions out; tests feed events and read actions.

Each unit has one :class:`UnitRecord` here (state, worker, attempt, start, causes, time taken), and nothing
else keeps a copy: the rest of the master asks the scheduler. Every dispatch is a new *attempt* of its unit;
a dispatch carries its attempt number, and so does the answer, so a result from an attempt that was given
up on is recognised by one comparison (:meth:`JobScheduler.is_current`). :meth:`JobScheduler.validate`
checks the invariants (the unit tests call it after every step).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Union

from ..config.models import MASTER as MASTER  # the master's participant name, beside the scheduler that plans with it

WorkerId = str
"""Worker ids as strings, so that 1 and "1" are the same worker."""


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
    """Failed more often than ``max_retries`` allows (or no participant is left to run it): left out."""
    SKIPPED = "skipped"
    """Its worker was unavailable and the job says to leave its units out."""

    def __str__(self) -> str:
        return self.value


FINISHED = frozenset({UnitState.DONE, UnitState.SKIPPED, UnitState.GIVEN_UP})
"""States after which a unit changes no more (a unit the master runs ends with the Collector's prompt)."""


@dataclass(slots=True, frozen=True)
class Unit:
    position: int
    seed_offset: int


@dataclass(slots=True)
class UnitRecord:
    """Everything the master knows of where one unit stands; owned by its job's scheduler."""

    position: int
    seed_offset: int
    state: UnitState = UnitState.PENDING
    worker: "WorkerId | None" = None
    """The worker it was last sent to (or skipped on); a unit the master runs keeps the last one."""
    attempt: int = 0
    """Attempts so far (dispatches to a worker and runs on the master); an answer names the attempt it ends."""
    uncounted: int = 0
    """Attempts that ended before the unit ran (a worker found lacking when it reached it): they do not count
    against ``max_retries``."""
    started: float | None = None
    """When the current attempt on a worker started (the scheduler's clock)."""
    causes: list[str] = field(default_factory=list)
    """Why attempts failed or the unit was left out, each as ``name: message``."""
    seconds: float | None = None
    """How long the worker that delivered it took."""

    @property
    def error(self) -> str | None:
        return "; ".join(self.causes) or None


# --- events ---------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class UnitDone:
    position: int
    worker: WorkerId
    attempt: int
    """The attempt this answers (the one of its :class:`Dispatch`)."""
    seconds: float | None = None
    """How long the unit took on that worker (None: not measured, e.g. results the worker posted itself)."""


@dataclass(slots=True, frozen=True)
class UnitFailed:
    position: int
    worker: WorkerId
    attempt: int
    reason: str
    message: str

    @property
    def counts(self) -> bool:
        """Whether the attempt counts against ``max_retries``: not when the worker lacked what the unit needs
        (its preflight failed), since the unit never ran there."""
        return self.reason != "preflight"


@dataclass(slots=True, frozen=True)
class MasterFree:
    """The master finished its own unit and waits in its Collector: it can run units now."""


@dataclass(slots=True, frozen=True)
class MasterRan:
    """The master finished the units it was given; ``seconds`` is how long the last one took."""

    seconds: float


@dataclass(slots=True, frozen=True)
class WorkerJoined:
    """A worker that was unavailable when the job started answers now (and passed its preflight)."""

    worker: WorkerId


Event = Union[UnitDone, UnitFailed, MasterFree, MasterRan, WorkerJoined]


# --- actions --------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Dispatch:
    position: int
    worker: WorkerId
    attempt: int


@dataclass(slots=True, frozen=True)
class RunOnMaster:
    positions: tuple[int, ...]


@dataclass(slots=True, frozen=True)
class GiveUp:
    """A unit left out after its last attempt failed (its record says why)."""

    position: int


@dataclass(slots=True, frozen=True)
class Skip:
    """A unit left out on purpose (its worker was offline and the skip setting is on)."""

    position: int
    worker: WorkerId
    reason: str
    """Why the worker was unavailable."""


Action = Union[Dispatch, RunOnMaster, GiveUp, Skip]




@dataclass(slots=True)
class JobScheduler:
    """Assigns units to participants and re-assigns the units of failed workers.

    ``first_runs`` gives each participant (worker ids, and ``MASTER``) the units it should run
    (static: worker k its own unit; weighted: blocks by weight). Units in no plan are
    shared: the next free participant takes one (dynamic). A worker that fails a unit
    takes no further part in the job and its units become shared. Each unit is tried at
    most ``1 + max_retries`` times. The master takes one unit at a time, once it waits in
    its Collector.
    """

    units: list[Unit]
    """Units outside the master's own graph run (position 0), in position order."""
    workers: list[WorkerId]
    first_runs: dict[str, list[int]] | None = None
    """The job plan's first runs (``engine.plan.JobPlan.first_runs``); None: every unit is shared (dynamic)."""
    unavailable: dict[WorkerId, str] = field(default_factory=dict)
    """Workers known to be down at dispatch, with why."""
    max_retries: int = 2
    skip_unavailable: bool = False
    master_takes_units: bool = True
    """Whether the master can run a unit no worker can (Collector jobs); without it (a prompt forwarded
    whole), a unit that no worker is left to run is given up at once, so the job settles."""
    master_participates: bool = True
    """False (a coordinator-only master): the master takes units only once no worker is left to run them."""
    names: dict[WorkerId, str] = field(default_factory=dict)
    """Worker id -> the name a cause gives it (its id when absent)."""
    learns_unit_times: bool = False
    """Dynamic mode: place shared units by how long a unit took each participant in this job."""
    clock: Callable[[], float] = time.monotonic

    records: dict[int, UnitRecord] = field(init=False)
    """Every unit's one record, by position."""
    queues: dict[str, list[int]] = field(default_factory=dict)
    """Per participant: the pending units planned for it, in order."""
    shared: list[int] = field(default_factory=list)
    """Pending units any participant may take, in position order."""
    excluded: set[WorkerId] = field(default_factory=set)
    """Workers that take no (more) units: failed one, or unavailable."""
    absent: set[WorkerId] = field(default_factory=set)
    """Excluded because unavailable at the start, not for failing a unit: they may still join."""
    master_free: bool = False
    unit_seconds: dict[str, float] = field(default_factory=dict)
    """Seconds a unit took each participant in this job (a moving average), learnt from ``UnitDone.seconds``
    and ``MasterRan``."""
    master_busy_until: float = 0.0

    def __post_init__(self) -> None:
        self.records = {u.position: UnitRecord(u.position, u.seed_offset) for u in self.units}

    @classmethod
    def static(cls, workers: list[WorkerId], **kwargs) -> "JobScheduler":
        """The original README's plan: worker k runs unit k + 1 (its own batch with seed + k + 1)."""
        units = [Unit(k + 1, k + 1) for k in range(len(workers))]
        return cls(units, list(workers), first_runs={w: [k + 1] for k, w in enumerate(workers)}, **kwargs)

    # --- queries --------------------------------------------------------------------------

    @property
    def pending(self) -> list[int]:
        """Units waiting for a participant, planned or shared."""
        return [p for queue in self.queues.values() for p in queue] + list(self.shared)

    def record(self, position: int) -> UnitRecord:
        return self.records[position]

    def state_of(self, position: int) -> UnitState:
        """Where the unit at ``position`` stands now."""
        return self.records[position].state

    def positions(self, state: UnitState) -> list[int]:
        """The units in ``state``, in position order."""
        return sorted(p for p, r in self.records.items() if r.state is state)

    def running_on(self, worker: WorkerId) -> int:
        """How many units run on ``worker`` now."""
        return sum(1 for r in self.records.values() if r.state is UnitState.RUNNING and r.worker == worker)

    def is_current(self, position: int, attempt: int) -> bool:
        """Whether ``attempt`` of the unit still runs on its worker: its answer counts (else it is stale)."""
        record = self.records.get(position)
        return record is not None and record.state is UnitState.RUNNING and record.attempt == attempt

    def will_rerun(self, actions: list[Action], position: int) -> bool:
        """Whether the unit at ``position`` runs again after the ``actions`` a failure of it returned."""
        return not any(isinstance(a, GiveUp) and a.position == position for a in actions)

    def settled(self) -> bool:
        """No unit waits for a participant or runs on a worker: the Collector can finish."""
        return not any(r.state in (UnitState.PENDING, UnitState.RUNNING) for r in self.records.values())

    def validate(self) -> None:
        """Raise AssertionError when the records contradict each other or the queues (tests call it after
        every step)."""
        queued = self.pending
        assert len(queued) == len(set(queued)), f"a unit queued twice: {queued}"
        busy: set[WorkerId] = set()
        for position, record in self.records.items():
            assert (record.state is UnitState.PENDING) == (position in queued), \
                f"unit {position} is {record.state} but {'' if position in queued else 'not '}queued"
            assert record.attempt - record.uncounted <= 1 + self.max_retries, f"unit {position}: {record.attempt} tries"
            if record.state is UnitState.RUNNING:
                assert record.worker is not None and record.worker not in busy, f"unit {position}: its worker runs two"
                assert record.worker not in self.excluded and record.attempt >= 1 and record.started is not None
                busy.add(record.worker)
            if record.state is UnitState.DONE:
                assert record.worker is not None, f"unit {position} is done by nobody"
            if record.state in (UnitState.GIVEN_UP, UnitState.SKIPPED):
                assert record.causes, f"unit {position} was left out with no cause"
        assert self.absent <= self.excluded, "an absent worker takes units"

    # --- events in, actions out -----------------------------------------------------------

    def start(self) -> list[Action]:
        planned = set()
        for participant, positions in (self.first_runs or {}).items():
            self.queues[participant] = list(positions)
            planned.update(positions)
        self.shared = [p for p in sorted(self.records) if p not in planned]
        actions: list[Action] = []
        for worker in self.workers:
            if worker not in self.unavailable:
                continue
            self.excluded.add(worker)
            self.absent.add(worker)
            cause = f"{self._name(worker)}: {self.unavailable[worker]}"
            for position in self.queues.pop(worker, []):
                record = self.records[position]
                record.causes.append(cause)
                if self.skip_unavailable:
                    record.state, record.worker = UnitState.SKIPPED, worker
                    actions.append(Skip(position, worker, self.unavailable[worker]))
                else:
                    self.shared.append(position)
        self.shared.sort()
        return self._assign() + actions

    def handle(self, event: Event) -> list[Action]:
        if isinstance(event, MasterRan):
            self._learn(MASTER, event.seconds)
            return []
        if isinstance(event, UnitDone):
            if self.is_current(event.position, event.attempt):
                record = self.records[event.position]
                record.state, record.seconds = UnitState.DONE, event.seconds
                if event.seconds is not None:
                    self._learn(event.worker, event.seconds)
        elif isinstance(event, UnitFailed):
            if not self.is_current(event.position, event.attempt):
                return []  # stale: the unit was already finished or moved
            return self._failed(event)
        elif isinstance(event, MasterFree):
            self.master_free = True
        elif isinstance(event, WorkerJoined) and event.worker in self.absent:
            self.absent.discard(event.worker)
            self.excluded.discard(event.worker)  # it takes pending and re-run units from now on
        return self._assign()

    def _failed(self, event: UnitFailed) -> list[Action]:
        record = self.records[event.position]
        record.causes.append(f"{self._name(event.worker)}: {event.message}")
        self.excluded.add(event.worker)
        self.shared.extend(self.queues.pop(event.worker, []))
        record.uncounted += not event.counts
        if record.attempt - record.uncounted > self.max_retries:
            record.state = UnitState.GIVEN_UP
            self.shared.sort()
            return [GiveUp(event.position)] + self._assign()
        record.state = UnitState.PENDING
        self.shared.append(event.position)
        self.shared.sort()
        return self._assign()

    def _name(self, worker: WorkerId) -> str:
        return self.names.get(worker, worker)

    def _learn(self, participant: str, seconds: float) -> None:
        if not self.learns_unit_times or seconds <= 0:
            return
        previous = self.unit_seconds.get(participant)
        self.unit_seconds[participant] = seconds if previous is None else (previous + seconds) / 2

    def _dispatch(self, position: int, worker: WorkerId) -> Dispatch:
        record = self.records[position]
        record.state, record.worker, record.started = UnitState.RUNNING, worker, self.clock()
        record.attempt += 1
        return Dispatch(position, worker, record.attempt)

    def _next_for(self, participant: str) -> int | None:
        own = self.queues.get(participant)
        if own:
            return own.pop(0)
        if self.shared and self._worth_taking(participant):
            return self.shared.pop(0)
        return None

    def _worth_taking(self, participant: str) -> bool:
        """Whether ``participant`` should take a shared unit now rather than leave it to a faster one.

        The shared units are placed one by one where they would finish first, each busy participant
        being free after its current unit, with the unit times measured in this job. A participant
        that would finish none of them first stays idle: at the end of a job a slow GPU does not take
        a unit that a fast one finishes sooner. Until it has a time of its own, a participant takes work.
        """
        mine = self.unit_seconds.get(participant)
        if mine is None:
            return True
        now = self.clock()
        busy_until = {r.worker: (r.started or now) + self.unit_seconds[r.worker] for r in self.records.values()
                      if r.state is UnitState.RUNNING and r.worker in self.unit_seconds}
        free: dict[str, float] = {participant: now}
        for worker in self.workers:
            if worker != participant and worker not in self.excluded and worker in self.unit_seconds:
                free[worker] = max(now, busy_until.get(worker, now))
        if participant != MASTER and MASTER in self.unit_seconds and (self.master_free or self.master_busy_until):
            free[MASTER] = now if self.master_free else max(now, self.master_busy_until)
        for _ in range(len(self.shared)):
            best = min(free, key=lambda p: (free[p] + self.unit_seconds[p], p != participant))
            if best == participant:
                return True
            free[best] += self.unit_seconds[best]
        return False

    def _assign(self) -> list[Action]:
        actions: list[Action] = []
        if self.shared or any(self.queues.values()):  # else no worker has a unit to take: skip the walk over all
            busy = {r.worker for r in self.records.values() if r.state is UnitState.RUNNING}
            for worker in self.workers:
                if worker in self.excluded or worker in busy:
                    continue
                position = self._next_for(worker)
                if position is not None:
                    actions.append(self._dispatch(position, worker))
        if self.master_free and (self.master_participates or set(self.workers) <= self.excluded):
            position = self._next_for(MASTER)
            if position is not None:
                self.master_free = False
                self.master_busy_until = self.clock() + self.unit_seconds.get(MASTER, 0.0)
                record = self.records[position]
                record.state = UnitState.MASTER
                record.attempt += 1
                actions.append(RunOnMaster((position,)))
        if not self.master_takes_units and self.shared and set(self.workers) <= self.excluded:
            for position in self.shared:  # nobody is left to run them
                record = self.records[position]
                record.state = UnitState.GIVEN_UP
                record.causes = record.causes or ["no worker is left to run it"]
                actions.append(GiveUp(position))
            self.shared.clear()
        return actions
