"""The request bodies of the /multigpu routes as pydantic models, and how a refusal of one reads.

These models are the one description of what each route accepts: the handlers validate every body
with them (:func:`parse_body`) and ``python -m comfy_distributed.api.openapi`` writes them into
``openapi.json``. Every model is strict (no conversions: ``"1"`` is not a number, ``1`` is not
``true``) and closed (an unknown field is refused by name).

A value that a route saves into ``gpu_config.json`` (a worker's port, a setting's value) is any JSON
value here (:class:`FromConfig`): the config model checks it, strictly, when the change is applied.
So each of its rules is written once, in ``config/models.py``; the refusal names the field as the file
does (``workers[0].port``); and the value is judged together with the rest of the file (an address
that another worker already uses). Its schema in the document is that config field's own.

A model's docstring and its fields' descriptions are its text in the document: they are written for
the API's readers.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Annotated, Any, Optional, TypeVar, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    ValidationError,
    model_validator,
)
from pydantic_core import CoreSchema, PydanticCustomError

from .access import FORBIDDEN_FLAGS, ApiError
from ..config import Settings, WorkerConfig
from ..config.models import FILE_ONLY_SETTINGS

Body = TypeVar("Body", bound=BaseModel)

JOB_HEADER = "X-MultiGPU-Job"
WORKER_HEADER = "X-MultiGPU-Worker"
SHARE_HEADER = "X-MultiGPU-Share-Token"
MAX_IDENTITY = 256
"""The longest job id, worker id or share token job_complete reads, in its headers or its body."""
_WORKER_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
WORKER_ID_PATTERN = f"^{_WORKER_ID.pattern}$"
REFUSED = "refused"
"""The pydantic error type of :func:`refuse`: its message is the answer's, its ``extra`` goes with it."""


@dataclass(frozen=True)
class MustBe:
    """What a field must be, as a refusal says it: ``'prompt' must be an API-format workflow``.

    Said for any problem with the field itself, a missing one included, instead of pydantic's words
    about types; a problem inside it (one item of a list) keeps its own place and words.
    """

    text: str


