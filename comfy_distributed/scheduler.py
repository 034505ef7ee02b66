"""Which participant runs which unit of a job: a pure state machine, no I/O.

A unit is (position, seed offset): position 0 is the master's own batch, position k + 1
is worker k's share, and its seed offset equals its position, so a unit gives the same
images wherever it runs. Events go in (a unit finished or failed, the master became free),
actions come out (dispatch a unit to a worker, run units on the master, give a unit up).
The orchestrator carries the actions out; tests feed events and read actions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

WorkerId = str
"""Worker ids as strings, so that 1 and "1" are the same worker."""


@dataclass(slots=True, frozen=True)
class Unit:
    position: int
    seed_offset: int


# --- events ---------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class UnitDone:
    position: int
    worker: WorkerId


@dataclass(slots=True, frozen=True)
class UnitFailed:
    position: int
    worker: WorkerId
    reason: str
    message: str


@dataclass(slots=True, frozen=True)
class MasterFree:
    """The master finished its own unit and waits in its Collector: it can run units now."""


Event = Union[UnitDone, UnitFailed, MasterFree]


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


@dataclass(slots=True)
class JobScheduler:
    """Assigns units to participants and re-assigns the units of failed workers.

    A worker that fails a unit takes no further part in the job (it is down, or cannot run
    this workflow). Each unit is tried at most ``1 + max_retries`` times; the master can
    run any unit, once it waits in its Collector.
    """

    units: list[Unit]
    workers: list[WorkerId]
    """Worker ids in config order; worker k's own unit is at position k + 1."""
    unavailable: dict[WorkerId, str] = field(default_factory=dict)
    """Workers known to be down at dispatch, with why."""
    max_retries: int = 2
    skip_unavailable: bool = False

    pending: list[int] = field(default_factory=list)
    running: dict[int, WorkerId] = field(default_factory=dict)
    on_master: set[int] = field(default_factory=set)
    done: set[int] = field(default_factory=set)
    given_up: dict[int, tuple[str, ...]] = field(default_factory=dict)
    skipped: set[int] = field(default_factory=set)
    attempts: dict[int, int] = field(default_factory=dict)
    causes: dict[int, list[str]] = field(default_factory=dict)
    excluded: set[WorkerId] = field(default_factory=set)
    master_free: bool = False

    def start(self) -> list[Action]:
        """Each worker gets its own unit; the units of unavailable workers wait for others."""
        actions: list[Action] = []
        for index, worker in enumerate(self.workers):
            position = index + 1
            if worker in self.unavailable:
                self.excluded.add(worker)
                cause = f"{worker}: {self.unavailable[worker]}"
                if self.skip_unavailable:
                    self.skipped.add(position)
                    actions.append(Skip(position, worker, cause))
                else:
                    self.causes.setdefault(position, []).append(cause)
                    self.pending.append(position)
            else:
                actions.append(self._dispatch(position, worker))
        return actions + self._assign()

    def handle(self, event: Event) -> list[Action]:
        if isinstance(event, UnitDone):
            if self.running.get(event.position) == event.worker:
                del self.running[event.position]
                self.done.add(event.position)
        elif isinstance(event, UnitFailed):
            if self.running.get(event.position) != event.worker:
                return []  # stale: the unit was already finished or moved
            del self.running[event.position]
            self.excluded.add(event.worker)
            self.causes.setdefault(event.position, []).append(f"{event.worker}: {event.message}")
            if self.attempts.get(event.position, 0) > self.max_retries:
                causes = tuple(self.causes[event.position])
                self.given_up[event.position] = causes
                return [GiveUp(event.position, causes)] + self._assign()
            self.pending.append(event.position)
        elif isinstance(event, MasterFree):
            self.master_free = True
        return self._assign()

    def settled(self) -> bool:
        """No unit waits for a worker any more: the Collector can go on."""
        return not self.pending and not self.running

    def _dispatch(self, position: int, worker: WorkerId) -> Dispatch:
        self.running[position] = worker
        self.attempts[position] = self.attempts.get(position, 0) + 1
        return Dispatch(position, worker)

    def _idle_workers(self) -> list[WorkerId]:
        busy = set(self.running.values())
        return [w for w in self.workers if w not in self.excluded and w not in busy]

    def _assign(self) -> list[Action]:
        actions: list[Action] = []
        for worker in self._idle_workers():
            if not self.pending:
                break
            actions.append(self._dispatch(self.pending.pop(0), worker))
        if self.pending and self.master_free:
            positions = tuple(self.pending)
            self.pending.clear()
            for position in positions:
                self.attempts[position] = self.attempts.get(position, 0) + 1
            self.on_master.update(positions)
            actions.append(RunOnMaster(positions))
        return actions
