"""The pool protocol's values, as they travel through Redis: each one's shape, its size cap, encoding and decoding.

Everything here is read from a Redis that other pool members write to, so every value is checked for size before it
is parsed and for shape after (:func:`decode`): what does not fit raises :class:`~..errors.PoolProtocolError`,
naming what and why, and the reader refuses that value (an agent acknowledges and deletes a bad unit entry and
logs it; the master drops a bad reply). The keys themselves are in :mod:`.keys`.

Values (JSON unless said otherwise):

- :class:`Heartbeat` (``agent:{id}``): ``{id, name, tags, caps, busy, checkpoint, comfyui, version}``;
  ``busy`` is ``{job_id, position, attempt, master}`` or null.
- :class:`Caps` (``caps:{digest}``): ``{"classes": {class: {input: [allowed values]}}}``: every node class of the
  agent's ComfyUI and, for each choice input, its values (:mod:`.caps` makes it from ``/object_info``).
- :class:`JobRecord` (``job:{id}``): ``{job_id, master, reply, needs: {classes, choices}, tags, weight}``.
- :class:`UnitEntry` (field ``unit`` of a ``units:{job}`` entry): ``{job_id, position, attempt, prompt,
  extra_data, files: [{sha256, name, subfolder}], wanted, deadline, previews}``; ``deadline`` is epoch seconds.
- A reply (an entry of ``reply:{master}``): field ``kind`` (progress | done | failed | preview) and field ``head``
  (:class:`ReplyHead`: ``{job_id, position, attempt, agent, agent_name}`` plus ``value``/``max`` for progress,
  ``error`` for failed, ``outputs`` ``{node: {kind: [{filename, subfolder, type, field}]}}`` for done, ``mime`` for
  preview); a done entry carries each file's bytes in its own field (``f0``, ``f1``...), a preview its image in
  field ``image``. :func:`decode_reply` turns one into a :class:`UnitReply` for the engine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Mapping, Type, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from ..config.json_limits import loads_bounded
from ..config.pool import AGENT_NAME, MAX_TAGS, TAG
from ..errors import PoolProtocolError
from ..worker_client import MIB, MAX_PREVIEW_BYTES, PreviewFrame, clip_text
from ..worker_client.answers import size_text

MAX_HEARTBEAT_BYTES = 64 * 1024
MAX_CAPS_BYTES = 16 * MIB
"""A large install's node classes with its model lists (``/object_info`` itself may be 32 MiB: caps keep less)."""
MAX_JOB_BYTES = 1 * MIB
MAX_UNIT_BYTES = 16 * MIB
"""One unit entry: its prompt (a large graph, Values, long prompt texts) with room to spare."""
MAX_HEAD_BYTES = 1 * MIB
MAX_ERROR_TEXT = 2000
MAX_REPLY_FILES = 4096
AGENT_VERSION = "1"
"""The protocol version an agent announces in its heartbeat."""

Id = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
JobId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,128}$")]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Tag = Annotated[str, StringConstraints(pattern=f"^{TAG.pattern}$")]
AgentName = Annotated[str, StringConstraints(pattern=f"^{AGENT_NAME.pattern}$")]
Name = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Choice = Annotated[str, StringConstraints(max_length=4096)]
Short = Annotated[str, StringConstraints(max_length=1024)]

M = TypeVar("M", bound=BaseModel)


class Wire(BaseModel):
    """A value read from Redis: keys we do not know are ignored (a newer member may add some)."""

    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)  # a number is a real number


class Needs(Wire):
    """What a job's units need of an agent's ComfyUI: node classes, and values of choice inputs per class."""

    classes: list[Name] = Field(default_factory=list, max_length=20_000)
    choices: dict[Name, dict[Name, list[Choice]]] = Field(default_factory=dict, max_length=20_000)


class Caps(Wire):
    """What an agent's ComfyUI can run: each node class, with the allowed values of each of its choice inputs."""

    classes: dict[Name, dict[Name, list[Choice]]] = Field(max_length=100_000)


class Busy(Wire):
    job_id: JobId
    position: int = Field(ge=0)
    attempt: int = Field(ge=0)
    master: Id


class Heartbeat(Wire):
    id: Id
    name: AgentName
    tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS)
    caps: Sha256 | None = None
    """The digest of the agent's :class:`Caps` (None until its ComfyUI answered once)."""
    busy: Busy | None = None
    checkpoint: Short | None = None
    """The last checkpoint its ComfyUI loaded (for model-aware choices), when known."""
    comfyui: bool = False
    """Whether its ComfyUI answers now: an agent whose ComfyUI does not takes no unit."""
    version: Annotated[str, StringConstraints(max_length=64)] = AGENT_VERSION


