"""Which participant runs which unit of a job: a pure state machine, no I/O, the one owner of unit state.

A unit is (position, seed offset): position 0 is the master's own batch, position k + 1
is worker k's share, and its seed offset equals its position, so a unit gives the same
images wherever it runs. Events go in (a unit finished or failed, the master became free),
actions come out (dispatch a unit to a worker, run units on the master, give a unit up).
The runner (:mod:`.runner`) carries the actions out; tests feed events and read actions.
Where a unit stands (:class:`UnitState`) is asked of the scheduler, never kept elsewhere.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Union

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


# --- events ---------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class UnitDone:
    position: int
    worker: WorkerId
    seconds: float | None = None
    """How long the unit took on that worker (None: not measured, e.g. results the worker posted itself)."""


@dataclass(slots=True, frozen=True)
class UnitFailed:
    position: int
    worker: WorkerId
    reason: str
    message: str


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


@dataclass(slots=True, frozen=True)
class RunOnMaster:
    positions: tuple[int, ...]


@dataclass(slots=True, frozen=True)
class GiveUp:
    position: int
    causes: tuple[str, ...]


@dataclass(slots=True, frozen=True)
class Skip:
    """A unit left out on purpose (its worker was offline and the skip setting is on)."""

    position: int
    worker: WorkerId
    cause: str


Action = Union[Dispatch, RunOnMaster, GiveUp, Skip]


MASTER = "master"
"""The participant name of the master in plans."""


@dataclass(slots=True)
class JobScheduler:
    """Assigns units to participants and re-assigns the units of failed workers.

    ``plan`` gives each participant (worker ids, and ``MASTER``) the units it should run
    (static: worker k its own unit; weighted: blocks by weight). Units in no plan are
    shared: the next free participant takes one (dynamic). A worker that fails a unit
    takes no further part in the job and its units become shared. Each unit is tried at
    most ``1 + max_retries`` times. The master takes one unit at a time, once it waits in
    its Collector.
    """

    units: list[Unit]
    """Units outside the master's own graph run (position 0), in position order."""
    workers: list[WorkerId]
    plan: dict[str, list[int]] | None = None
    unavailable: dict[WorkerId, str] = field(default_factory=dict)
    """Workers known to be down at dispatch, with why."""
    max_retries: int = 2
    skip_unavailable: bool = False
    master_takes_units: bool = True
    """Whether the master can run a unit no worker can (Collector jobs); without it (a prompt forwarded
    whole), a unit that no worker is left to run is given up at once, so the job settles."""
    master_participates: bool = True
    """False (a coordinator-only master): the master takes units only once no worker is left to run them."""

    queues: dict[str, list[int]] = field(default_factory=dict)
    shared: list[int] = field(default_factory=list)
    running: dict[int, WorkerId] = field(default_factory=dict)
    on_master: list[int] = field(default_factory=list)
    done: set[int] = field(default_factory=set)
    given_up: dict[int, tuple[str, ...]] = field(default_factory=dict)
    skipped: set[int] = field(default_factory=set)
    attempts: dict[int, int] = field(default_factory=dict)
    causes: dict[int, list[str]] = field(default_factory=dict)
    excluded: set[WorkerId] = field(default_factory=set)
    absent: set[WorkerId] = field(default_factory=set)
    """Excluded because unavailable at the start, not for failing a unit: they may still join."""
    master_free: bool = False
    learns_unit_times: bool = False
    """Dynamic mode: place shared units by how long a unit took each participant in this job."""
    unit_seconds: dict[str, float] = field(default_factory=dict)
    """Seconds a unit took each participant in this job (a moving average), learnt from ``UnitDone.seconds``
    and ``MasterRan``."""
    clock: Callable[[], float] = time.monotonic
    started: dict[int, float] = field(default_factory=dict)
    master_busy_until: float = 0.0

    @classmethod
    def static(cls, workers: list[WorkerId], **kwargs) -> "JobScheduler":
        """The original README's plan: worker k runs unit k + 1 (its own batch with seed + k + 1)."""
        units = [Unit(k + 1, k + 1) for k in range(len(workers))]
        return cls(units, list(workers), plan={w: [k + 1] for k, w in enumerate(workers)}, **kwargs)

    @property
    def pending(self) -> list[int]:
        """Units waiting for a participant, planned or shared."""
        return [p for queue in self.queues.values() for p in queue] + list(self.shared)

    def state_of(self, position: int) -> UnitState:
        """Where the unit at ``position`` stands now."""
        if position in self.done:
            return UnitState.DONE
        if position in self.given_up:
            return UnitState.GIVEN_UP
        if position in self.skipped:
            return UnitState.SKIPPED
        if position in self.running:
            return UnitState.RUNNING
        if position in self.on_master:
            return UnitState.MASTER
        return UnitState.PENDING

    def will_rerun(self, actions: list[Action], position: int) -> bool:
        """Whether the unit at ``position`` runs again after the ``actions`` a failure of it returned."""
        return not any(isinstance(a, GiveUp) and a.position == position for a in actions)

    def start(self) -> list[Action]:
        planned = set()
        for participant, positions in (self.plan or {}).items():
            self.queues[participant] = list(positions)
            planned.update(positions)
        self.shared = [u.position for u in self.units if u.position not in planned]
        actions: list[Action] = []
        for worker in self.workers:
            if worker not in self.unavailable:
                continue
            self.excluded.add(worker)
            self.absent.add(worker)
            cause = f"{worker}: {self.unavailable[worker]}"
            for position in self.queues.pop(worker, []):
                if self.skip_unavailable:
                    self.skipped.add(position)
                    actions.append(Skip(position, worker, cause))
                else:
                    self.causes.setdefault(position, []).append(cause)
                    self.shared.append(position)
        self.shared.sort()
        return self._assign() + actions

    def handle(self, event: Event) -> list[Action]:
        if isinstance(event, MasterRan):
            self._learn(MASTER, event.seconds)
            return []
        if isinstance(event, UnitDone):
            if self.running.get(event.position) == event.worker:
                del self.running[event.position]
                self.done.add(event.position)
                if event.seconds is not None:
                    self._learn(event.worker, event.seconds)
        elif isinstance(event, UnitFailed):
            if self.running.get(event.position) != event.worker:
                return []  # stale: the unit was already finished or moved
            del self.running[event.position]
            self.excluded.add(event.worker)
            self.shared.extend(self.queues.pop(event.worker, []))
            self.causes.setdefault(event.position, []).append(f"{event.worker}: {event.message}")
            if self.attempts.get(event.position, 0) > self.max_retries:
                self.shared.sort()
                return [self._give_up(event.position)] + self._assign()
            self.shared.append(event.position)
            self.shared.sort()
        elif isinstance(event, MasterFree):
            self.master_free = True
        elif isinstance(event, WorkerJoined) and event.worker in self.absent:
            self.absent.discard(event.worker)
            self.excluded.discard(event.worker)  # it takes pending and re-run units from now on
        return self._assign()

    def _give_up(self, position: int) -> GiveUp:
        causes = tuple(self.causes.get(position, ()))
        self.given_up[position] = causes
        return GiveUp(position, causes)

    def _learn(self, participant: str, seconds: float) -> None:
        if not self.learns_unit_times or seconds <= 0:
            return
        previous = self.unit_seconds.get(participant)
        self.unit_seconds[participant] = seconds if previous is None else (previous + seconds) / 2

    def settled(self) -> bool:
        """No unit waits for a participant or runs on a worker: the Collector can finish."""
        return not self.running and not self.pending

    def _dispatch(self, position: int, worker: WorkerId) -> Dispatch:
        self.running[position] = worker
        self.started[position] = self.clock()
        self.attempts[position] = self.attempts.get(position, 0) + 1
        return Dispatch(position, worker)

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
        busy_until = {worker: self.started[position] + self.unit_seconds[worker]
                      for position, worker in self.running.items() if worker in self.unit_seconds}
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
        busy = set(self.running.values())
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
                self.attempts[position] = self.attempts.get(position, 0) + 1
                self.on_master.append(position)
                actions.append(RunOnMaster((position,)))
        if not self.master_takes_units and self.shared and set(self.workers) <= self.excluded:
            actions += [self._give_up(position) for position in self.shared]  # nobody is left to run them
            self.shared.clear()
        return actions
