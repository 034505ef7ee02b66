"""Live previews: the preview frames workers send while they sample, relayed to the panel while one watches.

A worker started with a preview method sends a frame per sampling step on the websocket the master
follows its unit on (:mod:`.worker_client.preview_frames`). The master relays them to its UI as
``multigpu.preview`` events, for a thumbnail on the worker's card, under three rules:

* **Only while someone watches.** A client registered for the events with ``previews`` (``POST
  /multigpu/events``, :mod:`..api.audience`: the panel while it is open) holds a lease here under its client
  id; a lease lapses after :data:`WATCH_TTL`. With no fresh lease a frame is
  dropped as it is read, unparsed, and nothing is sent: a master without an open panel pays nothing.
* **At most a few a second per unit.** A frame is sent at once if the unit's last one left at least
  :data:`FRAME_INTERVAL` ago; otherwise it waits for that moment, replaced by any newer frame meanwhile
  (the newest is kept, the others are dropped).
* **An end.** When the unit ends on that worker (done, failed, re-run elsewhere, cancelled) and a frame
  of it was sent, one last event with ``data`` None tells the card to drop the thumbnail.

Everything here runs on the server's event loop (the websocket reader and the API handler both do).
"""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass
from typing import Callable

from .. import events
from ..events import Notify
from ..worker_client import PreviewFrame, PreviewSink


WATCH_TTL = 30.0
"""Seconds a registration for the events (and the previews) lasts; the panel renews it every
:data:`..api.audience.WATCH_RENEW` seconds."""

FRAME_INTERVAL = 1 / 3
"""Least seconds between two frames of one unit sent to the UI (at most three a second)."""

MAX_WATCHERS = 64
"""Leases kept at once (one per open panel); past it the oldest gives way."""


@dataclass(slots=True, frozen=True)
class PreviewSource:
    """A unit as it runs on one worker: where its frames come from, and what their events say."""

    job_id: str | None
    position: int
    worker_id: int | str
    worker: str


@dataclass(slots=True)
class _Throttle:
    """One unit's frames on their way: when the last left, the newest one waiting, the timer that sends it."""

    last_sent: float = float("-inf")
    waiting: PreviewFrame | None = None
    timer: asyncio.TimerHandle | None = None
    shown: bool = False


class PreviewRelay:
    """Relays each running unit's preview frames to the UI while a watcher's lease is fresh (see the module doc)."""

    def __init__(self, notify: Notify, clock: Callable[[], float] = time.monotonic) -> None:
        self.notify = notify
        self.clock = clock
        self._leases: dict[str, float] = {}
        """Watcher -> when its lease lapses (``clock`` time)."""
        self._units: dict[PreviewSource, _Throttle] = {}

    # --- watchers (the API) -----------------------------------------------------------------

    def watch(self, watcher: str, on: bool) -> float:
        """Renew ``watcher``'s lease (``on``) or end it; returns the seconds it lasts (0 when ended)."""
        now = self.clock()
        self._leases = {name: until for name, until in self._leases.items() if until > now and name != watcher}
        if not on:
            return 0.0
        while len(self._leases) >= MAX_WATCHERS:
            del self._leases[min(self._leases, key=self._leases.__getitem__)]
        self._leases[watcher] = now + WATCH_TTL
        return WATCH_TTL

    def watched(self) -> bool:
        """Whether any lease is fresh: frames are worth reading."""
        now = self.clock()
        return any(until > now for until in self._leases.values())

    # --- frames (the runner) ------------------------------------------------------------------

    def sink(self, source: PreviewSource) -> PreviewSink:
        """Where the frames of ``source``'s prompt go (handed to the worker client that follows it)."""
        return _UnitSink(self, source)

    def show(self, source: PreviewSource, frame: PreviewFrame) -> None:
        """A frame of ``source``: sent now, or kept (the newest) until its unit may send again."""
        throttle = self._units.setdefault(source, _Throttle())
        wait = throttle.last_sent + FRAME_INTERVAL - self.clock()
        if wait <= 0 and throttle.timer is None:
            self._send(source, throttle, frame)
            return
        throttle.waiting = frame
        if throttle.timer is None:
            throttle.timer = asyncio.get_running_loop().call_later(max(wait, 0.0), self._flush, source)

    def end(self, source: PreviewSource) -> None:
        """``source``'s unit ended on its worker: drop what waits, and tell the UI if it shows a frame of it."""
        throttle = self._units.pop(source, None)
        if throttle is None:
            return
        if throttle.timer is not None:
            throttle.timer.cancel()
        if throttle.shown:
            self.notify(*events.preview(source.job_id, source.position, source.worker_id, source.worker, None, None))

    def __len__(self) -> int:
        """Units with frames on their way or shown (a leak check reads it: 0 once every unit ended)."""
        return len(self._units)

    def _flush(self, source: PreviewSource) -> None:
        throttle = self._units.get(source)
        if throttle is None:
            return
        frame, throttle.waiting, throttle.timer = throttle.waiting, None, None
        if frame is not None and self.watched():
            self._send(source, throttle, frame)

    def _send(self, source: PreviewSource, throttle: _Throttle, frame: PreviewFrame) -> None:
        throttle.last_sent, throttle.shown = self.clock(), True
        data = base64.b64encode(frame.image).decode("ascii")
        self.notify(*events.preview(source.job_id, source.position, source.worker_id, source.worker, frame.mime,
                                    data))


@dataclass(slots=True, frozen=True)
class _UnitSink:
    """A :class:`PreviewSink` for one unit: the relay's gate, and its frames tagged with the unit."""

    relay: PreviewRelay
    source: PreviewSource

    def wanted(self) -> bool:
        return self.relay.watched()

    def show(self, frame: PreviewFrame) -> None:
        self.relay.show(self.source, frame)