class JobRecord(Wire):
    job_id: JobId
    master: Id
    reply: Annotated[str, StringConstraints(min_length=1, max_length=300)]
    needs: Needs = Field(default_factory=Needs)
    tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS)
    weight: float = Field(1.0, gt=0, le=1e6)


class FileRef(Wire):
    """An input file of a unit: its bytes at ``file:{sha256}``, uploaded to the agent's ComfyUI as ``name``."""

    sha256: Sha256
    name: Annotated[str, StringConstraints(pattern=r"^[^/\\\x00-\x1f\x7f]{1,255}$")]
    subfolder: Annotated[str, StringConstraints(pattern=r"^[^\\\x00-\x1f\x7f]{0,255}$")] = ""
    folder: Literal["input", "temp"] = "input"
    """Where the agent puts it: ComfyUI's input folder, or its temp folder (a tile's crop: ``name [temp]``)."""

    @field_validator("name", "subfolder")
    @classmethod
    def _no_parent(cls, value: str) -> str:
        if any(part in (".", "..") for part in value.split("/")) or value.startswith("/"):
            raise ValueError("must not climb out of the input folder ('.', '..' or a leading '/')")
        return value


class UnitEntry(Wire):
    job_id: JobId
    position: int = Field(ge=0, le=1_000_000)
    attempt: int = Field(ge=0, le=100_000)
    prompt: dict[Name, dict[str, Any]] = Field(min_length=1, max_length=100_000)
    extra_data: dict[str, Any] | None = None
    files: list[FileRef] = Field(default_factory=list, max_length=256)
    wanted: list[Annotated[str, StringConstraints(max_length=256)]] = Field(default_factory=list,
                                                                             max_length=100_000)
    deadline: float
    previews: bool = False
    progress_every: float = Field(0.0, ge=0.0, le=3600.0)
    """Seconds between two progress (or preview) replies the master wants at least (0: the agent's own pace, a
    second): it asks for fewer, each, the more agents it follows (:data:`.member.PROGRESS_REPLIES`)."""

    @field_validator("prompt")
    @classmethod
    def _nodes(cls, prompt: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for node_id, node in prompt.items():
            if not isinstance(node.get("class_type"), str) or not isinstance(node.get("inputs", {}), dict):
                raise ValueError(f"node {clip_text(node_id, 64)} has no class_type string or inputs object")
        return prompt


class OutputRef(Wire):
    filename: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    subfolder: Short = ""
    type: Short = "output"
    field: Annotated[str, StringConstraints(pattern=r"^f\d{1,5}$")]


ReplyKind = Literal["progress", "done", "failed", "preview"]


class ReplyHead(Wire):
    job_id: JobId
    position: int = Field(ge=0)
    attempt: int = Field(ge=0)
    agent: Id
    agent_name: AgentName
    value: float | None = None
    max: float | None = None
    error: Annotated[str, StringConstraints(max_length=MAX_ERROR_TEXT)] | None = None
    outputs: dict[Name, dict[Name, list[OutputRef]]] = Field(default_factory=dict, max_length=10_000)
    values: dict[Name, dict[Name, Any]] = Field(default_factory=dict, max_length=10_000)
    """A done reply: the output nodes' other outputs (text, a video's ``animated`` flag), as ComfyUI reported them;
    within the head's size cap."""
    mime: Literal["image/jpeg", "image/png"] | None = None


@dataclass(slots=True, frozen=True)
class ReturnedFile:
    """A file an agent's ComfyUI made, as it named it, with its bytes."""

    filename: str
    subfolder: str
    type: str
    data: bytes


@dataclass(slots=True, frozen=True)
class UnitReply:
    """One reply to the master, checked: what the engine gets from :meth:`.broker.PoolBroker.watch`."""

    kind: ReplyKind
    job_id: str
    position: int
    attempt: int
    agent: str
    agent_name: str
    value: float = 0.0
    max: float = 0.0
    error: str = ""
    outputs: dict[str, dict[str, list[ReturnedFile]]] = field(default_factory=dict)
    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    preview: PreviewFrame | None = None

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.job_id, self.position, self.attempt)


def encode(value: BaseModel) -> bytes:
    return value.model_dump_json().encode()