@dataclass(frozen=True)
class FromConfig:
    """A value the config model checks when the change is applied (see the module docstring); the
    document shows that model's schema for the field."""

    model: type[BaseModel]
    field: str

    def __get_pydantic_json_schema__(self, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> dict[str, Any]:
        schema = self.model.model_json_schema()["properties"][self.field]
        return {key: value for key, value in schema.items() if key not in ("title", "default")}


@dataclass(frozen=True)
class Format:
    """A ``format`` added to a type's JSON schema (hashable: pydantic 2.0 hashes nested metadata, and
    refuses ``WithJsonSchema``'s dict)."""

    name: str

    def __get_pydantic_json_schema__(self, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> dict[str, Any]:
        return {**handler(core_schema), "format": self.name}


class Unset:
    """The default of a field that is only there when sent: never a value, never shown as a default.
    ``openapi`` leaves it out of the document; pydantic's plain ``model_json_schema`` does too, with a
    warning that it is not JSON."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET = Unset()


def unset(schema: dict[str, Any] | None = None, **field: Any) -> Any:
    """An optional field that is only there when sent (read it after ``model_fields_set``); ``schema``
    adds to its JSON schema (an ``enum`` the type cannot say)."""
    return Field(UNSET, json_schema_extra=schema, **field)


def refuse(message: str, **extra: Any) -> PydanticCustomError:
    """A validator's refusal said as it is, with ``extra`` fields added to the answer (``known``)."""
    return PydanticCustomError(REFUSED, "{message}", {"message": message, "extra": extra})


def _worker_id(value: Any) -> Any:
    """Before the type: one clear refusal for any wrong id, not one per member of the union."""
    if isinstance(value, bool) or not isinstance(value, (int, str)) or (
            isinstance(value, str) and not _WORKER_ID.fullmatch(value)):
        raise ValueError("must be a worker id: a number, or up to 64 letters, digits, '_', '.', '-'")
    return value


WorkerId = Annotated[Union[int, Annotated[str, Field(pattern=WORKER_ID_PATTERN)]], BeforeValidator(_worker_id)]
"""A worker's ``id`` as the config allows it."""
Png = Annotated[str, Format("byte")]
"""One base64 PNG image (decoded and checked by the route)."""

EXTRA_ARGS = ("extra ComfyUI arguments for the launcher; through the API it may not carry a flag that moves ComfyUI's "
              "folders, frontend, database or config files, abbreviated or as --flag=value: any --*-directory, "
              f"{', '.join(FORBIDDEN_FLAGS)} (edit gpu_config.json by hand for those)")
HEADERS = ("HTTP headers sent on every request to this worker; values are shown as *** and '***' sent back keeps the "
           "stored value, except when host or port changes: then the values must be sent again (a '***' is refused), "
           "and stored headers that are not sent again are dropped, so that no secret follows the worker to a new "
           "address")
POOL_AGENT = ("give this worker to the shared pool: with a pool configured, the launcher starts a pool agent beside it "
              "(a worker it starts on this machine only) and the master reaches it through the pool only")
POOL_TAGS = ("the tags of its pool agent, e.g. [\"gpu48\"]: a job that requires tags runs only on agents that have all "
             "of them")


class RequestBody(BaseModel):
    """Strict and closed: see the module docstring."""

    model_config = ConfigDict(extra="forbid", strict=True)

    def sent(self, *leave_out: str) -> dict[str, Any]:
        """The fields the request sent, in the model's order, as validated."""
        return {name: getattr(self, name) for name in type(self).model_fields
                if name in self.model_fields_set and name not in leave_out}


class WorkerFields(RequestBody):
    """What a request may set on a worker: never its ``python`` or ``ssh`` block (no request sets a path
    or a program to run)."""

    name: Annotated[Any, FromConfig(WorkerConfig, "name")] = unset()
    enabled: Annotated[Any, FromConfig(WorkerConfig, "enabled")] = unset()
    host: Annotated[Any, FromConfig(WorkerConfig, "host")] = unset(
        description="host name, IP, or http(s):// URL used as the worker's full address")
    port: Annotated[Any, FromConfig(WorkerConfig, "port")] = unset()
    cuda_device: Annotated[Any, FromConfig(WorkerConfig, "cuda_device")] = unset()
    extra_args: Annotated[Any, FromConfig(WorkerConfig, "extra_args")] = unset(description=EXTRA_ARGS)
    headers: Annotated[Any, FromConfig(WorkerConfig, "headers")] = unset(description=HEADERS)
    pool_agent: Annotated[Any, FromConfig(WorkerConfig, "pool_agent")] = unset(description=POOL_AGENT)
    pool_tags: Annotated[Any, FromConfig(WorkerConfig, "pool_tags")] = unset(description=POOL_TAGS)


class UpdateWorkerRequest(WorkerFields):
    """POST /multigpu/config/update_worker: the worker and the fields to change."""

    worker_id: WorkerId

    @model_validator(mode="after")
    def _changes_something(self) -> "UpdateWorkerRequest":
        if not self.sent("worker_id"):
            raise ValueError(f"nothing to change: give one or more of {sorted(WorkerFields.model_fields)}")
        return self


class AddWorkerRequest(WorkerFields):
    """POST /multigpu/config/add_worker: a new worker; its port is required."""

    port: Annotated[Any, FromConfig(WorkerConfig, "port")]
    id: WorkerId = unset(description="default: the next free number")


class RemoveWorkerRequest(RequestBody):
    """POST /multigpu/config/remove_worker."""

    worker_id: WorkerId


SETTING_KEYS = tuple(key for key in Settings.model_fields if key not in FILE_ONLY_SETTINGS)


def _known_setting(key: str) -> str:
    if key not in SETTING_KEYS:
        raise refuse(f"unknown setting {key[:100]!r}", known=sorted(SETTING_KEYS))
    return key


class UpdateSettingRequest(RequestBody):
    """POST /multigpu/config/update_setting: one known setting; Settings checks its value."""

    key: Annotated[str, AfterValidator(_known_setting), MustBe("the name of a setting")] = Field(
        json_schema_extra={"enum": list(SETTING_KEYS)})
    value: Any = Field(description="a value valid for the key (see the Settings schema; no conversions: 1 is not "
                                   "true, \"1\" is not a number); api_token: 16-256 printable characters without "
                                   "spaces, or null to remove it")


class PrepareJobRequest(RequestBody):
    """POST /multigpu/prepare_job."""

    prompt: Annotated[dict[str, Any], MustBe("an API-format workflow (an object of nodes)")] = Field(
        description="API-format workflow")


WORKER_IDS = MustBe("a list of worker ids")


class ClearMemoryRequest(RequestBody):
    """POST /multigpu/clear_memory: which workers, and whether the master too."""

    worker_ids: Annotated[Optional[list[WorkerId]], WORKER_IDS] = Field(
        None, description="default (absent or null): every enabled worker")
    master: Annotated[bool, MustBe("true or false")] = True


class LaunchWorkersRequest(RequestBody):
    """POST /multigpu/workers/launch."""

    worker_ids: Annotated[list[WorkerId], WORKER_IDS] = Field(
        default_factory=list, description="default (absent): every enabled worker")


class RestartWorkerRequest(RequestBody):
    """POST /multigpu/workers/restart."""

    worker_id: WorkerId


class WorkerLogsRequest(RequestBody):
    """POST /multigpu/workers/logs."""

    worker_id: WorkerId
    lines: int = Field(40, ge=1, le=1000, description="how many last lines")


class WatchEventsRequest(RequestBody):
    """POST /multigpu/events: a websocket client registers for the multigpu.* events (renews), or ends it."""

    client_id: Annotated[str, Field(pattern=WORKER_ID_PATTERN), MustBe(
        "up to 64 letters, digits, '_', '.', '-'")] = Field(
        description="the client id of the websocket that receives the events: ComfyUI's clientId (the sid of its "
                    "/ws 'status' message, or the clientId query parameter the socket was opened with)")
    on: Annotated[bool, MustBe("true or false")] = Field(
        description="true: register (renew) this client; false: end its registration")
    previews: Annotated[bool, MustBe("true or false")] = Field(
        False, description="true: the workers' live previews too (multigpu.preview; the master reads workers' "
                           "preview frames only while some client wants them)")


def _same_as(header: str) -> MustBe:
    return MustBe(f"the same as the {header} header")


class JobCompleteRequest(RequestBody):
    """POST /multigpu/job_complete: who posts comes in headers; the body may repeat it."""

    job_id: Annotated[str, _same_as(JOB_HEADER)] = unset(
        max_length=MAX_IDENTITY, description=f"optional; when sent, must equal {JOB_HEADER}")
    worker_id: Annotated[WorkerId, _same_as(WORKER_HEADER)] = unset(
        description=f"optional; when sent, must equal {WORKER_HEADER}")
    share_token: Annotated[str, _same_as(SHARE_HEADER)] = unset(
        max_length=MAX_IDENTITY, description=f"optional; when sent, must equal {SHARE_HEADER}")
    outputs: Annotated[dict[str, list[Png]], MustBe("a map of each Collector's node id to a list of base64 PNG "
                                                    "images")] = Field(
        description="Collector node id -> base64 PNG images, in batch order: exactly the job's Collectors, each "
                    "with at least one image and at most the unit's batch")


# --- refusals -------------------------------------------------------------------------------


def parse_body(model: type[Body], data: dict[str, Any]) -> Body:
    """``data`` as ``model``; otherwise a 400 whose ``error`` names each problem's field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise refusal(model, exc) from None


def refusal(model: type[BaseModel], exc: ValidationError) -> ApiError:
    """The 400 for ``exc``: unknown fields first (named, with the allowed ones), else every problem."""
    errors = exc.errors()
    unknown = sorted(str(error["loc"][0]) for error in errors if error["type"] == "extra_forbidden")
    if unknown:
        return ApiError(400, f"unknown field(s) {unknown}; allowed: {sorted(model.model_fields)}")
    messages: list[str] = []
    extra: dict[str, Any] = {}
    for error in errors:
        if error["type"] == REFUSED:
            context = error.get("ctx") or {}
            message = str(context.get("message", error["msg"]))
            extra.update(context.get("extra") or {})
        else:
            message = _problem(model, error["loc"], error["type"], error["msg"])
        if message not in messages:
            messages.append(message)
    return ApiError(400, "; ".join(messages), **extra)


def _problem(model: type[BaseModel], loc: tuple[int | str, ...], kind: str, words: str) -> str:
    words = words.removeprefix("Value error, ")
    if not loc:  # the body as a whole (a model validator)
        return words
    where = str(loc[0]) + "".join(f"[{part}]" if isinstance(part, int) else f"[{json.dumps(str(part))[:80]}]"
                                  for part in loc[1:])
    field = model.model_fields.get(str(loc[0]))
    must = next((m for m in field.metadata if isinstance(m, MustBe)), None) if field is not None else None
    if must is not None and len(loc) == 1:
        return f"'{where}' must be {must.text}"
    if kind == "missing":
        return f"missing field '{where}'"
    return f"'{where}' {words}" if kind == "value_error" else f"'{where}': {words}"
