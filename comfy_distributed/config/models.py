"""The typed model of ``gpu_config.json``: every field checked, with a message naming it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .pool import AGENT_NAME, HOSTNAME as _HOSTNAME, MAX_TAGS, TAG, PoolConfig, is_ip as _is_ip, is_loopback_name


CONFIG_ENV = "COMFY_DISTRIBUTED_CONFIG"
MASTER = "master"
"""The master's name as a participant (in plans, speeds, loaded models), beside the workers' ids."""
ROLE_ENV = "COMFY_DISTRIBUTED_ROLE"
"""Set by the launcher to tell a ComfyUI it runs as the master or a worker (``comfy.role`` reads it)."""
MAX_WORKER_NAME = 100
"""Characters of a worker's (or the master's) name."""
MAX_EXTRA_ARGS = 2000
"""Characters of an instance's extra command-line arguments."""

PACKAGE_ROOT = Path(__file__).resolve().parent.parent.parent
"""The extension's folder (the git clone in ``custom_nodes``)."""
DEFAULT_CONFIG_PATH = PACKAGE_ROOT / "gpu_config.json"
MAX_CONFIG_BYTES = 4 * 1024 * 1024


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", validate_assignment=True, strict=False)


def _plain_text(value: str, field: str, limit: int) -> str:
    if len(value) > limit:
        raise ValueError(f"at most {limit} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must not contain control characters (newlines, tabs, NUL)")
    return value


_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")


def _host_name(value: str) -> str:
    value = value.strip()
    if not (_is_ip(value.strip("[]")) or _HOSTNAME.match(value)):
        raise ValueError("must be a host name or an IP address")
    return value


def _path_text(value: str | None, field: str) -> str | None:
    if value is None or value == "":
        return None
    return _plain_text(value, field, 1000)


class SshConfig(_Model):
    """How the launcher reaches a remote worker's machine."""

    host: str
    user: str | None = None
    port: int = Field(22, ge=1, le=65535)
    key_file: str | None = None
    comfyui_path: str
    """ComfyUI's folder (the one with main.py) on the remote machine."""
    python: str | None = None
    """The remote interpreter; default: ComfyUI's venv/.venv/python_embeded there, else python3."""
    known_hosts_file: str | None = None
    """known_hosts file (on this machine) to check the remote host key against; default ~/.ssh/known_hosts."""

    _known_hosts = field_validator("known_hosts_file")(classmethod(lambda cls, v: _path_text(v, "known_hosts_file")))

    _host = field_validator("host")(classmethod(lambda cls, v: _host_name(v)))
    _user = field_validator("user")(classmethod(lambda cls, v: v if v is None else _user_name(v)))
    _key = field_validator("key_file")(classmethod(lambda cls, v: _path_text(v, "key_file")))
    _root = field_validator("comfyui_path")(classmethod(lambda cls, v: _path_text(v, "comfyui_path") or _empty(v)))
    _python = field_validator("python")(classmethod(lambda cls, v: _path_text(v, "python")))


def _user_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}", value):
        raise ValueError("must be a user name (letters, digits, '_', '.', '-')")
    return value


def _empty(value: str) -> str:
    raise ValueError("must not be empty")


class MasterConfig(_Model):
    port: int = Field(8188, ge=1, le=65535)
    cuda_device: int | None = Field(0, ge=0)
    extra_args: str = ""
    python: str | None = None
    """Interpreter for the launcher; default: ComfyUI's venv, .venv or python_embeded, else the running one."""
    weight: float | None = Field(None, gt=0, le=1e6)
    """Relative speed for weighted scheduling; default: measured, else 1."""
    participates: bool = True
    """Whether the master makes images too; false: it only coordinates (its share goes to the workers)."""

    _python = field_validator("python")(classmethod(lambda cls, v: _path_text(v, "python")))

    _extra_args = field_validator("extra_args")(classmethod(lambda cls, v: _plain_text(v, "extra_args", MAX_EXTRA_ARGS)))