def canonical(data: Any) -> bytes:
    """The one JSON form of ``data`` (sorted keys, no spaces): what a caps digest is taken of."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def decode(model: Type[M], raw: Any, limit: int, what: str) -> M:
    """``raw`` (bytes read from Redis) as ``model``; PoolProtocolError naming ``what`` when too large or misshapen."""
    if not isinstance(raw, (bytes, str)):
        raise PoolProtocolError(f"{what}: missing or not a string")
    data = raw.encode() if isinstance(raw, str) else raw
    if len(data) > limit:
        raise PoolProtocolError(f"{what}: {len(data)} bytes, more than the cap of {size_text(limit)}; refused")
    try:
        parsed = loads_bounded(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise PoolProtocolError(f"{what}: not JSON ({clip_text(exc, 120)})") from None
    try:
        return model.model_validate(parsed)
    except ValidationError as exc:
        raise PoolProtocolError(f"{what}: {validation_text(exc)}") from None


def validation_text(exc: ValidationError) -> str:
    """The first problem of a validation error, named by where it is (``busy.position: ...``)."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "the value"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{clip_text(where, 120)}: {clip_text(first['msg'], 200)}{more}"


def field_of(fields: Mapping[Any, Any], name: str) -> Any:
    """A stream entry's field by name, whether redis-py returned bytes or str keys."""
    return fields.get(name.encode(), fields.get(name))


def decode_reply(fields: Mapping[Any, Any], max_file_bytes: int, max_total_bytes: int) -> UnitReply:
    """A reply entry as a :class:`UnitReply`: its head checked, each file at most ``max_file_bytes`` and all of
    them at most ``max_total_bytes``; PoolProtocolError otherwise."""
    kind = field_of(fields, "kind")
    kind = kind.decode(errors="replace") if isinstance(kind, bytes) else kind
    if kind not in ("progress", "done", "failed", "preview"):
        raise PoolProtocolError(f"a reply of kind {clip_text(kind, 40)!r}, not progress, done, failed or preview")
    head = decode(ReplyHead, field_of(fields, "head"), MAX_HEAD_BYTES, f"a {kind} reply's head")
    ids = (head.job_id, head.position, head.attempt, head.agent, head.agent_name)
    if kind == "progress":
        return UnitReply("progress", *ids, value=head.value or 0.0, max=head.max or 0.0)
    if kind == "failed":
        return UnitReply("failed", *ids, error=head.error or "the agent gave no reason")
    if kind == "preview":
        return UnitReply("preview", *ids, preview=_preview(fields, head))
    return UnitReply("done", *ids, outputs=_returned(fields, head, max_file_bytes, max_total_bytes),
                     values={node: dict(values) for node, values in head.values.items()})


def _preview(fields: Mapping[Any, Any], head: ReplyHead) -> PreviewFrame:
    image = field_of(fields, "image")
    if not isinstance(image, bytes) or not 0 < len(image) <= MAX_PREVIEW_BYTES or head.mime is None:
        raise PoolProtocolError(f"a preview reply without an image of at most {size_text(MAX_PREVIEW_BYTES)} "
                                "and its mime type")
    magic = b"\xff\xd8\xff" if head.mime == "image/jpeg" else b"\x89PNG\r\n\x1a\n"
    if not image.startswith(magic):
        raise PoolProtocolError(f"a preview reply whose image is not the {head.mime} it claims to be")
    return PreviewFrame(head.mime, image)


def _returned(fields: Mapping[Any, Any], head: ReplyHead, max_file: int,
              max_total: int) -> dict[str, dict[str, list[ReturnedFile]]]:
    outputs: dict[str, dict[str, list[ReturnedFile]]] = {}
    total = count = 0
    for node_id, kinds in head.outputs.items():
        for kind, refs in kinds.items():
            for ref in refs:
                data = field_of(fields, ref.field)
                count += 1
                if not isinstance(data, bytes) or count > MAX_REPLY_FILES:
                    raise PoolProtocolError(f"a done reply names field {ref.field} that it does not carry "
                                            f"(or more than {MAX_REPLY_FILES} files)")
                total += len(data)
                if len(data) > max_file or total > max_total:
                    cap = size_text(max_file) if len(data) > max_file else f"{size_text(max_total)} in all"
                    raise PoolProtocolError(f"a done reply's file {clip_text(ref.filename, 100)} passes the cap of "
                                            f"{cap}; refused")
                returned = ReturnedFile(ref.filename, ref.subfolder, ref.type, data)
                outputs.setdefault(node_id, {}).setdefault(kind, []).append(returned)
    return outputs


def reply_fields(kind: ReplyKind, head: ReplyHead, blobs: Mapping[str, bytes] | None = None) -> dict[str, bytes]:
    """A reply entry's fields: its kind, its head, and the bytes the head names (``f0``... or ``image``).
    PoolProtocolError when the head passes its cap (the master would refuse it: the unit fails saying why)."""
    data = encode(head)
    if len(data) > MAX_HEAD_BYTES:
        raise PoolProtocolError(f"its {kind} reply's head is {len(data)} bytes of JSON (outputs' names and "
                                f"values), more than the cap of {MAX_HEAD_BYTES}")
    return {"kind": kind.encode(), "head": data, **(blobs or {})}
