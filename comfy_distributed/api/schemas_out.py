"""The answers of the /multigpu routes as pydantic models: what ``openapi.json`` says each route returns.

The handlers build their answers from the modules that own the data (``plan.describe``, the health
monitor, the launcher's outcomes, ``public_view``); these models only describe them, and the API
tests hold every answer to its schema in the document. What the config shows (``Master``, ``Worker``,
``Settings``) is not repeated here: its schemas come from the config models themselves
(``config.public_view_schemas``), and a field of these models refers to them by :data:`SCHEMA_REF`.
As for the request models, a model's docstring is its description in the document.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler
from pydantic_core import CoreSchema

from .schemas_in import WorkerId, unset
from ..cluster.health import STATUSES
from ..engine.scheduler import UnitState
from ..graph.workflow import SCHEDULING_MODES

SCHEMA_REF = "#/components/schemas/{model}"
"""Where the document keeps every schema: components/schemas, under the model's name."""


@dataclass(frozen=True)
class Component:
    """A schema of the document that is no pydantic model, by name. Wrapped in ``allOf``: pydantic tries to
    resolve a bare ``$ref`` among its own models; the generator unwraps it."""

    name: str

    def __get_pydantic_json_schema__(self, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> dict[str, Any]:
        return {"allOf": [{"$ref": SCHEMA_REF.format(model=self.name)}]}


ShownMaster = Annotated[dict[str, Any], Component("Master")]
ShownWorker = Annotated[dict[str, Any], Component("Worker")]
ShownSettings = Annotated[dict[str, Any], Component("Settings")]


class Closed(BaseModel):
    """An answer with exactly these fields."""

    model_config = ConfigDict(extra="forbid")


class Error(BaseModel):
    """Every refusal: error says what is wrong; some refusals add a field."""

    model_config = ConfigDict(extra="allow")

    error: str
    host: str = unset(description="403 of the Host check: the Host header that was refused")
    token_configured: bool = unset(
        description="401: whether the master has a token at all (false: create one with launch_distributed.sh "
                    "token; true: the one sent is missing or wrong)")
    flags: list[str] = unset(description="400 of a worker change: the extra_args flags the API may not set")
    known: list[str] = unset(description="400 of update_setting: the settings there are")
    worker: dict[str, Any] = unset(description="409 of restart: what happened to the worker")


class Auth(Closed):
    """Who needs the token on this master."""

    token_configured: bool = Field(description="settings.api_token or COMFY_DISTRIBUTED_TOKEN is set")
    token_required: bool = Field(description="the control routes need the token (configured, or a public master)")
    public: bool = Field(description="this master listens beyond loopback or sends CORS headers: no Host check, "
                                     "and every route but the OpenAPI document needs the token")


class SettingField(Closed):
    """One row of settings_form: how the panel draws a setting (config.settings_form)."""

    key: str
    label: str
    help: str
    unit: Optional[str]
    kind: Literal["number", "integer", "bool", "enum", "secret", "json"]
    options: list[str] = unset(description="the allowed values of an enum")
    min: Optional[float] = unset()
    max: Optional[float] = unset()
    min_inclusive: bool = unset(description="whether min itself is allowed")


class PublicConfig(Closed):
    """gpu_config.json as the API shows it (config.public_view), with the auth block and the settings form."""

    master: ShownMaster
    workers: list[ShownWorker]
    settings: ShownSettings
    auth: Auth
    settings_form: list[SettingField] = Field(
        description="how to draw each setting (derived from the settings model): the panel's settings form")


class WorkerAnswer(BaseModel):
    worker: ShownWorker = unset()


class RemovedAnswer(BaseModel):
    removed: WorkerId = unset()


class SettingsAnswer(BaseModel):
    settings: ShownSettings = unset()


class PlanUnit(BaseModel):
    position: int = unset()
    seed_offset: int = unset()
    batch: int = unset()
    planned: Optional[str] = unset()


class Participant(BaseModel):
    role: Literal["master", "worker"] = unset()
    worker_id: Optional[WorkerId] = unset()
    name: str = unset()
    address: Optional[str] = unset()
    position: int = unset()
    seeds: dict[str, int] = unset(description="Distributor node id -> seed")


class OutputPlan(BaseModel):
    batch_size: Optional[int] = unset()
    ranges: list[Optional[list[int]]] = unset(
        description="per participant, [first, end) image indices when the batch size is known")


class Plan(BaseModel):
    """A job's plan (plan.describe) with the id to queue it under."""

    job_id: str
    expires_in: float
    mode: str = Field(json_schema_extra={"enum": list(SCHEDULING_MODES)},
                      description="the scheduling mode the job will use")
    master_participates: bool = Field(description="false: the master only coordinates and the workers run unit 0 "
                                                  "(its seed, its place in the output) too")
    units: Optional[list[PlanUnit]] = unset(
        description="weighted and dynamic modes: every unit with its seed offset, size and planned participant "
                    "(dynamic: null until it runs, but unit 0 is the master's)")
    collectors: list[str]
    participants: list[Participant]
    outputs: dict[str, OutputPlan]


class Freed(BaseModel):
    ok: bool = unset()
    error: Optional[str] = unset()


class FreedWorker(Freed):
    worker_id: WorkerId = unset()
    name: str = unset()


class ClearMemoryResult(BaseModel):
    master: Optional[Freed] = unset(description="null when the master was left out")
    workers: list[FreedWorker] = unset()


class MasterStatus(Auth):
    status: Literal["online"]


class WorkerStatus(BaseModel):
    """One worker as the health monitor (or, outside ComfyUI, a probe) sees it."""

    id: WorkerId = unset()
    name: str = unset()
    address: str = unset()
    enabled: bool = unset()
    status: str = unset({"enum": list(STATUSES)})
    queue_remaining: Optional[int] = unset()
    error: Optional[str] = unset()


class ClusterSummary(BaseModel):
    """The whole cluster at a glance (``cluster_view``)."""

    prompts_running: int = Field(description="instances (the master and the workers that answer) running a prompt")
    prompts_queued: int = Field(description="prompts waiting in those instances' queues")
    units: dict[str, int] = Field(description="units of running jobs by state (done, running, master, pending, ...)")
    eta_seconds: Optional[float] = Field(description="the longest estimated time left of a running job, if known")
    line: str = Field(description="all of it as one line, as the panel and `comfy-distributed status` show it")


class UnitSummary(BaseModel):
    """One unit of a job: where it stands and who runs it (the scheduler's record of it)."""

    position: int = Field(description="its place in the output: 0 the master's batch, k + 1 worker k's share")
    seed_offset: int
    state: UnitState
    worker_id: Optional[WorkerId] = Field(description="the worker it was last sent to (null: none yet)")
    worker: Optional[str] = Field(description="that worker's name")
    progress: float = Field(description="0 to 1; a finished unit (done, skipped, given_up) counts as 1")
    errors: list[str] = Field(description="why attempts of it failed or it was left out, each 'worker: message'")


class JobSummary(BaseModel):
    """A job that runs or waits for its Collectors, as the panel shows it."""

    job_id: str
    prompt_id: Optional[str]
    settled: bool = Field(description="no unit waits for a participant or runs on a worker")
    error: Optional[str]
    eta_seconds: Optional[float] = Field(description="estimated seconds left, from its own units (null: unknown)")
    progress: float = Field(description="0 to 1, as multigpu.job_progress reports it")
    units: list[UnitSummary]


class PoolAgent(BaseModel):
    """An agent of the shared pool whose heartbeat is current."""

    id: str
    name: str
    tags: list[str]
    comfyui: bool = Field(description="whether its ComfyUI answers (an agent whose ComfyUI does not takes no unit)")
    busy: Optional[dict[str, Any]] = Field(description="the unit it runs ({job_id, position, attempt, master}); "
                                                       "null when idle")
    checkpoint: Optional[str] = Field(description="the checkpoint its ComfyUI loaded last, when known")


class PoolStatus(BaseModel):
    """The shared pool this master joined (``settings.pool`` or ``COMFY_DISTRIBUTED_POOL``)."""

    pool: str = Field(description="its name and Redis URL, without the password")
    joined: bool = Field(description="whether Redis answered: before, the pool gives no participant")
    master: str = Field(description="this master's id in the pool: an agent whose busy.master is this id runs a unit "
                                    "of this master's jobs, another id a unit of another master's")
    agents: list[PoolAgent]


class Status(BaseModel):
    master: MasterStatus
    workers: list[WorkerStatus]
    jobs: list[JobSummary]
    cluster: ClusterSummary
    pool: Optional[PoolStatus] = Field(None, description="the shared pool, when one is configured")
    config_warnings: list[str] = Field(
        description="keys of gpu_config.json that no part of the schema knows, one line each, naming where it is "
                    "(a worker by its id and name) and the known key it is nearest to, e.g. \"worker 2 (GPU 1): "
                    "unknown key 'enabeld' (did you mean 'enabled'?) is ignored\"; they are kept in the file but "
                    "change nothing. Keys that begin with _ are notes and not listed. Then a worker's pool_agent "
                    "(or pool_tags) that does nothing: no pool configured, or a worker not started on this machine")


class LaunchOutcome(BaseModel):
    """What the launcher did with one worker."""

    worker_id: WorkerId = unset()
    name: str = unset()
    action: Literal["started", "running", "stopped", "not_running", "failed", "skipped"] = unset(
        description="started (now launching), running (it already answered), failed (see error)")
    ok: bool = unset()
    pid: Optional[int] = unset(description="local pid, or the pid on the worker's machine for an ssh worker")
    error: Optional[str] = unset(description="what went wrong and what to do about it")
    log: Optional[str] = unset(description="where the instance logs")


class LaunchAnswer(BaseModel):
    workers: list[LaunchOutcome] = unset()


class RestartAnswer(BaseModel):
    worker: LaunchOutcome = unset()


class WorkerLogs(BaseModel):
    worker_id: WorkerId
    name: str
    log: str = Field(description="where the log is (a file on the master's machine, or on the worker's over SSH)")
    lines: list[str] = Field(description="its last lines since the worker's last start, oldest first")


class EventsWatched(BaseModel):
    on: bool = Field(description="whether this client is registered now")
    previews: bool = Field(description="whether the master relays previews now: some client wants them")
    expires_in: float = Field(description="seconds this registration lasts (0: ended); renew it before then")


class Accepted(BaseModel):
    accepted: int = unset(description="images taken")
