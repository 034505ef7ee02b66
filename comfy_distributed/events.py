"""Every ``multigpu.*`` event the master sends to its UI clients, each built by one function here.

An event is ``(name, payload)``, sent with ComfyUI's ``send_sync``. The panel listens to the names
listed in ``web/multigpu_contract.js``, generated from :data:`NAMES` (:mod:`.api.panel_contract`; a test fails when the two
differ, and a JS test checks that the panel handles every one). Payload keys are always present,
``None`` where a value does not apply, so the panel and the CLI never guess.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, TypedDict

WORKER_STATUS = "multigpu.worker_status"
JOB_PROGRESS = "multigpu.job_progress"
JOB_DONE = "multigpu.job_done"
WORKER_FAILED = "multigpu.worker_failed"
NOTICE = "multigpu.notice"
PREVIEW = "multigpu.preview"
NAMES = (WORKER_STATUS, JOB_PROGRESS, JOB_DONE, WORKER_FAILED, NOTICE, PREVIEW)

Event = tuple[str, dict[str, Any]]

Notify = Callable[[str, dict[str, Any]], None]
"""Sends an event to the master's UI clients: (event name, JSON-able data)."""


def log_notify(event: str, data: dict[str, Any]) -> None:
    """Where events go with no UI to send them to (tests, tools): the debug log."""
    logging.getLogger("comfy_distributed").debug("event %s %s", event, data)


class UnitProgress(TypedDict):
    position: int
    state: str
    worker: str | None
    worker_id: int | str | None
    progress: float


class MissingUnit(TypedDict):
    unit: int
    worker: str
    state: str
    message: str | None


def worker_status(health: dict[str, Any], previous: str) -> Event:
    """A worker's health changed: its ``WorkerHealth.as_json()`` and the status it had before."""
    return WORKER_STATUS, {**health, "previous": previous}


def worker_failed(worker_id: int | str, worker: str, reason: str, message: str, rerun: bool, job_id: str | None = None,
                  unit: int | None = None) -> Event:
    """A worker failed a unit (or a forwarded prompt): ``rerun`` says whether another participant takes it over."""
    return WORKER_FAILED, {"job_id": job_id, "worker_id": worker_id, "worker": worker, "reason": reason, "unit": unit,
                           "rerun": rerun, "message": f"Worker {worker}: {message}"}


def job_progress(job_id: str, progress: float, units: list[UnitProgress], eta_seconds: float | None = None) -> Event:
    return JOB_PROGRESS, {"job_id": job_id, "progress": progress, "units": units, "eta_seconds": eta_seconds}


def job_done(job_id: str, cancelled: bool, workers_done: list[str], master_units: list[int],
             units_missing: list[MissingUnit]) -> Event:
    return JOB_DONE, {"job_id": job_id, "cancelled": cancelled, "workers_done": workers_done,
                      "master_units": master_units, "units_missing": units_missing}


def notice(message: str, job_id: str | None = None) -> Event:
    """Something the user should know that is not a failure (a job runs static, and why)."""
    return NOTICE, {"job_id": job_id, "message": message}


def preview(job_id: str | None, position: int, worker_id: int | str, worker: str, mime: str | None,
            data: str | None) -> Event:
    """A worker's preview frame of its unit (``data``: the image in base64, ``mime`` its type), relayed only while
    the panel watches (:mod:`.cluster.previews`); ``data`` None: the unit ended there, drop its thumbnail."""
    return PREVIEW, {"job_id": job_id, "position": position, "worker_id": worker_id, "worker": worker, "mime": mime,
                     "data": data}
