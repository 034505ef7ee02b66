"""Turns a prompt queued on the master into a distributed job, whoever queued it.

ComfyUI calls prompt handlers (``PromptServer.add_on_prompt_handler``) before it
validates a prompt, so the handler only plans the job. A middleware around ``POST /prompt``
starts the job once the master has accepted the prompt (HTTP 200) and forgets it when the
master refused it: workers never run a prompt that the master rejected. The two are
linked by a context variable, since the handler runs inside the request's task.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from aiohttp import web

from .orchestrator import Orchestrator

if TYPE_CHECKING:
    from .queue_balancer import QueueBalancer

log = logging.getLogger("comfy_distributed")

PROMPT_PATHS = frozenset({"/prompt", "/api/prompt"})
INTERRUPT_PATHS = frozenset({"/interrupt", "/api/interrupt"})
QUEUE_PATHS = frozenset({"/queue", "/api/queue"})
JOB_ID_EXTRA_DATA = "multigpu_job_id"
"""``extra_data`` key by which a client queues a prompt under a job id from ``prepare_job``."""
_pending_jobs: ContextVar["list[_Pending] | None"] = ContextVar("multigpu_pending_jobs", default=None)


@dataclass(slots=True)
class _Pending:
    """Work planned for a prompt, started when the master accepts it, dropped when it refuses it."""

    start: Callable[[str | None], None]
    discard: Callable[[], None]


def make_prompt_handler(orchestrator: Orchestrator, balancer: "QueueBalancer | None" = None) -> Callable[[Any], Any]:
    def on_prompt(json_data: Any) -> Any:
        if not isinstance(json_data, dict) or not isinstance(json_data.get("prompt"), dict):
            return json_data
        pending_work = _pending_jobs.get()

        def plan(item: _Pending) -> None:
            if pending_work is None:
                item.start(None)  # queued without our middleware in the path: start at once
            else:
                pending_work.append(item)

        prompt = json_data["prompt"]
        if balancer is not None:
            routed, forward = balancer.route(prompt)
            if forward is not None:
                router, chosen = balancer, forward

                plan(_Pending(functools.partial(router.start, chosen), functools.partial(router.discard, chosen)))
                routed_data = {**json_data, "prompt": routed}
                if "number" not in json_data and not json_data.get("front"):  # else its place is the client's
                    number = router.deferred_number(chosen)
                    if number is not None:
                        routed_data["number"] = number
                return routed_data
        extra_data = json_data.get("extra_data")
        requested = extra_data.get(JOB_ID_EXTRA_DATA) if isinstance(extra_data, dict) else None
        prompt, job = orchestrator.prepare(prompt, requested)
        if job is None:
            return json_data
        plan(_Pending(functools.partial(orchestrator.start, job), functools.partial(orchestrator.discard, job)))
        return {**json_data, "prompt": prompt}

    return on_prompt


def _prompt_id_of(response: web.StreamResponse) -> str | None:
    body = getattr(response, "body", None)
    try:
        data = json.loads(bytes(body)) if isinstance(body, (bytes, bytearray)) else None
    except ValueError:
        return None
    return str(data["prompt_id"]) if isinstance(data, dict) and "prompt_id" in data else None


async def _json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object, or {} (aiohttp keeps the body, so the handler can read it again)."""
    try:
        data = await request.json()
    except (ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def make_prompt_middleware(orchestrator: Orchestrator, running_prompts: Callable[[], set[str]] = set,
                           pending_prompts: Callable[[], set[str]] = set) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Starts jobs of accepted prompts; cancels jobs whose master prompt is interrupted or deleted.

    ``running_prompts`` and ``pending_prompts`` give the ids in the master's queue.
    """

    @web.middleware
    async def multigpu_prompt_middleware(request: web.Request, handler: Callable) -> web.StreamResponse:
        if request.method != "POST":
            return await handler(request)
        if request.path in PROMPT_PATHS:
            return await _queue_prompt(request, handler)
        if request.path in INTERRUPT_PATHS:
            return await _interrupt(request, handler, orchestrator, running_prompts)
        if request.path in QUEUE_PATHS:
            return await _edit_queue(request, handler, orchestrator, pending_prompts)
        return await handler(request)

    return multigpu_prompt_middleware


async def _queue_prompt(request: web.Request, handler: Callable) -> web.StreamResponse:
    """ComfyUI's own /prompt, with the jobs its prompt hook planned started once it accepted the prompt."""
    pending: list[_Pending] = []
    token = _pending_jobs.set(pending)
    try:
        response = await handler(request)
    except BaseException:
        for item in pending:
            item.discard()
        raise
    finally:
        _pending_jobs.reset(token)
    for item in pending:
        if response.status == 200:
            item.start(_prompt_id_of(response))
        else:
            item.discard()
    return response


async def _interrupt(request: web.Request, handler: Callable, orchestrator: Orchestrator,
                     running_prompts: Callable[[], set[str]]) -> web.StreamResponse:
    target = (await _json_body(request)).get("prompt_id")
    response = await handler(request)
    running = running_prompts()
    stopped = ({str(target)} & running) if target else running
    if stopped:
        orchestrator.cancel_prompts(stopped, "the prompt was interrupted on the master")
    return response


async def _edit_queue(request: web.Request, handler: Callable, orchestrator: Orchestrator,
                      pending_prompts: Callable[[], set[str]]) -> web.StreamResponse:
    data = await _json_body(request)
    pending = pending_prompts()
    response = await handler(request)
    removed: set[str] = set()
    if data.get("clear"):
        removed |= pending
    if isinstance(data.get("delete"), list):
        removed |= {str(p) for p in data["delete"]} & pending
    if removed:
        orchestrator.cancel_prompts(removed, "the prompt was removed from the master's queue")
    return response


async def reap_finished_prompts(orchestrator: Orchestrator, finished: Callable[[set[str]], set[str]],
                                interval: float = 1.0) -> None:
    """Cancel jobs whose master prompt ended without collecting them (it failed upstream)."""
    while True:
        await asyncio.sleep(interval)
        try:
            ended = finished(orchestrator.prompt_ids())
            if ended:
                orchestrator.cancel_prompts(ended, "the master's prompt ended before its Collector ran")
        except Exception:  # keep watching
            log.exception("Multi-GPU: checking finished prompts failed")
