"""What the UI hears of a Collector or tile job: its progress, throttled, and its outcome, once.

A report lists every unit, so one per change would cost the master work that grows with the square of the
workers: a unit's own progress is reported at most every ``PROGRESS_INTERVAL``, a change of state at most every
``STATE_INTERVAL`` (the last one surely, a moment later), both stretched for a job of more than
:data:`UNITS_PER_INTERVAL` units so that the reports of a job cost about the same per unit however many it has, up to
:data:`MAX_STRETCH` times (256 units and more: a change of state reported every 0.4 s at most, progress every 2 s).
Server loop only.
"""

from __future__ import annotations

import time

from .. import events
from ..cluster.core import Cluster
from ..engine.jobs import PROGRESS_INTERVAL, STATE_INTERVAL, Job, UnitState
from ..events import Notify
from .job_book import job_time_left


UNITS_PER_INTERVAL = 32
MAX_STRETCH = 8.0


def report_progress(notify: Notify, job: Job, force: bool = False) -> None:
    """Report the job's progress now, or once the interval since the last report has passed (a change of state,
    ``force``, is never dropped)."""
    stretch = min(MAX_STRETCH, max(1.0, len(job.units) / UNITS_PER_INTERVAL))
    wait = (STATE_INTERVAL if force else PROGRESS_INTERVAL) * stretch - (time.monotonic() - job.last_progress)
    if wait <= 0:
        _send_progress(notify, job)
    elif force and not job.progress_due and job.loop is not None:
        job.progress_due = True
        job.loop.call_later(wait, _flush_progress, notify, job)


def _flush_progress(notify: Notify, job: Job) -> None:
    if job.progress_due and not job.ended:
        _send_progress(notify, job)


def _send_progress(notify: Notify, job: Job) -> None:
    job.last_progress, job.progress_due = time.monotonic(), False
    units = job.unit_list()
    states = {u.position: job.state_of(u.position) for u in units}
    overall, done = job.progress()
    shown = {u.position: job.shown_worker(u.position) for u in units}
    notify(*events.job_progress(job.job_id, overall, [
        events.UnitProgress(position=u.position, state=states[u.position].value,
                            worker=shown[u.position][1], worker_id=shown[u.position][0],
                            progress=round(done[u.position], 4))
        for u in units], job_time_left(job)))


def report_outcome(cluster: Cluster, job: Job) -> None:
    """Report the job's outcome once, and count it: the last state first if one waits."""
    if job.ended:
        return
    if job.progress_due:
        _send_progress(cluster.notify, job)  # the last state before the outcome
    job.ended = True
    units = job.unit_list()
    states = {u.position: job.state_of(u.position) for u in units}
    if job.begun:
        failed = job.error or any(s == UnitState.GIVEN_UP for s in states.values())
        cluster.metrics.job_ended(job.kind.name, "cancelled" if job.cancelled else "error" if failed else "done")
        cluster.metrics.units_finished(state.value for state in states.values())
    cluster.notify(*events.job_done(
        job.job_id, job.cancelled, sorted({job.name_of(u.position) for u in units if states[u.position] == UnitState.DONE}),
        [u.position for u in units if states[u.position] == UnitState.MASTER],
        [events.MissingUnit(unit=u.position, worker=job.name_of(u.position), state=states[u.position].value,
                            message=job.record(u.position).error)
         for u in units if states[u.position] in (UnitState.GIVEN_UP, UnitState.SKIPPED)]))