class WorkerConfig(_Model):
    id: int | str
    name: str = ""
    cuda_device: int | None = Field(None, ge=0)
    port: int = Field(ge=1, le=65535)
    enabled: bool = True
    extra_args: str = ""
    host: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    """HTTP headers sent on every request to this worker (e.g. Authorization for an auth proxy)."""
    python: str | None = None
    """Interpreter for the launcher (local workers); default as for the master."""
    weight: float | None = Field(None, gt=0, le=1e6)
    """Relative speed for weighted scheduling; default: measured, else 1."""
    ssh: SshConfig | None = None
    """Set for a worker on another machine that the launcher starts and stops over SSH."""
    pool_agent: bool = False
    """Give this worker to the shared pool: the launcher starts a pool agent beside it, and a master with a pool
    configured reaches it through the pool only (see :attr:`given_to_pool`)."""
    pool_tags: list[str] = Field(default_factory=list, max_length=MAX_TAGS,
                                 json_schema_extra={"items": {"type": "string", "pattern": f"^{TAG.pattern}$"}})
    """The tags of that agent (what its GPU offers, e.g. ``gpu48``): a job that requires tags runs only on agents
    that have all of them."""

    _python = field_validator("python")(classmethod(lambda cls, v: _path_text(v, "python")))

    _name = field_validator("name")(classmethod(lambda cls, v: _plain_text(v, "name", MAX_WORKER_NAME)))
    _extra_args = field_validator("extra_args")(classmethod(lambda cls, v: _plain_text(v, "extra_args", MAX_EXTRA_ARGS)))

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > 32:
            raise ValueError("at most 32 headers")
        for name, header_value in value.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid HTTP header name")
            if len(header_value) > 4096 or any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in header_value):
                raise ValueError(f"the value of {name} must be one line of at most 4096 characters "
                                 "without control characters")
        return value

    @field_validator("pool_tags")
    @classmethod
    def _pool_tags(cls, value: list[str]) -> list[str]:
        for tag in value:
            if not TAG.fullmatch(tag):
                raise ValueError(f"{tag[:64]!r} is not a tag: 1 to 64 letters, digits, '_', '.', '-' (one tag per "
                                 "item of the list)")
        return value

    @model_validator(mode="after")
    def _agent_name(self) -> "WorkerConfig":
        if self.pool_agent and not AGENT_NAME.fullmatch(self.display_name):
            raise ValueError(f"name {self.display_name!r} is also its pool agent's name (pool_agent): use 1 to 100 "
                             "letters, digits, spaces or _ . : @ ( ) + -")
        return self

    @field_validator("id")
    @classmethod
    def _id(cls, value: int | str) -> int | str:
        if isinstance(value, str) and not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", value):
            raise ValueError("must be a number or up to 64 letters, digits, '_', '.', '-'")
        return value

    @field_validator("host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        value = value.strip()
        if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError("must not contain spaces or control characters")
        if "://" in value:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https"):
                raise ValueError("a URL must start with http:// or https://")
            if not parts.hostname or parts.query or parts.fragment or parts.username:
                raise ValueError("must be http(s)://host[:port][/path] without query, fragment or user")
            try:
                port = parts.port
            except ValueError as exc:
                raise ValueError(f"has a bad port: {exc}") from exc
            if port == 0:
                raise ValueError("has port 0; give a port from 1 to 65535 or none")
            return value.rstrip("/")
        if _is_ip(value.strip("[]")) or _HOSTNAME.match(value):
            return value
        raise ValueError("must be a host name, an IP address, or an http(s):// URL")

    @property
    def display_name(self) -> str:
        return self.name or f"Worker {self.id}"

    @property
    def given_to_pool(self) -> bool:
        """``pool_agent`` on a worker the launcher starts on this machine (no ssh block; no host, or a loopback one).

        With a pool configured, the launcher starts an agent beside it and the master leaves it out of its direct
        participants (:meth:`GpuConfig.without_pool_workers`): the agent's slot is how the master reaches it, so
        its GPU is never asked twice. ``pool_agent`` elsewhere does nothing, and is warned about
        (:func:`.pool_agents.pool_agent_warnings`)."""
        return self.pool_agent and self.ssh is None and self.on_this_machine

    @property
    def on_this_machine(self) -> bool:
        """No host, or a loopback one (not a URL): the worker runs beside the master."""
        return self.host is None or ("://" not in self.host and is_loopback_name(self.host))

    @property
    def base_url(self) -> str:
        """The address the master uses to reach this worker.

        A ``host`` that is a URL is used as it is (its own port, or the scheme's default):
        that is how a worker behind a reverse proxy or a cloud tunnel is reached. Otherwise
        ``http://host:port``, host defaulting to this machine.
        """
        host = self.host or "127.0.0.1"
        if "://" in host:
            return host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port}"


SECONDS: dict[str, Any] = {"unit": "s"}
"""Shown next to a setting's field in the panel (``settings_form``)."""


