"""The whole cluster in one line: prompts queued and running on every instance, units of running jobs, time left.

Pure functions of what ``GET /multigpu/status`` already holds (the master's queue, the workers' health entries,
the running jobs), so that the panel, ``comfy-distributed status`` and the API say the same thing.

A job's time left is an estimate from this job's own units: the median time of the units that finished, else
what the running ones took so far divided by their progress; the work left (pending units count 1, running ones
what they have left) is shared by as many participants as are running units. Unknown until a unit has moved.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Iterable

UNIT_STATES = ("done", "running", "master", "pending", "given_up", "skipped")
MIN_PROGRESS = 0.05
"""Below this a running unit says too little about how long a unit takes."""


@dataclass(frozen=True, slots=True)
class UnitView:
    state: str
    progress: float
    elapsed: float | None
    """Seconds since it was sent (running units)."""
    took: float | None
    """Seconds it took (units a worker delivered)."""


def time_left(units: Iterable[UnitView]) -> float | None:
    """Seconds until the job's units are all in, estimated (None: nothing to go on yet, or nothing left)."""
    units = list(units)
    left = [u for u in units if u.state in ("pending", "running", "master")]
    if not left:
        return None
    done = [u.took for u in units if u.state == "done" and u.took]
    moving = [u.elapsed / u.progress for u in units
              if u.state == "running" and u.elapsed and u.progress >= MIN_PROGRESS]
    if done:
        per_unit = statistics.median(done)
    elif moving:
        per_unit = statistics.median(moving)
    else:
        return None
    work = sum(1.0 - u.progress if u.state == "running" else 0.5 if u.state == "master" else 1.0 for u in left)
    running = sum(1 for u in units if u.state in ("running", "master"))
    return round(per_unit * work / max(1, running), 1)


def cluster_summary(master_queue: int | None, workers: list[dict[str, Any]],
                    jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """Prompts running and queued across the master and the enabled workers that answer, units of running jobs by
    state, and the longest time left of a running job."""
    queues = [q for q in [master_queue, *(w.get("queue_remaining") for w in workers
                                          if w.get("status") in ("idle", "busy"))]
              if isinstance(q, int) and not isinstance(q, bool) and q >= 0]
    running = sum(1 for q in queues if q > 0)  # ComfyUI runs one prompt at a time; queue_remaining counts it
    units = {state: 0 for state in UNIT_STATES}
    lefts = []
    for job in jobs:
        if job.get("settled"):
            continue
        for unit in job.get("units", []):
            if unit.get("state") in units:
                units[unit["state"]] += 1
        if isinstance(job.get("eta_seconds"), (int, float)):
            lefts.append(float(job["eta_seconds"]))
    return {"prompts_running": running, "prompts_queued": sum(queues) - running,
            "units": {state: count for state, count in units.items() if count},
            "eta_seconds": max(lefts) if lefts else None}


def _duration(seconds: float) -> str:
    """As the panel's formatDuration says it (halves round up, as JavaScript's Math.round)."""
    if seconds < 60:
        return f"{max(1, int(seconds + 0.5))} s"
    if seconds < 3600:
        return f"{int(seconds / 60 + 0.5)} min"
    return f"{seconds / 3600:.1f} h"


def cluster_line(summary: dict[str, Any]) -> str:
    """The summary as one line: ``3 prompts: 2 running, 1 queued · units: 4 done, 2 running · about 40 s left``."""
    running, queued = summary.get("prompts_running", 0), summary.get("prompts_queued", 0)
    total = running + queued
    parts = [f"{total} prompt{'s' if total != 1 else ''}: {running} running, {queued} queued" if total
             else "no prompts queued"]
    units = summary.get("units") or {}
    if units:
        parts.append("units: " + ", ".join(f"{units[s]} {s.replace('_', ' ')}" for s in UNIT_STATES if units.get(s)))
    if summary.get("eta_seconds") is not None:
        parts.append(f"about {_duration(float(summary['eta_seconds']))} left")
    return " · ".join(parts)
