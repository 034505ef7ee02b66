"""Turns a prompt queued on the master into a distributed job, whoever queued it.

ComfyUI calls prompt handlers (``PromptServer.add_on_prompt_handler``) before it
validates a prompt, so the handler only plans the job. A middleware around ``POST /prompt``
starts the job once the master has accepted the prompt (HTTP 200) and forgets it when the
master refused it: workers never run a prompt that the master rejected. The two are
linked by a context variable, since the handler runs inside the request's task.

The middleware also refuses, before ComfyUI sees it, a prompt whose output needs one of our nodes that
read ``gpu_config.json`` (:data:`CONFIG_NODES`) while that file is invalid: HTTP 400 in ComfyUI's own
shape for a prompt that fails validation, the file's problem on each such node (:func:`config_refusal`),
so the UI marks the node and nothing is sampled. A prompt without them runs as without this extension.
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

from ..collector.clip_nodes import CLIPS_CLASS
from ..config import ConfigStore
from ..errors import ConfigError, WorkflowError
from ..collector.orchestrator import Orchestrator
from ..graph.workflow import (
    COLLECTOR_CLASS,
    TILE_MERGE_CLASS,
    TILE_SPLIT_CLASS,
    TILED_UPSCALE_CLASS,
    upstream,
    validate_prompt_shape,
)

if TYPE_CHECKING:
    from ..queue_mode.balancer import QueueBalancer

log = logging.getLogger("comfy_distributed")

CONFIG_NODES = frozenset({COLLECTOR_CLASS, TILE_MERGE_CLASS, TILED_UPSCALE_CLASS})
"""Our nodes that read gpu_config.json to run (they share their work with the workers)."""
MARKED_NODES = CONFIG_NODES | {TILE_SPLIT_CLASS, CLIPS_CLASS}
"""The nodes a refused prompt's ``node_errors`` name: those of :data:`CONFIG_NODES` and the ones that work with
them (a Merge's Split, a Collector's Clips), so the UI marks each node of the distributed part."""
INVALID_CONFIG_ERROR = "multigpu_invalid_config"
"""The ``type`` of the error on each of those nodes."""

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
    except (ValueError, UnicodeDecodeError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def make_prompt_middleware(orchestrator: Orchestrator, running_prompts: Callable[[], set[str]] = set,
                           pending_prompts: Callable[[], set[str]] = set,
                           is_output_node: Callable[[str], bool] | None = None
                           ) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Starts jobs of accepted prompts; cancels jobs whose master prompt is interrupted or deleted; refuses a
    prompt that needs an invalid gpu_config.json.

    ``running_prompts`` and ``pending_prompts`` give the ids in the master's queue; ``is_output_node`` says
    whether a class type is an output node (ComfyUI's ``OUTPUT_NODE``; None: the nodes nothing links to).
    """
    gate = ConfigGate(orchestrator.cluster.store, is_output_node)

    @web.middleware
    async def multigpu_prompt_middleware(request: web.Request, handler: Callable) -> web.StreamResponse:
        if request.method != "POST":
            return await handler(request)
        if request.path in PROMPT_PATHS:
            refused = await gate.refusal(request)
            return refused if refused is not None else await _queue_prompt(request, handler)
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


class ConfigGate:
    """Whether a queued prompt may pass while gpu_config.json is invalid: only if no output of it needs the file.

    The file is read (its store caches it) for every prompt, the prompt only while the file is invalid. That a
    plain prompt runs on the master alone because of it is logged once per problem.
    """

    def __init__(self, store: ConfigStore, is_output_node: Callable[[str], bool] | None) -> None:
        self.store = store
        self.is_output_node = is_output_node
        self._said: str | None = None
        """The problem last logged for a plain prompt (None: the file was fine since)."""

    async def refusal(self, request: web.Request) -> web.Response | None:
        """ComfyUI's 400 for this ``POST /prompt``, or None to let ComfyUI queue it."""
        try:
            self.store.get()
        except ConfigError as exc:
            problem = str(exc)
        else:
            self._said = None
            return None
        data = await _json_body(request)
        answer = config_refusal(data, problem, self.store.path.name, self.is_output_node)
        if answer is None:
            if problem != self._said:
                self._said = problem
                log.warning("Multi-GPU: %s\nPrompts run on this master alone (queue mode included) until the file "
                            "is fixed; prompts with Multi-GPU nodes are refused", problem)
            return None
        nodes = ", ".join(f"{error['class_type']} {node_id}" for node_id, error in answer["node_errors"].items())
        log.error("Multi-GPU: prompt refused before it was queued (%s): %s\nFix the file and queue it again",
                  nodes, problem)
        return web.json_response(answer, status=400)


def config_refusal(data: dict[str, Any], problem: str, file_name: str,
                   is_output_node: Callable[[str], bool] | None = None) -> dict[str, Any] | None:
    """The answer ComfyUI's ``POST /prompt`` gives a prompt that fails validation (``execution.validate_prompt``),
    for the body ``data`` of a prompt whose output needs a node of :data:`CONFIG_NODES` while the config file is
    invalid (``problem``: what is wrong, naming the file and the field or line); None when none does.

    As ComfyUI does: the outputs are the output nodes (``partial_execution_targets`` only, when given); each node
    with an error lists the outputs that depend on it; the top-level details hold the errors of failed outputs
    themselves (usually none, so empty); a malformed prompt is left to ComfyUI to refuse.
    """
    prompt, targets = data.get("prompt"), data.get("partial_execution_targets")
    try:
        prompt = validate_prompt_shape(prompt)
    except WorkflowError:
        return None
    if is_output_node is None:
        fed = upstream(prompt, prompt)
        outputs = [node_id for node_id in prompt if node_id not in fed]
    else:
        outputs = [node_id for node_id, node in prompt.items() if is_output_node(node["class_type"])]
    if isinstance(targets, list):
        outputs = [node_id for node_id in outputs if node_id in targets]
    needs = {output: upstream(prompt, [output]) | {output} for output in sorted(outputs)}
    marked = {node_id: [output for output, nodes in needs.items() if node_id in nodes]
              for node_id in sorted(prompt) if prompt[node_id]["class_type"] in MARKED_NODES}
    if not any(marked[node_id] for node_id in marked if prompt[node_id]["class_type"] in CONFIG_NODES):
        return None  # ComfyUI would not run them
    reason = {"type": INVALID_CONFIG_ERROR,
              "message": f"Multi-GPU: {file_name} is invalid; fix it and queue the prompt again",
              "details": problem, "extra_info": {}}
    node_errors = {node_id: {"errors": [dict(reason)], "dependent_outputs": dependent,
                             "class_type": prompt[node_id]["class_type"]}
                   for node_id, dependent in marked.items() if dependent}
    failed_outputs = [output for output in needs if output in node_errors]
    details = "\n".join(f"{reason['message']}: {reason['details']}" for _ in failed_outputs)
    return {"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                      "details": details, "extra_info": {}},
            "node_errors": node_errors}


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
