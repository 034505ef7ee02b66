"""Who takes part in a job, with which seed, and where their images land in the output.

Pure functions of the prompt and the config. One :func:`plan_job` serves the orchestrator (when it
plans a job) and ``POST /multigpu/prepare_job`` (when a client asks what would run, :func:`plan_summary`);
:func:`plan_prompt` is the whole job in one pass: that plan, each unit with its Values and worker prompt, and
the master's marked prompt, which the orchestrator then carries out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import GpuConfig, Settings
from ..errors import WorkflowError
from .scheduler import MASTER
from ..cluster.speeds import Speeds
from ..graph.values import Describe, literals as value_literals
from ..graph.workflow import (
    MASTER_ROLE_INPUT,
    MASTER_ROLES,
    SCHEDULING_INPUT,
    SCHEDULING_MODES,
    batch_source,
    build_worker_prompt,
    collector_links,
    mark_master_prompt,
    DISTRIBUTOR_CLASS,
    Prompt,
    distributed_collectors,
    distributor_seed,
    is_link,
    nodes_of_class,
    offset_seed,
    upstream,
    validate_prompt_shape,
)


@dataclass(slots=True, frozen=True)
class Participant:
    role: str  # "master" or "worker"
    worker_id: int | str | None
    name: str
    address: str | None
    position: int  # 0 for the master, k + 1 for worker k


def participants(config: GpuConfig) -> list[Participant]:
    """The master, then the enabled workers in config order."""
    result = [Participant("master", None, "master", None, 0)]
    for index, worker in enumerate(config.enabled_workers()):
        result.append(Participant("worker", worker.id, worker.display_name, worker.base_url, index + 1))
    return result


def literal_batch_size(prompt: Prompt, collector: str) -> int | None:
    """The batch size feeding a Collector, when one literal ``batch_size`` input decides it."""
    sizes = {
        value
        for node_id in upstream(prompt, [collector])
        for name, value in prompt[node_id].get("inputs", {}).items()
        if name == "batch_size" and isinstance(value, int) and not isinstance(value, bool) and not is_link(value)
    }
    return sizes.pop() if len(sizes) == 1 else None


@dataclass(slots=True)
class JobPlan:
    """Everything decided about a job before it runs: used to run it (the orchestrator) and to show it
    (``POST /multigpu/prepare_job``), so that what is reported is what runs."""

    mode: str
    """static, weighted or dynamic."""
    why_static: str | None
    """Why a job asked to be weighted or dynamic runs static, if it does."""
    collectors: list[str]
    participants: list[Participant]
    batch: int | None
    """The workflow's literal batch size, when one decides every Collector."""
    sizes: list[int] | None
    """Static: None (each participant runs the workflow's own batch). Else each unit's batch, unit 0 the master's."""
    owners: dict[int, str]
    """Position -> the participant (``master`` or a worker id) that runs it first; no entry: shared (dynamic)."""
    master_participates: bool = True
    """False: the master only coordinates; unit 0 (its seed, its place in the output) is a worker unit."""

    @property
    def master_batch(self) -> int | None:
        return self.sizes[0] if self.sizes else None

    def first_runs(self) -> dict[str, list[int]] | None:
        """Participant -> the worker units (position > 0) it runs first; None when they are all shared."""
        if self.mode == "dynamic":
            return None
        plan: dict[str, list[int]] = {}
        for position, owner in sorted(self.owners.items()):
            if position > 0 or owner != MASTER:
                plan.setdefault(owner, []).append(position)
        return plan

    def home(self, position: int) -> str:
        """The participant (``master`` or a worker id) whose Multi-GPU Values unit ``position`` uses: the one
        planned to run it, or in a dynamic job (units shared as they go) participant ``position`` modulo
        their number, so that the values never depend on who ran what."""
        if self.mode != "dynamic" and position in self.owners:
            return self.owners[position]
        names = [MASTER, *(str(p.worker_id) for p in self.participants[1:])]
        return names[position % len(names)]

    def worker_units(self) -> list[tuple[int, int | None]]:
        """(position, batch) of every unit that is not the master's own graph run (all, unit 0 included, when the
        master only coordinates)."""
        first = 0 if not self.master_participates else 1
        if self.sizes is None:
            return [(p.position, None) for p in self.participants[first:]]
        return [(position, size) for position, size in enumerate(self.sizes) if position >= first]