class Settings(_Model):
    """Known settings; unknown keys are kept as they are."""

    worker_timeout: float = Field(600.0, gt=0, le=86400, json_schema_extra=SECONDS,
                                  description="seconds a worker may take for its share, queue wait included")
    connect_timeout: float = Field(10.0, gt=0, le=600, json_schema_extra=SECONDS, description="seconds to open a connection to a worker")
    request_timeout: float = Field(60.0, gt=0, le=3600, json_schema_extra=SECONDS, description="seconds for one HTTP request to a worker")
    api_token: str | None = Field(None, json_schema_extra={"label": "API token"},
                                  description="token required by the /multigpu control endpoints (16-256 printable "
                                              "characters; never shown)")
    heartbeat_interval: float = Field(2.0, ge=0.1, le=3600, json_schema_extra=SECONDS, description="seconds between health checks of a worker")
    health_ttl: float = Field(6.0, ge=0.5, le=86400, json_schema_extra={**SECONDS, "label": "Health TTL"},
                              description="seconds without an answer after which a worker counts as offline")
    max_retries: int = Field(2, ge=0, le=10, description="times a failed unit is re-run on another participant")
    skip_offline_workers: bool = Field(False, description="leave out the share of a worker that is offline at "
                                                          "dispatch instead of running it elsewhere")
    scheduling_mode: Literal["static", "weighted", "dynamic"] = Field(
        "static", description="static: one unit per participant; weighted: shares by weight or measured speed; "
                              "dynamic: small units handed out as participants become free")
    unit_size: int = Field(1, ge=1, le=4096, json_schema_extra={"unit": "images"}, description="images per unit in weighted and dynamic modes")
    queue_mode: Literal["off", "no_collector", "all"] = Field(
        "off", description="send whole prompts to the least busy participant: off; no_collector (prompts without a "
                           "Multi-GPU Collector); all (every prompt, undistributed)")
    queue_routing: Literal["model_aware", "least_busy"] = Field(
        "model_aware", description="which participant a prompt goes to in queue mode: model_aware (the least busy; "
                                   "among those, the one that ran the prompt's checkpoint last, then the fastest "
                                   "measured); least_busy (the least busy, the master first on a tie, then config "
                                   "order)")
    launch_timeout: float = Field(180.0, gt=0, le=3600, json_schema_extra=SECONDS, description="seconds a launched instance has to answer")
    stop_workers_on_exit: bool = Field(False, description="the launcher stops the workers it started when the "
                                                          "master exits")
    allowed_hosts: list[str] = Field(default_factory=list, max_length=32, description=(
        "host names besides localhost and loopback addresses under which a master that listens on loopback "
        "only accepts /multigpu requests (the Host header); e.g. a name in /etc/hosts that points at 127.0.0.1"))
    max_file_mb: int = Field(256, ge=1, le=65536, json_schema_extra={"unit": "MiB", "label": "Largest worker file"}, description="largest file, in MiB, read from a worker "
                                                              "(an image, latent or audio file of one unit)")
    max_forward_mb: int = Field(2048, ge=1, le=1048576, json_schema_extra={"unit": "MiB", "label": "Largest queued "
                                "prompt's files"}, description="most MiB of files, all together, that one prompt sent "
                                "to a worker in queue mode may bring back (a video, its frames...); streamed to disk "
                                "and refused past it")
    pool: PoolConfig | None = Field(None, description=(
        "the shared GPU pool on Redis: {\"url\": \"redis://[user:password@]host:port/db\" (rediss:// for TLS), "
        "\"name\": \"default\", \"tags\": [tags an agent must offer to run this master's units], \"weight\": "
        "this master's share against other masters, 1 by default}; set in gpu_config.json or COMFY_DISTRIBUTED_POOL, never through the API (the "
        "password is shown as ***)"))

    @field_validator("allowed_hosts")
    @classmethod
    def _allowed_hosts(cls, value: list[str]) -> list[str]:
        return [_host_name(name).lower().strip("[]") for name in value]

    @field_validator("api_token")
    @classmethod
    def _token(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not re.fullmatch(r"[\x21-\x7e]{16,256}", value):
            raise ValueError("must be 16 to 256 printable characters without spaces")
        return value


SECRET_SETTINGS = frozenset({"api_token"})
REDACTED = "***"
FILE_ONLY_SETTINGS = frozenset({"pool"})
"""Settings the API shows (redacted) but never changes: the pool's URL holds a password and says where the master
sends every prompt it distributes."""


def settings_form() -> list[dict[str, Any]]:
    """How the panel draws each setting, from the model itself (served with ``GET /multigpu/config``).

    One row per field, in the model's order: ``key``, ``label``, ``help`` (the field's description),
    ``kind`` (``number``, ``integer``, ``bool``, ``enum`` with ``options``, ``secret``, or ``json``
    for values edited in the file), bounds ``min``/``max`` with ``min_inclusive``, and ``unit``.
    """
    rows = []
    for key, field in Settings.model_json_schema()["properties"].items():
        row: dict[str, Any] = {"key": key, "label": field.get("label") or key.replace("_", " ").capitalize(),
                               "help": field.get("description", ""), "unit": field.get("unit")}
        if key in SECRET_SETTINGS:
            row["kind"] = "secret"
        elif "enum" in field:
            row.update(kind="enum", options=list(field["enum"]))
        elif field.get("type") in ("number", "integer"):
            low = field.get("minimum", field.get("exclusiveMinimum"))
            row.update(kind=field["type"], min=low, max=field.get("maximum"), min_inclusive="minimum" in field)
        elif field.get("type") == "boolean":
            row["kind"] = "bool"
        else:
            row["kind"] = "json"
        rows.append(row)
    return rows


def _known(model: _Model) -> dict[str, Any]:
    """The fields of ``model`` that the schema knows, as JSON (unknown keys a user wrote are left out)."""
    return {name: value for name, value in model.model_dump(mode="json").items() if name in type(model).model_fields}


def public_view(config: "GpuConfig") -> dict[str, Any]:
    """The config as the API shows it: no token, header values masked, the SSH block reduced to its host,
    and none of the unknown keys (a user's notes may hold anything)."""
    settings = {k: v for k, v in _known(config.settings).items() if k not in SECRET_SETTINGS}
    settings["pool"] = config.settings.pool.public() if config.settings.pool is not None else None
    workers = []
    for worker in config.workers:
        data = _known(worker)
        data["headers"] = {name: REDACTED for name in worker.headers}
        if worker.ssh is not None:
            data["ssh"] = {"host": worker.ssh.host}
        workers.append(data)
    return {"master": _known(config.master), "workers": workers, "settings": settings}


class GpuConfig(_Model):
    master: MasterConfig = Field(default_factory=MasterConfig)
    workers: list[WorkerConfig] = Field(default_factory=list)
    settings: Settings = Field(default_factory=Settings)

    @model_validator(mode="after")
    def _unique(self) -> "GpuConfig":
        seen_ids: dict[str, int] = {}
        seen_addresses: dict[str, int] = {}
        for index, worker in enumerate(self.workers):
            key = str(worker.id)
            if key in seen_ids:
                raise ValueError(f"workers[{index}].id: {worker.id!r} is already used by workers[{seen_ids[key]}]")
            seen_ids[key] = index
            address = worker.base_url
            if address in seen_addresses:
                raise ValueError(
                    f"workers[{index}]: address {address} is already used by workers[{seen_addresses[address]}]"
                )
            seen_addresses[address] = index
        return self

    def enabled_workers(self) -> list[WorkerConfig]:
        """Enabled workers in config order: worker k of this list gets seed + k + 1."""
        return [worker for worker in self.workers if worker.enabled]

    def find_worker(self, worker_id: int | str) -> WorkerConfig | None:
        return next((w for w in self.workers if str(w.id) == str(worker_id)), None)

    def without_pool_workers(self) -> "GpuConfig":
        """This config without the workers given to the pool (:attr:`WorkerConfig.given_to_pool`): what a master
        with a pool configured reaches directly, the pool's agents being how it reaches the others."""
        if not any(worker.given_to_pool for worker in self.workers):
            return self
        return self.model_copy(update={"workers": [w for w in self.workers if not w.given_to_pool]})


PANEL_HINTS = frozenset({"unit", "label"})
"""Keys a field's ``json_schema_extra`` adds for the panel (``settings_form``); not JSON Schema."""


def public_view_schemas() -> dict[str, dict[str, Any]]:
    """The JSON schemas of what :func:`public_view` shows, for the API's OpenAPI document.

    ``master``, ``worker`` and ``settings``, each closed and with every known field always there,
    as ``public_view`` makes them: no secret settings, and a worker's ``ssh`` block reduced to its host.
    """

    def shown(model: type[_Model], hidden: frozenset[str] = frozenset()) -> dict[str, Any]:
        fields = model.model_json_schema()["properties"]
        properties = {name: {key: value for key, value in field.items() if key not in PANEL_HINTS}
                      for name, field in fields.items() if name not in hidden}
        return {"type": "object", "properties": properties, "required": list(properties),
                "additionalProperties": False}

    worker = shown(WorkerConfig)
    worker["properties"]["ssh"] = {
        "anyOf": [{"type": "object", "properties": {"host": {"type": "string"}}, "required": ["host"],
                   "additionalProperties": False}, {"type": "null"}],
        "description": "set for a worker the launcher starts over SSH; only its host is shown"}
    settings = shown(Settings, SECRET_SETTINGS)
    settings["properties"]["pool"] = {
        "anyOf": [{"type": "object", "properties": {"url": {"type": "string"}, "name": {"type": "string"},
                                                    "tags": {"type": "array", "items": {"type": "string"}},
                                                    "weight": {"type": "number"}},
                   "required": ["url", "name", "tags", "weight"], "additionalProperties": False}, {"type": "null"}],
        "description": "the shared pool; its URL without the password"}
    return {"master": shown(MasterConfig), "worker": worker, "settings": settings}
