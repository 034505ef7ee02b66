"""Queue mode: whole prompts go to the least busy participant, so a queue spreads over every GPU.

When a prompt is queued on the master and queue mode applies to it, the master forwards it
at once to the least busy healthy worker (or keeps it, when the master is the least busy).
The master's own queue then holds a stand-in for it: each of the prompt's output nodes is
replaced by a ``MultiGPURemoteOutput`` node under the same id, which, when its turn comes,
takes the worker's files, saves them on the master and shows them like a local run, so the
master's history and UI look as if the master had run the prompt. If no worker can run it,
the master runs the prompt itself (the stand-in expands into the original graph).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import aiohttp

from . import events
from .config import ConfigStore, GpuConfig, Settings, WorkerConfig
from .errors import JobError, WorkerError
from .workflow import COLLECTOR_CLASS, Prompt, flatten_for_single
from .worker_client import OutputFile, WorkerClient

if TYPE_CHECKING:
    from .health import HealthMonitor

log = logging.getLogger("comfy_distributed")

REMOTE_OUTPUT_CLASS = "MultiGPURemoteOutput"
WAIT_POLL = 0.1


@dataclass(slots=True)
class Forward:
    """A whole prompt sent to a worker, and what it produced."""

    forward_id: str
    prompt: Prompt
    """The prompt as the worker runs it (our nodes flattened away)."""
    original: Prompt
    output_nodes: list[str]
    settings: Settings
    candidates: list[WorkerConfig]
    worker: WorkerConfig | None = None
    outputs: dict[str, list[tuple[OutputFile, bytes]]] = field(default_factory=dict)
    causes: list[str] = field(default_factory=list)
    state: str = "pending"  # pending, running, done, master (no worker could run it)
    finished: threading.Event = field(default_factory=threading.Event)
    claimed: set[str] = field(default_factory=set)
    task: asyncio.Task | None = None
    expanded: bool = False


class QueueBalancer:
    """Routes whole prompts (see the module doc). Lives on the master's event loop."""

    def __init__(self, store: ConfigStore, health: "HealthMonitor | None" = None,
                 notify: Callable[[str, dict[str, Any]], None] | None = None,
                 master_load: Callable[[], int] = lambda: 0,
                 is_output_node: Callable[[str], bool] = lambda class_type: False) -> None:
        self.store = store
        self.health = health
        self.notify = notify or (lambda event, data: None)
        self.master_load = master_load
        self.is_output_node = is_output_node
        self._forwards: dict[str, Forward] = {}
        self._inflight: dict[str, int] = {}
        self._lock = threading.Lock()

    # --- routing (server loop, in the prompt hook) ----------------------------------------

    def route(self, prompt: Prompt) -> tuple[Prompt, Forward | None]:
        """The prompt the master should queue, and the forward to start once it is accepted."""
        try:
            config = self.store.get()
        except Exception:  # a broken config is reported by the orchestrator; run locally
            return prompt, None
        mode = config.settings.queue_mode
        has_collector = any(n.get("class_type") == COLLECTOR_CLASS for n in prompt.values() if isinstance(n, dict))
        if mode == "off" or (mode == "no_collector" and has_collector):
            return prompt, None
        output_nodes = [node_id for node_id, node in prompt.items()
                        if isinstance(node, dict) and self.is_output_node(str(node.get("class_type")))]
        if not output_nodes:
            return prompt, None
        candidates = self._ranked_workers(config)
        if not candidates or self._load_of_master() <= self._load_of(candidates[0]):
            return prompt, None  # the master is (one of) the least busy: run it here
        forward = Forward(uuid.uuid4().hex, flatten_for_single(prompt), prompt, output_nodes, config.settings,
                          candidates)
        stand_in = {node_id: {"class_type": REMOTE_OUTPUT_CLASS,
                              "inputs": {"forward_id": forward.forward_id, "node": node_id},
                              "_meta": {"title": f"{prompt[node_id].get('class_type')} (on a worker)"}}
                    for node_id in output_nodes}
        with self._lock:
            self._forwards[forward.forward_id] = forward
        return stand_in, forward

    def _ranked_workers(self, config: GpuConfig) -> list[WorkerConfig]:
        unavailable = self.health.unavailable() if self.health is not None else {}
        workers = [w for w in config.enabled_workers() if str(w.id) not in unavailable]
        return sorted(workers, key=self._load_of)  # stable: ties keep config order

    def _load_of(self, worker: WorkerConfig) -> int:
        inflight = self._inflight.get(str(worker.id), 0)
        queued = None
        if self.health is not None:
            for entry in self.health.snapshot([worker]):
                queued = entry.get("queue_remaining")
        return max(inflight, queued or 0)

    def _load_of_master(self) -> int:
        with self._lock:
            waiting_stand_ins = sum(1 for f in self._forwards.values() if len(f.claimed) < len(f.output_nodes))
        return max(0, self.master_load() - waiting_stand_ins)

    # --- running forwards (server loop) --------------------------------------------------

    def start(self, forward: Forward) -> None:
        forward.task = asyncio.get_running_loop().create_task(self._run(forward))

    def discard(self, forward: Forward) -> None:
        with self._lock:
            self._forwards.pop(forward.forward_id, None)

    async def _run(self, forward: Forward) -> None:
        try:
            async with aiohttp.ClientSession() as session:
                for worker in forward.candidates[: 1 + forward.settings.max_retries]:
                    if await self._try_worker(worker, forward, session):
                        break
                else:
                    forward.state = "master"  # nobody else could: the master runs it itself
        finally:  # whatever happened, the stand-in node waiting on ComfyUI's thread must not wait on
            forward.finished.set()

    async def _try_worker(self, worker: WorkerConfig, forward: Forward, session: aiohttp.ClientSession) -> bool:
        """Run the forward on ``worker``; False (the failure told) when it did not deliver."""
        forward.worker, forward.state = worker, "running"
        key = str(worker.id)
        self._inflight[key] = self._inflight.get(key, 0) + 1
        try:
            forward.outputs = await self._run_on(worker, forward, session)
            forward.state = "done"
            return True
        except WorkerError as exc:
            self._failed(worker, forward, exc.reason, exc.message)
        except Exception as exc:  # a bug of ours (or an answer we did not foresee) counts as that worker failing
            log.exception("Multi-GPU queue: unexpected error on worker %s", worker.display_name)
            self._failed(worker, forward, "internal_error", f"internal error: {exc!r}")
        finally:
            self._inflight[key] -= 1
        return False

    def _failed(self, worker: WorkerConfig, forward: Forward, reason: str, message: str) -> None:
        forward.causes.append(f"{worker.display_name}: {message}")
        log.warning("Multi-GPU queue: worker %s failed a forwarded prompt: %s", worker.display_name, message)
        self.notify(*events.worker_failed(worker.id, worker.display_name, reason, message, rerun=True))

    async def _run_on(self, worker: WorkerConfig, forward: Forward,
                      session: aiohttp.ClientSession) -> dict[str, list[tuple[OutputFile, bytes]]]:
        client = WorkerClient(worker, forward.settings, session)
        deadline = time.monotonic() + forward.settings.worker_timeout
        result = await client.run_prompt(forward.prompt, deadline)
        outputs: dict[str, list[tuple[OutputFile, bytes]]] = {}
        for node_id in forward.output_nodes:
            files = result.images(node_id)
            outputs[node_id] = list(zip(files, await client.fetch_files(files, deadline)))
        return outputs

    # --- the stand-in nodes (ComfyUI's execution thread) ---------------------------------

    def wait(self, forward_id: str, node_id: str, interrupted: Callable[[], bool]) -> Forward:
        """Block until the forwarded prompt has ended; the caller takes its node's files."""
        with self._lock:
            forward = self._forwards.get(forward_id)
        if forward is None:
            raise JobError(f"Multi-GPU queue: forwarded prompt {forward_id} is unknown (the master restarted?)")
        bound = time.monotonic() + forward.settings.worker_timeout * (2 + forward.settings.max_retries) + 30
        while not forward.finished.wait(WAIT_POLL):
            if interrupted():
                if forward.task is not None:
                    forward.task.get_loop().call_soon_threadsafe(forward.task.cancel)
                raise JobError("Multi-GPU queue: interrupted")
            if time.monotonic() > bound:
                raise JobError("Multi-GPU queue: the forwarded prompt did not end in time")
        with self._lock:
            forward.claimed.add(node_id)
            if len(forward.claimed) >= len(forward.output_nodes):
                self._forwards.pop(forward_id, None)
        return forward
