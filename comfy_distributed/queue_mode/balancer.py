"""Queue mode: whole prompts go where they run soonest, so a queue spreads over every GPU.

When a prompt is queued on the master and queue mode applies to it, the master picks a participant
for it at once (:meth:`QueueBalancer.route`):

* **Only one that can run it.** A worker whose node classes (its ``/object_info``, as last fetched)
  lack a node, a model or a choice the prompt needs is not a candidate, and the panel says why once
  (its list is asked again in the background, so a model added there counts soon). A worker not asked
  yet is a candidate; it is checked when the prompt is sent to it, like a Collector job's preflight,
  and the prompt's input files (images, videos, audio of the master's input folder) are uploaded to it.
* **The least busy**, counting the prompts running and queued there (the master's own queue for the
  master). Then, with ``queue_routing`` ``model_aware`` (the default), among the least busy the one
  that ran the prompt's checkpoint last (its model is likely loaded: :mod:`..cluster.loaded_models`), then
  the fastest measured, then the master, then config order. ``least_busy`` keeps the first rule
  alone: the master on a tie, then config order. Load comes first so that a queue of prompts of one
  checkpoint still spreads over every GPU rather than waiting on the one that has it loaded.

A prompt sent to a worker starts there at once. The master's own queue holds a stand-in for it: the
prompt with each of its output nodes replaced by a ``MultiGPURemoteOutput`` node under the same id,
which, when its turn comes, shows every file the worker's node reported (images, latents, audio,
the files of video and 3D save nodes) and its other small outputs (text, the animated flag) like a local
run, so the master's history and UI look as if the master had run the prompt. The files were saved on the
master as the worker finished, each checked and streamed to disk, within the prompt's budget
(:mod:`.files`). ComfyUI runs one prompt at a time, and a stand-in waits for its worker:
so it is queued at the back while the worker runs it (it never holds up the master's own prompts), and
moved to the place the prompt was queued at as soon as the worker is done (:meth:`QueueBalancer.
deferred_number`). If the worker fails, dies or lacks something after all, the next candidate takes the
prompt; if none is left, the master runs it itself (the stand-in expands into the original graph) and
says why.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..cluster.transport import UnitTransport
from .. import events
from ..config import GpuConfig, WorkerConfig
from ..errors import JobError, WorkerError, WorkerLacks, WorkflowError
from .outputs import NodeOutput, fetch_outputs
from .routing import Candidate, rank
from ..engine.jobs import UnitJob, UnitRun
from ..cluster.core import Cluster
from ..cluster.loaded_models import model_names
from ..engine.jobs import JobKind
from ..engine.owner import JobOwner
from ..engine.scheduler import MASTER, JobScheduler, Unit, UnitState
from ..graph.workflow import COLLECTOR_CLASS, Prompt, flatten_for_single
from ..worker_client import MIB, PromptResult, clip_text
from .files import NoFolders, OutputSaver
from ..cluster.preflight import (
    MediaFile,
    local_media,
    preflight_problems,
)

if TYPE_CHECKING:
    from ..host.interface import Host

log = logging.getLogger("comfy_distributed")

REMOTE_OUTPUT_CLASS = "MultiGPURemoteOutput"
WAIT_POLL = 0.1
FORWARD_POSITION = 1
"""A forwarded prompt is a job of one unit, at this position (its seed is the prompt's own)."""

DEFERRED = 1e12
"""Queue numbers from here on sort after every prompt queued the usual way (ComfyUI counts from 0 up): where a
stand-in waits while its worker runs the prompt."""

REFRESH_EVERY = 30.0
"""Least seconds between two background re-reads of a worker's ``/object_info`` after it was found lacking."""

@dataclass(slots=True, kw_only=True)
class Forward(UnitJob):
    """A whole prompt sent to a worker: a job of one unit, which the candidates try in turn."""

    original: Prompt
    output_nodes: list[str]
    expanded: bool = False
    found_media: list[MediaFile] | None = None
    """The master's input files the prompt loads (found, and hashed, when it is first sent)."""
    number: float | None = None
    """The queue number the prompt would have had; the stand-in gets it once the worker is done (None: it was
    queued with a number of its own, and keeps it)."""

    def state(self) -> str:
        """pending, running, done, or master (no worker could run it: the master runs it itself)."""
        state = self.state_of(FORWARD_POSITION)
        return "master" if state == UnitState.GIVEN_UP else state.value

    def outputs(self) -> dict[str, NodeOutput]:
        """Each output node's values and saved files, once a worker delivered them (else nothing)."""
        unit = self.units[FORWARD_POSITION]
        return unit.images if self.state_of(FORWARD_POSITION) == UnitState.DONE else {}


def _animated(flag: Any) -> bool:
    """Whether a node's ``animated`` output (ComfyUI's ``[true]``, a worker's anything) says its images are frames."""
    return flag is True or isinstance(flag, list) and any(value is True for value in flag)


class ForwardedPrompt(JobKind[Forward]):
    """A forwarded prompt's one unit: checked and given its input files on the worker it is sent to, and
    bringing back every output of every output node of the prompt."""

    name = "queue"
    master_runs_given_up = True
    counts_its_end = True

    def __init__(self, balancer: "QueueBalancer") -> None:
        self.balancer = balancer

    def wanted(self, job: Forward, unit: UnitRun) -> frozenset[str]:
        return frozenset(job.output_nodes)

    async def unit_prompt(self, job: Forward, unit: UnitRun, client: UnitTransport) -> dict:
        """The preflight on this worker (WorkerLacks: the next candidate takes it), then the input files."""
        worker = client.worker
        if job.found_media is None:
            try:
                job.found_media = await self.balancer.found_media(unit.prompt)
            except (WorkflowError, OSError) as exc:  # checked when routed: the folder changed since
                raise WorkerLacks(worker.display_name, f"the input files could not be read: {exc}") from None
        lacks = await self.balancer.ready_worker(job, client, unit.prompt, job.found_media)
        if lacks:
            raise WorkerLacks(worker.display_name, "lacks " + "; ".join(lacks))
        return unit.prompt

    async def fetch(self, job: Forward, unit: UnitRun, client: UnitTransport, result: PromptResult,
                    deadline: float) -> dict[str, Any]:
        """Every output node's values, and its files saved on the master (all of them, or none: see
        :mod:`.outputs`)."""
        return await fetch_outputs(client, job.output_nodes, result, self.balancer.saver, f"worker-{client.worker.id}",
                                   int(job.settings.max_forward_mb * MIB), deadline)

    def unit_done(self, job: Forward, unit: UnitRun, worker: WorkerConfig, seconds: float) -> None:
        """The worker's speed in images per second, learnt from the still images it made (not a video's frames)."""
        images = sum(len(node.files.get("images", ())) for node in unit.images.values()
                     if not _animated(node.values.get("animated")))
        if images:
            self.balancer.cluster.speeds.learn(str(worker.id), float(images), seconds)

    def failure_job_id(self, job: Forward) -> str | None:
        return None  # the UI knows no job for a forwarded prompt

    def settled(self, job: Forward) -> None:
        self.balancer.promote(job)


class QueueBalancer(JobOwner[Forward]):
    """Routes whole prompts (see the module doc); the owner of forwarded prompts (:class:`~..engine.owner.JobOwner`).
    Lives on the master's event loop."""

    def __init__(self, cluster: Cluster, master_load: Callable[[], int] = lambda: 0,
                 is_output_node: Callable[[str], bool] = lambda class_type: False, *,
                 input_dir: Callable[[], Path | None] = lambda: None,
                 master_lacks: Callable[[Prompt, set[str]], list[str]] | None = None,
                 host: "Host | None" = None, saver: OutputSaver | None = None) -> None:
        super().__init__(cluster, input_dir)
        self.master_load = master_load
        self.is_output_node = is_output_node
        self.master_lacks = master_lacks
        """What the master lacks to run a prompt (the host's ``master_lacks``; None: not checked)."""
        self.host = host
        """The master's queue, where stand-ins wait at the back and are moved up when done (None: not moved)."""
        self.saver: OutputSaver = saver or NoFolders()
        """Where a worker's files are saved (the host's output folders; outside ComfyUI nowhere, unless given)."""
        self._deferred = 0
        self._told: dict[str, str] = {}
        """Per participant: what it lacked, as last told (a queue of like prompts says it once, and prompts of two
        kinds in turn do not say it again each time)."""
        self._refreshed: dict[str, float] = {}
        self.kind = ForwardedPrompt(self)

    # --- routing (server loop, in the prompt hook) ----------------------------------------

    def route(self, prompt: Prompt) -> tuple[Prompt, Forward | None]:
        """The prompt the master should queue, and the forward to start once it is accepted."""
        try:
            config = self.cluster.config()
        except Exception:  # a broken config is reported by the orchestrator; run locally
            return prompt, None
        mode = config.settings.queue_mode
        has_collector = any(n.get("class_type") == COLLECTOR_CLASS for n in prompt.values() if isinstance(n, dict))
        if mode == "no_collector" and has_collector:
            return prompt, None  # a distributed job: the orchestrator's
        output_nodes = [node_id for node_id, node in prompt.items()
                        if isinstance(node, dict) and self.is_output_node(str(node.get("class_type")))]
        if mode == "off" or not output_nodes:
            return self._kept(prompt, has_collector)
        try:
            flat = flatten_for_single(prompt)
            input_dir = self.input_dir()
            synced = local_media(flat, input_dir) if input_dir is not None else set()
        except (WorkflowError, OSError, AttributeError, TypeError):  # malformed: ComfyUI tells the user itself
            return self._kept(prompt, has_collector)
        candidates = self._able_workers(config, flat, synced)
        master_able = self._master_able(flat, synced)
        if not candidates:
            return self._kept(prompt, has_collector)  # no worker can: the master runs it (or ComfyUI says why not)
        ranked = self._ranked(config, flat, candidates, master_able)
        if ranked[0] is None:
            return self._kept(prompt, has_collector)  # the master is the best place for it
        forward = self._forward(prompt, flat, output_nodes, config, ranked)
        stand_in = {node_id: {"class_type": REMOTE_OUTPUT_CLASS,
                              "inputs": {"forward_id": forward.job_id, "node": node_id},
                              "_meta": {"title": f"{prompt[node_id].get('class_type')} (on a worker)"}}
                    for node_id in output_nodes}
        self.keep(forward)
        return stand_in, forward

    def _kept(self, prompt: Prompt, has_collector: bool) -> tuple[Prompt, None]:
        """The master runs ``prompt``: its checkpoint is the master's now (a Collector job's the orchestrator
        records, as the master may only coordinate it)."""
        if not has_collector:
            self.cluster.models.ran(MASTER, prompt)
        return prompt, None

    def _forward(self, prompt: Prompt, flat: Prompt, output_nodes: list[str], config: GpuConfig,
                 ranked: list[WorkerConfig | None]) -> Forward:
        """One unit that the workers take in their order (the scheduler offers a shared unit to its workers in
        the order given), each once, until one delivers (or none is left). A worker found lacking when the prompt
        reaches it does not count against ``max_retries`` (:attr:`..engine.scheduler.UnitFailed.counts`)."""
        workers = {str(w.id): w for w in ranked if w is not None}
        scheduler = JobScheduler(units=[Unit(FORWARD_POSITION, 0)], workers=list(workers),
                                 max_retries=config.settings.max_retries, master_takes_units=False,
                                 names={key: w.display_name for key, w in workers.items()})
        unit = UnitRun(FORWARD_POSITION, 0, flat)
        return Forward(job_id=uuid.uuid4().hex, kind=self.kind, units={FORWARD_POSITION: unit}, workers=workers,
                       settings=config.settings, scheduler=scheduler, original=prompt, output_nodes=output_nodes)

    def _able_workers(self, config: GpuConfig, flat: Prompt, synced: set[str]) -> list[WorkerConfig]:
        """The enabled workers that are up and, as far as their last ``/object_info`` tells, can run ``flat`` (one
        never asked yet is checked when the prompt reaches it)."""
        unavailable = self.cluster.health.unavailable() if self.cluster.health is not None else {}
        able = []
        for worker in config.enabled_workers():
            key = str(worker.id)
            if key in unavailable:
                continue
            info = self.cluster.object_info.peek(worker)
            lacks = preflight_problems(flat, info, synced) if info is not None else []
            if lacks:
                self._tell_lacking(worker, lacks)
                self._refresh(worker, config)
                continue
            able.append(worker)
        return able

    def _master_able(self, flat: Prompt, synced: set[str]) -> bool:
        """Whether the master can run ``flat`` itself (else it goes to a worker even when the master is idle)."""
        lacks = self.master_lacks(flat, synced) if self.master_lacks is not None else []
        if lacks:
            self._tell_lacking(None, lacks)
        return not lacks

    def _tell_lacking(self, worker: WorkerConfig | None, lacks: list[str]) -> None:
        """Say once (until it changes) why a participant (None: the master) is given no prompt of this kind."""
        said = "; ".join(lacks)
        key = MASTER if worker is None else str(worker.id)
        if self._told.get(key) == said:
            return
        self._told[key] = said
        who = "the master" if worker is None else f"worker {worker.display_name}"
        message = f"Multi-GPU queue: {who} is given no prompt it cannot run: it lacks {said}"
        log.warning("%s", message)
        self.cluster.notify(*events.notice(clip_text(message, 2000)))

    def _refresh(self, worker: WorkerConfig, config: GpuConfig) -> None:
        """Ask a lacking worker for its node classes again in the background (at most every REFRESH_EVERY s):
        a model or node added there counts for the next prompt."""
        key = str(worker.id)
        now = time.monotonic()
        if now - self._refreshed.get(key, -REFRESH_EVERY) < REFRESH_EVERY:
            return
        self._refreshed[key] = now
        client = self.cluster.client(worker, config.settings)

        async def refresh() -> None:
            try:
                await self.cluster.object_info.get(worker, client.object_info, fresh=True)
            except (WorkerError, RuntimeError) as exc:  # the prompt that reaches it asks again
                log.debug("Multi-GPU queue: worker %s: GET /object_info failed: %s", worker.display_name, exc)

        try:
            self.spawn(refresh(), name=f"multigpu-queue-refresh-{key}")
        except RuntimeError:  # no loop (a test routing outside one): the next prompt that reaches it asks
            return

    def _ranked(self, config: GpuConfig, flat: Prompt, workers: list[WorkerConfig],
                master_able: bool = True) -> list[WorkerConfig | None]:
        """The master (None) and ``workers``, best first, by ``settings.queue_routing`` (see the module doc); a
        master that cannot run the prompt comes last."""
        unable = 0 if master_able else 1 << 30
        participants: list[WorkerConfig | None] = [None, *workers]
        names = model_names(flat)
        candidates = [Candidate(self._load_of_master() + unable, self.cluster.models.holds(MASTER, names),
                                config.master.weight or self.cluster.speeds.get(MASTER))]
        candidates += [Candidate(self._load_of(w), self.cluster.models.holds(str(w.id), names),
                                 w.weight or self.cluster.speeds.get(str(w.id))) for w in workers]
        return [participants[i] for i in rank(candidates, config.settings.queue_routing)]

    def _load_of(self, worker: WorkerConfig) -> int:
        key = str(worker.id)
        with self._lock:
            inflight = sum(forward.running_on(key) for forward in self._jobs.values())
        queued = None
        if self.cluster.health is not None:
            for entry in self.cluster.health.snapshot([worker]):
                queued = entry.get("queue_remaining")
        return max(inflight, queued or 0)

    def _load_of_master(self) -> int:
        """The master's queue, less the stand-ins waiting in it (they hold up nothing: see the module doc). Without
        a host to ask, every stand-in not yet claimed counts as waiting."""
        pending = self.host.pending_prompts() if self.host is not None else None
        with self._lock:
            waiting_stand_ins = sum(1 for f in self._jobs.values() if len(f.claimed) < len(f.output_nodes)
                                    and (pending is None or f.prompt_id in pending))
        return max(0, self.master_load() - waiting_stand_ins)

    # --- running forwards (server loop) --------------------------------------------------

    def deferred_number(self, forward: Forward) -> float | None:
        """The queue number for ``forward``'s stand-in while its worker runs the prompt: after every prompt
        queued the usual way. None (the usual number) outside ComfyUI."""
        number = self.host.next_number() if self.host is not None else None
        if number is None:
            return None
        forward.number = number - 0.5  # between the prompt queued before it and the next one
        self._deferred += 1
        return DEFERRED + self._deferred

    def promote(self, forward: Forward) -> None:
        """The worker is done (or no worker can): the stand-in takes the place the prompt was queued at."""
        if forward.number is not None and forward.prompt_id is not None and self.host is not None:
            self.host.promote(forward.prompt_id, forward.number)

    # --- the stand-in nodes (ComfyUI's execution thread) ---------------------------------

    def wait(self, forward_id: str, node_id: str, interrupted: Callable[[], bool]) -> Forward:
        """Block until the forwarded prompt has ended; the caller takes its node's files."""
        forward = self.job(forward_id)
        if forward is None:
            raise JobError(f"Multi-GPU queue: forwarded prompt {forward_id} is unknown (the master restarted?)")
        bound = forward.deadline(time.monotonic())
        while not forward.settled.wait(WAIT_POLL):
            self.still_waiting(forward, interrupted, bound, "Multi-GPU queue")
        self.claim(forward, node_id, forward.output_nodes)
        return forward
