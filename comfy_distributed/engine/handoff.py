"""The one hand-off between the server loop and ComfyUI's execution thread for the units the master runs.

The scheduler decides on the loop that the master runs units (``RunOnMaster``, carried out by :meth:`give`); a
Collector, waiting on the execution thread, takes them (:meth:`take`) and runs them in the master's own prompt.
When it has nothing to run, it says the master is free once (``take`` answers ``ask``) and the caller tells the
scheduler on the loop (``MasterFree``). Everything the two sides share about it is here, under one lock, with one
event that wakes the waiting side: units given, the job settled (:meth:`wake`). The loop gives the master its last
units before the job settles, so the waiting side reads "settled" before it takes: what it takes then is complete.
"""

from __future__ import annotations

import threading
import time


class MasterHandoff:
    """Positions the master was given, whether it asked for more since, and when its current run began."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._given: list[int] = []
        self._asked = False
        self._wake = threading.Event()
        self._started = 0.0
        self._running: list[int] = []

    # --- the server loop --------------------------------------------------------------------

    def give(self, positions: tuple[int, ...]) -> None:
        """The master runs ``positions`` next: the waiting Collector wakes and takes them."""
        with self._lock:
            self._given.extend(positions)
            self._asked = False
        self._wake.set()

    def wake(self) -> None:
        """Something the waiting side must see at once happened (the job settled, or was cancelled)."""
        self._wake.set()

    @property
    def asked(self) -> bool:
        """Whether the Collector waits for units (it got there before the job began)."""
        with self._lock:
            return self._asked

    @property
    def given(self) -> list[int]:
        """Every position the master was given so far, in the order given."""
        with self._lock:
            return list(self._given)

    # --- the execution thread ------------------------------------------------------------------

    def take(self, have: set[int], may_ask: bool) -> tuple[list[int], bool]:
        """The given positions not in ``have`` (the master runs them now), and whether to tell the scheduler
        that the master is free (nothing to run, ``may_ask``, and not told since the last units were given)."""
        with self._lock:
            todo = [p for p in self._given if p not in have]
            ask = not todo and may_ask and not self._asked
            if ask:
                self._asked = True
                self._wake.clear()
            if todo:
                self._started, self._running = time.monotonic(), todo
        return todo, ask

    def wait(self, timeout: float) -> None:
        """Wait until units are given or the job settles, at most ``timeout`` seconds."""
        self._wake.wait(timeout)

    def ran(self) -> tuple[float, list[int]] | None:
        """How long the master's last units took and which they were, once (None: nothing ran since)."""
        with self._lock:
            started, running = self._started, self._running
            self._started, self._running = 0.0, []
        return (time.monotonic() - started, running) if started and running else None
