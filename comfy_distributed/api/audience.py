"""Who receives the ``multigpu.*`` events: the websocket clients that asked through the guarded API.

ComfyUI's ``send_sync`` without a client id reaches every socket on ``/ws``: a LAN client of a
``--listen`` master without the token, or a sandboxed iframe (``Origin: null`` passes ComfyUI 0.3.64's
own origin check). Worker addresses, errors, job progress and live previews are not theirs to read. So
no event is broadcast: a client registers its ComfyUI client id with ``POST /multigpu/events`` (behind
the same guard as ``GET /multigpu/status``: Host, Origin, ``Sec-Fetch-Site``, JSON body, token on a
public master) and receives the events addressed to it for :data:`WATCH_TTL` seconds; the panel and
``comfy-distributed run`` renew while they listen. Live previews go only to the clients that asked for
them as well. With no fresh registration an event goes nowhere.

Events are sent from any thread (the execution thread too), so the registrations sit behind a lock.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from .. import events
from ..cluster.previews import WATCH_TTL


WATCH_RENEW = WATCH_TTL / 3
"""How often a listener renews: at a third of the life the master answers (the panel's ``previewRenewMs``),
so that one late renewal does not let it lapse."""

MAX_LISTENERS = 64
"""Registrations kept at once; past it the one closest to lapsing gives way."""

Send = Callable[[str, dict[str, Any], str], None]
"""ComfyUI's ``send_sync(event, data, client_id)``: one event to one websocket client."""


@dataclass(slots=True, frozen=True)
class _Lease:
    until: float
    previews: bool


class Audience:
    """The registered clients; :meth:`notify` is the ``notify`` every part of the master sends events with."""

    def __init__(self, send: Send, clock: Callable[[], float] = time.monotonic) -> None:
        self.send = send
        self.clock = clock
        self._leases: dict[str, _Lease] = {}
        self._lock = threading.Lock()

    def watch(self, client_id: str, on: bool, previews: bool = False) -> float:
        """Register ``client_id`` (renew its lease) or end it; returns the seconds it lasts (0 when ended)."""
        with self._lock:
            now = self.clock()
            self._leases = {c: lease for c, lease in self._leases.items() if lease.until > now and c != client_id}
            if not on:
                return 0.0
            while len(self._leases) >= MAX_LISTENERS:
                del self._leases[min(self._leases, key=lambda c: self._leases[c].until)]
            self._leases[client_id] = _Lease(now + WATCH_TTL, previews)
        return WATCH_TTL

    def listeners(self, previews: bool = False) -> list[str]:
        """The client ids with a fresh lease (with ``previews``: those that also want the live previews)."""
        with self._lock:
            now = self.clock()
            return [c for c, lease in self._leases.items() if lease.until > now and (lease.previews or not previews)]

    def notify(self, event: str, data: dict[str, Any]) -> None:
        """``event`` to each registered client (a preview only to those that want previews), to nobody else."""
        for client_id in self.listeners(previews=event == events.PREVIEW):
            self.send(event, data, client_id)
