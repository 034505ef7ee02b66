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

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from .config import ConfigStore, GpuConfig, WorkerConfig
from .errors import JobError
from .jobs import UnitJob, UnitRun
from .metrics import Metrics
from .runner import JobKind, Runner
from .scheduler import JobScheduler, Unit, UnitState
from .workflow import COLLECTOR_CLASS, Prompt, flatten_for_single
from .worker_client import OutputFile, PromptResult, WorkerClient

if TYPE_CHECKING:
    from .health import HealthMonitor

log = logging.getLogger("comfy_distributed")

REMOTE_OUTPUT_CLASS = "MultiGPURemoteOutput"
WAIT_POLL = 0.1
FORWARD_POSITION = 1
"""A forwarded prompt is a job of one unit, at this position (its seed is the prompt's own)."""


@dataclass(slots=True, kw_only=True)
class Forward(UnitJob):
    """A whole prompt sent to a worker: a job of one unit, which the candidates try in turn."""

    original: Prompt
    output_nodes: list[str]
    claimed: set[str] = field(default_factory=set)
    expanded: bool = False

    @property
    def forward_id(self) -> str:
        return self.job_id

    @property
    def unit(self) -> UnitRun:
        return self.units[FORWARD_POSITION]

    @property
    def prompt(self) -> Prompt:
        """The prompt as the worker runs it (our nodes flattened away)."""
        return self.unit.prompt

    @property
    def candidates(self) -> list[WorkerConfig]:
        return list(self.workers.values())

    @property
    def state(self) -> str:
        """pending, running, done, or master (no worker could run it: the master runs it itself)."""
        state = self.state_of(FORWARD_POSITION)
        return "master" if state == UnitState.GIVEN_UP else state.value

    @property
    def worker(self) -> WorkerConfig | None:
        return self.unit.worker

    @property
    def outputs(self) -> dict[str, list[tuple[OutputFile, bytes]]]:
        return self.unit.images if self.state_of(FORWARD_POSITION) == UnitState.DONE else {}

    @property
    def causes(self) -> list[str]:
        return self.unit.causes

    @property
    def finished(self) -> threading.Event:
        return self.settled


class ForwardedPrompt(JobKind[Forward]):
    """A forwarded prompt's one unit brings back the files of every output node of the prompt."""

    master_runs_given_up = True
    metric_kind = "queue"

    def wanted(self, job: Forward, unit: UnitRun) -> frozenset[str]:
        return frozenset(job.output_nodes)

    async def fetch(self, job: Forward, unit: UnitRun, client: WorkerClient, result: PromptResult,
                    deadline: float) -> dict[str, Any]:
        outputs: dict[str, Any] = {}
        for node_id in job.output_nodes:
            files = result.images(node_id)
            outputs[node_id] = list(zip(files, await client.fetch_files(files, deadline)))
        return outputs

    def failure_job_id(self, job: Forward) -> str | None:
        return None  # the UI knows no job for a forwarded prompt


class QueueBalancer:
    """Routes whole prompts (see the module doc). Lives on the master's event loop."""

    def __init__(self, store: ConfigStore, health: "HealthMonitor | None" = None,
                 notify: Callable[[str, dict[str, Any]], None] | None = None,
                 master_load: Callable[[], int] = lambda: 0,
                 is_output_node: Callable[[str], bool] = lambda class_type: False,
                 metrics: Metrics | None = None) -> None:
        self.store = store
        self.health = health
        self.notify = notify or (lambda event, data: None)
        self.master_load = master_load
        self.is_output_node = is_output_node
        self._forwards: dict[str, Forward] = {}
        self._lock = threading.Lock()
        self.runner: Runner[Forward] = Runner(ForwardedPrompt(), lambda *event: self.notify(*event),
                                              lambda: self.health, metrics)

    async def close(self) -> None:
        """Close the connections kept to workers (the master shuts down)."""
        await self.runner.close()

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
        forward = self._forward(prompt, output_nodes, config, candidates)
        stand_in = {node_id: {"class_type": REMOTE_OUTPUT_CLASS,
                              "inputs": {"forward_id": forward.forward_id, "node": node_id},
                              "_meta": {"title": f"{prompt[node_id].get('class_type')} (on a worker)"}}
                    for node_id in output_nodes}
        with self._lock:
            self._forwards[forward.forward_id] = forward
        return stand_in, forward

    @staticmethod
    def _forward(prompt: Prompt, output_nodes: list[str], config: GpuConfig,
                 candidates: list[WorkerConfig]) -> Forward:
        """One unit that the candidates take in their order, each once, until one delivers (or none is left)."""
        workers = {str(w.id): w for w in candidates}
        scheduler = JobScheduler(units=[Unit(FORWARD_POSITION, 0)], workers=list(workers),
                                 max_retries=config.settings.max_retries, master_takes_units=False)
        unit = UnitRun(FORWARD_POSITION, 0, flatten_for_single(prompt))
        return Forward(job_id=uuid.uuid4().hex, units={FORWARD_POSITION: unit}, workers=workers,
                       settings=config.settings, scheduler=scheduler, original=prompt, output_nodes=output_nodes)

    def _ranked_workers(self, config: GpuConfig) -> list[WorkerConfig]:
        unavailable = self.health.unavailable() if self.health is not None else {}
        workers = [w for w in config.enabled_workers() if str(w.id) not in unavailable]
        return sorted(workers, key=self._load_of)  # stable: ties keep config order

    def _load_of(self, worker: WorkerConfig) -> int:
        key = str(worker.id)
        with self._lock:
            inflight = sum(forward.running_on(key) for forward in self._forwards.values())
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
        self.runner.metrics.job_started("queue")
        self.runner.open(forward)
        self.runner.begin(forward)

    def discard(self, forward: Forward) -> None:
        with self._lock:
            self._forwards.pop(forward.forward_id, None)

    # --- the stand-in nodes (ComfyUI's execution thread) ---------------------------------

    def wait(self, forward_id: str, node_id: str, interrupted: Callable[[], bool]) -> Forward:
        """Block until the forwarded prompt has ended; the caller takes its node's files."""
        with self._lock:
            forward = self._forwards.get(forward_id)
        if forward is None:
            raise JobError(f"Multi-GPU queue: forwarded prompt {forward_id} is unknown (the master restarted?)")
        bound = time.monotonic() + forward.settings.worker_timeout * (2 + forward.settings.max_retries) + 30
        while not forward.settled.wait(WAIT_POLL):
            if interrupted():
                if forward.loop is not None and not forward.loop.is_closed():
                    forward.loop.call_soon_threadsafe(self.runner.cancel, forward)
                raise JobError("Multi-GPU queue: interrupted")
            if time.monotonic() > bound:
                raise JobError("Multi-GPU queue: the forwarded prompt did not end in time")
        with self._lock:
            forward.claimed.add(node_id)
            if len(forward.claimed) >= len(forward.output_nodes):
                self._forwards.pop(forward_id, None)
        return forward