def plan_job(prompt: Prompt, config: GpuConfig, weights: list[float] | None = None) -> JobPlan:
    """Plan ``prompt`` over the master and the enabled workers of ``config``.

    ``weights`` (master first, then the enabled workers) place the units of a weighted job: the
    orchestrator's :meth:`~..cluster.speeds.Speeds.weights`; None: the configured weights, else 1.
    Raises WorkflowError for a prompt that cannot be distributed.
    """
    validate_prompt_shape(prompt)
    collectors = distributed_collectors(prompt)
    people = participants(config)
    mode, why_static = scheduling_mode(prompt, collectors, config.settings) if collectors else ("static", None)
    try:
        batch: int | None = literal_batch(prompt, collectors) if collectors else None
    except WorkflowError:
        batch = None
    names = [MASTER, *(str(p.worker_id) for p in people[1:])]
    takes_part = master_participates(prompt, collectors, config) if collectors else True
    if mode == "static":
        owners = {p.position: names[p.position] for p in people}
        if not takes_part:
            del owners[0]  # unit 0 goes to whichever worker is free first
        return JobPlan(mode, why_static, collectors, people, batch, None, owners, takes_part)
    assert batch is not None  # scheduling_mode falls back to static without one
    sizes = unit_sizes(batch * len(people), config.settings.unit_size)
    if weights is None:
        weights = Speeds().weights(config)  # nothing learnt: the configured weights, else 1
    if takes_part:
        owners = {p: names[k] for k, ps in weighted_plan(len(sizes), weights).items() for p in ps}
    else:  # the workers share every unit by their weights
        owners = {p: names[k + 1] for k, ps in weighted_plan(len(sizes), weights[1:], master_first=False).items()
                  for p in ps}
    if mode == "dynamic":
        owners = {0: MASTER} if takes_part else {}
    return JobPlan(mode, why_static, collectors, people, batch, sizes, owners, takes_part)


@dataclass(slots=True, frozen=True)
class UnitPlan:
    """One unit past the master's own graph run: its place, its batch, its Values and the prompt a worker runs."""

    position: int
    batch: int | None
    values: dict[str, Any]
    """Multi-GPU Value node -> the literal of the unit's home participant."""
    prompt: Prompt


@dataclass(slots=True, frozen=True)
class PlannedJob:
    """A queued prompt's whole job, decided in one pass (:func:`plan_prompt`)."""

    plan: JobPlan
    units: list[UnitPlan]
    marked: Prompt
    """The prompt the master runs: its Collectors marked with the job id (and the master's batch)."""
    kinds: dict[str, list[str]]
    """Per Collector: what it collects (images, latent, audio)."""


def plan_prompt(prompt: Prompt, config: GpuConfig, weights: list[float] | None, describe_node: Describe,
                job_id: str) -> PlannedJob:
    """The whole job ``prompt`` makes: the plan (:func:`plan_job`), each unit's Values and worker prompt, and the
    master's marked prompt. Raises WorkflowError for a prompt that cannot be distributed."""
    planned = plan_job(prompt, config, weights)
    units = []
    for position, size in planned.worker_units():
        values = value_literals(prompt, planned.home(position), describe_node)
        units.append(UnitPlan(position, size, values,
                              build_worker_prompt(prompt, planned.collectors, position, size, values)))
    marked = mark_master_prompt(prompt, planned.collectors, job_id, planned.master_batch,
                                coordinator=not planned.master_participates)
    kinds = {collector: list(collector_links(prompt, collector)) for collector in planned.collectors}
    return PlannedJob(planned, units, marked, kinds)


def master_participates(prompt: Prompt, collectors: list[str], config: GpuConfig) -> bool:
    """Whether the master makes images in this job: the first Collector's ``master_role``, else the config's
    ``master.participates``."""
    chosen = prompt[collectors[0]].get("inputs", {}).get(MASTER_ROLE_INPUT, "default")
    if chosen in MASTER_ROLES:
        return chosen == MASTER_ROLES[0]
    return config.master.participates


