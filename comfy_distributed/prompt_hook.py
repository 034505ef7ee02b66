"""Turns a prompt queued on the master into a distributed job, whoever queued it.

ComfyUI calls prompt handlers (``PromptServer.add_on_prompt_handler``) before it
validates a prompt, so the handler only plans the job. A middleware around ``POST /prompt``
starts the job once the master has accepted the prompt (HTTP 200) and forgets it when the
master refused it: workers never run a prompt that the master rejected. The two are
linked by a context variable, since the handler runs inside the request's task.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import Any, Awaitable, Callable

from aiohttp import web

from .orchestrator import Job, Orchestrator

log = logging.getLogger("comfy_distributed")

PROMPT_PATHS = frozenset({"/prompt", "/api/prompt"})
JOB_ID_EXTRA_DATA = "multigpu_job_id"
"""``extra_data`` key by which a client queues a prompt under a job id from ``prepare_job``."""
_pending_jobs: ContextVar[list[Job] | None] = ContextVar("multigpu_pending_jobs", default=None)


def make_prompt_handler(orchestrator: Orchestrator) -> Callable[[Any], Any]:
    def on_prompt(json_data: Any) -> Any:
        if not isinstance(json_data, dict) or not isinstance(json_data.get("prompt"), dict):
            return json_data
        extra_data = json_data.get("extra_data")
        requested = extra_data.get(JOB_ID_EXTRA_DATA) if isinstance(extra_data, dict) else None
        prompt, job = orchestrator.prepare(json_data["prompt"], requested)
        if job is None:
            return json_data
        pending = _pending_jobs.get()
        if pending is None:
            orchestrator.start(job)  # queued without our middleware in the path: start at once
        else:
            pending.append(job)
        return {**json_data, "prompt": prompt}

    return on_prompt


def make_prompt_middleware(orchestrator: Orchestrator) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def multigpu_prompt_middleware(request: web.Request, handler: Callable) -> web.StreamResponse:
        if request.method != "POST" or request.path not in PROMPT_PATHS:
            return await handler(request)
        pending: list[Job] = []
        token = _pending_jobs.set(pending)
        try:
            response = await handler(request)
        except BaseException:
            for job in pending:
                orchestrator.discard(job)
            raise
        finally:
            _pending_jobs.reset(token)
        for job in pending:
            if response.status == 200:
                orchestrator.start(job)
            else:
                orchestrator.discard(job)
        return response

    return multigpu_prompt_middleware