def plan_summary(prompt: Prompt, job: JobPlan) -> dict[str, Any]:
    """``job`` (planned for ``prompt`` by :func:`plan_job`) as JSON: participants, each Distributor's seed
    per participant, output ranges, units and who runs them first."""
    seeds = {node_id: distributor_seed(prompt, node_id) for node_id in nodes_of_class(prompt, DISTRIBUTOR_CLASS)}
    outputs = {}
    for collector in job.collectors:
        batch = literal_batch_size(prompt, collector)
        outputs[collector] = {
            "batch_size": batch,
            "ranges": [[p.position * batch, (p.position + 1) * batch] if batch else None for p in job.participants],
        }
    display = {MASTER: "master", **{str(p.worker_id): p.name for p in job.participants[1:]}}
    units = None
    if job.sizes is not None:
        units = [{"position": p, "seed_offset": p, "batch": size,
                  "planned": display[job.owners[p]] if p in job.owners else None}
                 for p, size in enumerate(job.sizes)]
    return {
        "mode": job.mode,
        "master_participates": job.master_participates,
        "units": units,
        "collectors": job.collectors,
        "participants": [
            {
                "role": p.role, "worker_id": p.worker_id, "name": p.name, "address": p.address,
                "position": p.position,
                "seeds": {node_id: offset_seed(seed, p.position) for node_id, seed in seeds.items()},
            }
            for p in job.participants
        ],
        "outputs": outputs,
    }


def scheduling_mode(prompt: Prompt, collectors: list[str], settings: Settings) -> tuple[str, str | None]:
    """The job's mode: the first Collector's choice, else the setting; static (and why) when units cannot be
    resized because no single literal batch size decides them."""
    chosen = prompt[collectors[0]].get("inputs", {}).get(SCHEDULING_INPUT, "default")
    mode = chosen if chosen in SCHEDULING_MODES else settings.scheduling_mode
    if mode != "static":
        try:
            literal_batch(prompt, collectors)
        except WorkflowError as exc:
            return "static", f"{mode} scheduling not possible: {exc}; using static"
    return mode, None


def literal_batch(prompt: Prompt, collectors: list[str]) -> int:
    """The workflow's batch size, when one literal decides it for every Collector."""
    values = set()
    for collector in collectors:
        source = batch_source(prompt, collector)
        if source is None:
            raise WorkflowError(f"Multi-GPU Collector {collector}: no single literal batch_size above it")
        values.add(prompt[source[0]]["inputs"][source[1]])
    if len(values) != 1:
        raise WorkflowError(f"the Collectors have different batch sizes {sorted(values)}")
    value = values.pop()
    if value < 1:
        raise WorkflowError(f"batch_size {value} is not a positive number")
    return value


def unit_sizes(total: int, unit_size: int) -> list[int]:
    """The dynamic plan: unit i has seed offset i and these many images; it depends only on the
    total and the unit size (and, through the offsets, on the seed), never on who runs what."""
    return [min(unit_size, total - start) for start in range(0, total, unit_size)]


def weighted_plan(units: int, weights: list[float], master_first: bool = True) -> dict[int, list[int]]:
    """Participant index (0 = master) -> consecutive unit positions, in proportion to the weights.

    The master always keeps unit 0 (its own graph run) unless not ``master_first`` (then index 0 is just the
    first participant of ``weights``); shares use the largest remainder.
    """
    total = sum(weights)
    exact = [units * w / total for w in weights]
    counts = [int(x) for x in exact]
    for index in sorted(range(len(weights)), key=lambda i: exact[i] - counts[i], reverse=True):
        if sum(counts) >= units:
            break
        counts[index] += 1
    if counts[0] == 0 and master_first:  # the master runs unit 0 whatever its weight
        donor = max(range(len(counts)), key=lambda i: counts[i])
        counts[donor] -= 1
        counts[0] = 1
    plan, start = {}, 0
    for index, count in enumerate(counts):
        plan[index] = list(range(start, start + count))
        start += count
    return plan
