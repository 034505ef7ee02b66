"""The HTTP API under ``/multigpu/``: config, settings, job plans, VRAM, worker callback, status.

Every handler validates its input and answers JSON; a bad request gets a 4xx whose
``error`` names the problem. State-changing endpoints require the API token whenever one is
configured, and always when the master listens beyond loopback. The routes are described
by ``openapi.json`` beside this module, served at ``GET /multigpu/openapi.json``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hmac
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp
from aiohttp import web

from .config import REDACTED, SECRET_SETTINGS, ConfigStore, GpuConfig, Settings, WorkerConfig, public_view
from .errors import ConfigError, JobError, ResultRejected, UnknownJob, WorkerError, WorkflowError
from .health import HealthMonitor
from .orchestrator import RESERVATION_TTL, Orchestrator
from .plan import describe
from .worker_client import WorkerClient

log = logging.getLogger("comfy_distributed")

TOKEN_ENV = "COMFY_DISTRIBUTED_TOKEN"
OPENAPI_PATH = Path(__file__).with_name("openapi.json")
MAX_BODY = 64 * 1024
MAX_PROMPT_BODY = 16 * 1024 * 1024
MAX_RESULT_BODY = 100 * 1024 * 1024  # ComfyUI's own default upload limit
WORKER_FIELDS = frozenset({"name", "enabled", "host", "port", "cuda_device", "extra_args", "headers"})
STATUS_CACHE_SECONDS = 1.0
PROBE_TIMEOUT = 3.0
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """A refusal: HTTP status and a message for the ``error`` field."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


async def read_json_object(request: web.Request, limit: int, empty_ok: bool = False) -> dict[str, Any]:
    """The body as a JSON object, read up to ``limit`` bytes; an empty body is ``{}`` when ``empty_ok``."""
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"the body is larger than {limit} bytes")
    body = bytearray()
    while chunk := await request.content.read(65536):
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"the body is larger than {limit} bytes")
    if empty_ok and not body:
        return {}
    try:
        data = json.loads(bytes(body), parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ApiError(400, f"the body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    return data


def json_errors(handler: Handler, authorize: Callable[[web.Request], None] | None = None) -> Handler:
    """The handler, after ``authorize``, with every refusal answered as JSON (and a bug as a JSON 500)."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            if authorize is not None:
                authorize(request)
            return await handler(request)
        except ApiError as exc:
            headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
            return web.json_response({"error": exc.message, **exc.extra}, status=exc.status, headers=headers)
        except Exception:  # a bug of ours: answer JSON, keep the details in the log
            log.exception("Multi-GPU API: %s %s failed", request.method, request.path)
            return web.json_response({"error": "internal error; see the master's log"}, status=500)

    return wrapped


def _worker_id(data: dict[str, Any], key: str = "worker_id") -> int | str:
    if key not in data:
        raise ApiError(400, f"missing field '{key}'")
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ApiError(400, f"'{key}' must be a number or a string")
    return value


def _check_fields(data: dict[str, Any], allowed: frozenset[str], ignore: tuple[str, ...] = ()) -> dict[str, Any]:
    fields = {k: v for k, v in data.items() if k not in ignore}
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise ApiError(400, f"unknown field(s) {unknown}; allowed: {sorted(allowed)}")
    return fields


def _is_loopback(address: str) -> bool:
    return address in ("localhost", "::1") or address.startswith("127.")


def listens_beyond_loopback(listen: str | None) -> bool:
    """ComfyUI's ``--listen`` value: comma-separated addresses (default 127.0.0.1)."""
    return any(not _is_loopback(a.strip().strip("[]")) for a in (listen or "127.0.0.1").split(",") if a.strip())


class MultiGPUApi:
    """The /multigpu routes of one master. ``add_routes`` registers them on ComfyUI's table."""

    def __init__(self, store: ConfigStore, orchestrator: Orchestrator, *, public: bool = False,
                 free_master: Callable[[], None] | None = None, health: HealthMonitor | None = None) -> None:
        self.health = health
        self.store = store
        self.orchestrator = orchestrator
        self.public = public
        self.free_master = free_master
        self._session: aiohttp.ClientSession | None = None
        self._status_cache: tuple[float, list[dict[str, Any]]] | None = None

    def add_routes(self, routes: web.RouteTableDef) -> None:
        routes.get("/multigpu/config")(self._wrap(self.get_config))
        routes.post("/multigpu/config/update_worker")(self._wrap(self.update_worker, auth=True))
        routes.post("/multigpu/config/add_worker")(self._wrap(self.add_worker, auth=True))
        routes.post("/multigpu/config/remove_worker")(self._wrap(self.remove_worker, auth=True))
        routes.post("/multigpu/config/update_setting")(self._wrap(self.update_setting, auth=True))
        routes.post("/multigpu/prepare_job")(self._wrap(self.prepare_job, auth=True))
        routes.post("/multigpu/clear_memory")(self._wrap(self.clear_memory, auth=True))
        routes.post("/multigpu/job_complete")(self._wrap(self.job_complete))
        routes.get("/multigpu/status")(self._wrap(self.status))
        routes.get("/multigpu/openapi.json")(self._wrap(self.openapi))

    def make_app(self) -> web.Application:
        """A standalone app with these routes (tests, tools)."""
        routes = web.RouteTableDef()
        self.add_routes(routes)
        app = web.Application(client_max_size=MAX_RESULT_BODY)
        app.add_routes(routes)
        app.on_cleanup.append(lambda _app: self.close())
        return app

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- plumbing -----------------------------------------------------------------------

    def _wrap(self, handler: Handler, auth: bool = False) -> Handler:
        return json_errors(handler, self.authorize if auth else None)

    def token(self) -> str | None:
        env = os.environ.get(TOKEN_ENV)
        if env:
            return env
        return self._config().settings.api_token

    def authorize(self, request: web.Request) -> None:
        token = self.token()
        if token is None:
            if self.public:
                raise ApiError(401, "this master listens beyond loopback, so the control endpoints need a token: "
                                    f"set settings.api_token in gpu_config.json or the {TOKEN_ENV} environment "
                                    "variable, then send it as 'Authorization: Bearer <token>'")
            return
        supplied = request.headers.get("X-MultiGPU-Token", "")
        authorization = request.headers.get("Authorization", "")
        if authorization[:7].lower() == "bearer ":
            supplied = authorization[7:].strip()
        if not hmac.compare_digest(supplied.encode("utf-8", "replace"), token.encode()):
            raise ApiError(401, "missing or wrong token: send 'Authorization: Bearer <token>'")

    def _config(self) -> GpuConfig:
        try:
            return self.store.get()
        except ConfigError as exc:
            raise ApiError(409, f"the configuration file is invalid, fix it first: {exc}") from None

    def _update(self, change: Callable[[dict[str, Any]], None]) -> GpuConfig:
        self._config()  # a broken file is a 409, not the caller's fault
        try:
            config = self.store.update_data(change, strict=True)
        except ConfigError as exc:
            raise ApiError(400, str(exc)) from None
        if self.health is not None:
            self.health.poke()
        return config

    def _worker_index(self, config: GpuConfig, worker_id: int | str) -> int:
        for index, worker in enumerate(config.workers):
            if str(worker.id) == str(worker_id):
                return index
        raise ApiError(404, f"no worker with id {worker_id!r}")

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    # --- config -------------------------------------------------------------------------

    async def get_config(self, request: web.Request) -> web.Response:
        config = self._config()
        return web.json_response({**public_view(config), "auth": self._auth_info(config)})

    def _auth_info(self, config: GpuConfig) -> dict[str, bool]:
        configured = bool(os.environ.get(TOKEN_ENV) or config.settings.api_token)
        return {"token_configured": configured, "token_required": configured or self.public}

    async def update_worker(self, request: web.Request) -> web.Response:
        data = await read_json_object(request, MAX_BODY)
        worker_id = _worker_id(data)
        fields = _check_fields(data, WORKER_FIELDS, ignore=("worker_id",))
        if not fields:
            raise ApiError(400, f"nothing to change: give one or more of {sorted(WORKER_FIELDS)}")
        index = self._worker_index(self._config(), worker_id)

        def change(config: dict[str, Any]) -> None:
            position = next((i for i, w in enumerate(config["workers"]) if str(w["id"]) == str(worker_id)), None)
            if position is None:  # removed meanwhile
                raise ApiError(404, f"no worker with id {worker_id!r}")
            worker = config["workers"][position]
            changes = dict(fields)
            if isinstance(changes.get("headers"), dict):  # a masked value sent back means "keep it"
                old_headers = worker.get("headers") or {}
                changes["headers"] = {name: old_headers.get(name, value) if value == REDACTED else value
                                      for name, value in changes["headers"].items()}
            worker.update(changes)

        config = self._update(change)
        worker = config.find_worker(worker_id) or config.workers[index]
        return web.json_response({"worker": public_view(config)["workers"][config.workers.index(worker)]})

    async def add_worker(self, request: web.Request) -> web.Response:
        data = await read_json_object(request, MAX_BODY)
        fields = _check_fields(data, WORKER_FIELDS | {"id"})
        if "port" not in fields:
            raise ApiError(400, "missing field 'port'")
        if "id" in fields:
            _worker_id(fields, "id")
        added: dict[str, Any] = {}

        def change(config: dict[str, Any]) -> None:
            if "id" not in fields:
                numbers = [w["id"] for w in config["workers"] if isinstance(w["id"], int)]
                fields["id"] = max(numbers, default=0) + 1
            added.update(fields)
            config["workers"].append(dict(fields))

        config = self._update(change)
        index = next(i for i, w in enumerate(config.workers) if str(w.id) == str(added["id"]))
        return web.json_response({"worker": public_view(config)["workers"][index]}, status=201)

    async def remove_worker(self, request: web.Request) -> web.Response:
        data = await read_json_object(request, MAX_BODY)
        worker_id = _worker_id(data)
        _check_fields(data, frozenset({"worker_id"}))
        self._worker_index(self._config(), worker_id)

        def change(config: dict[str, Any]) -> None:
            before = len(config["workers"])
            config["workers"] = [w for w in config["workers"] if str(w["id"]) != str(worker_id)]
            if len(config["workers"]) == before:
                raise ApiError(404, f"no worker with id {worker_id!r}")

        self._update(change)
        return web.json_response({"removed": worker_id})

    async def update_setting(self, request: web.Request) -> web.Response:
        data = await read_json_object(request, MAX_BODY)
        _check_fields(data, frozenset({"key", "value"}))
        key = data.get("key")
        if not isinstance(key, str):
            raise ApiError(400, "'key' must be the name of a setting")
        known = sorted(Settings.model_fields)
        if key not in known:
            raise ApiError(400, f"unknown setting {key[:100]!r}", known=known)
        if "value" not in data:
            raise ApiError(400, "missing field 'value'")

        def change(config: dict[str, Any]) -> None:
            config["settings"][key] = data["value"]

        config = self._update(change)
        settings = {k: v for k, v in public_view(config)["settings"].items() if k not in SECRET_SETTINGS}
        return web.json_response({"settings": settings})

    # --- jobs ---------------------------------------------------------------------------

    async def prepare_job(self, request: web.Request) -> web.Response:
        data = await read_json_object(request, MAX_PROMPT_BODY)
        _check_fields(data, frozenset({"prompt"}))
        prompt = data.get("prompt")
        if not isinstance(prompt, dict):
            raise ApiError(400, "'prompt' must be an API-format workflow (an object of nodes)")
        try:
            plan = describe(prompt, self._config())
        except WorkflowError as exc:
            raise ApiError(400, str(exc)) from None
        if not plan["collectors"]:
            raise ApiError(400, "the prompt has no Multi-GPU Collector: nothing to distribute")
        job_id = self.orchestrator.reserve()
        return web.json_response({"job_id": job_id, "expires_in": RESERVATION_TTL, **plan})

    async def job_complete(self, request: web.Request) -> web.Response:
        data = await read_json_object(request, MAX_RESULT_BODY)
        _check_fields(data, frozenset({"job_id", "worker_id", "share_token", "outputs"}))
        job_id, token, outputs = data.get("job_id"), data.get("share_token"), data.get("outputs")
        worker_id = _worker_id(data)
        if not isinstance(job_id, str) or not isinstance(token, str):
            raise ApiError(400, "'job_id' and 'share_token' must be strings")
        if not isinstance(outputs, dict) or not all(isinstance(v, list) for v in outputs.values()):
            raise ApiError(400, "'outputs' must map each Collector's node id to a list of base64 PNG images")
        decoded: dict[str, list[bytes]] = {}
        for collector, images in outputs.items():
            decoded[collector] = [self._png(collector, index, image) for index, image in enumerate(images)]
        try:
            self.orchestrator.accept_results(job_id, worker_id, token, decoded)
        except UnknownJob as exc:
            raise ApiError(404, str(exc)) from None
        except ResultRejected as exc:
            raise ApiError(exc.status, str(exc)) from None
        except JobError as exc:
            raise ApiError(409, str(exc)) from None
        return web.json_response({"accepted": sum(len(v) for v in decoded.values())})

    @staticmethod
    def _png(collector: str, index: int, image: Any) -> bytes:
        if not isinstance(image, str):
            raise ApiError(400, f"outputs[{collector!r}][{index}] must be a base64 string")
        try:
            blob = base64.b64decode(image, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, f"outputs[{collector!r}][{index}] is not valid base64") from None
        if not blob.startswith(PNG_SIGNATURE):
            raise ApiError(400, f"outputs[{collector!r}][{index}] is not a PNG image")
        return blob

    # --- memory and status ----------------------------------------------------------------

    async def clear_memory(self, request: web.Request) -> web.Response:
        data = await read_json_object(request, MAX_BODY, empty_ok=True)
        _check_fields(data, frozenset({"worker_ids", "master"}))
        config = self._config()
        include_master = data.get("master", True)
        if not isinstance(include_master, bool):
            raise ApiError(400, "'master' must be true or false")
        ids = data.get("worker_ids")
        if ids is None:
            workers = config.enabled_workers()
        else:
            if not isinstance(ids, list) or any(isinstance(i, bool) or not isinstance(i, (int, str)) for i in ids):
                raise ApiError(400, "'worker_ids' must be a list of worker ids")
            unknown = [i for i in ids if config.find_worker(i) is None]
            if unknown:
                raise ApiError(404, f"no worker with id(s) {unknown}")
            workers = [w for w in config.workers if any(str(w.id) == str(i) for i in ids)]
        results = await asyncio.gather(*(self._free(worker, config.settings) for worker in workers))
        master: dict[str, Any] | None = None
        if include_master:
            master = {"ok": self.free_master is not None,
                      "error": None if self.free_master else "not running inside ComfyUI"}
            if self.free_master is not None:
                self.free_master()
        return web.json_response({"master": master, "workers": results})

    async def _free(self, worker: WorkerConfig, settings: Settings) -> dict[str, Any]:
        client = WorkerClient(worker, settings, self.session)
        try:
            await client.free()
            return {"worker_id": worker.id, "name": worker.display_name, "ok": True, "error": None}
        except WorkerError as exc:
            return {"worker_id": worker.id, "name": worker.display_name, "ok": False, "error": exc.message}

    async def status(self, request: web.Request) -> web.Response:
        config = self._config()
        now = time.monotonic()
        if self.health is not None and self.health.running:
            workers = self.health.snapshot(config.workers)
        else:  # no heartbeat running (outside ComfyUI): ask the workers now
            if self._status_cache is None or now - self._status_cache[0] > STATUS_CACHE_SECONDS:
                probed = await asyncio.gather(*(self._probe(w, config.settings) for w in config.workers))
                self._status_cache = (time.monotonic(), list(probed))
            workers = self._status_cache[1]
        return web.json_response({
            "master": {"status": "online", **self._auth_info(config)},
            "workers": workers,
            "jobs": self.orchestrator.jobs_summary(),
        })

    async def _probe(self, worker: WorkerConfig, settings: Settings) -> dict[str, Any]:
        entry: dict[str, Any] = {"id": worker.id, "name": worker.display_name, "address": worker.base_url,
                                 "enabled": worker.enabled, "status": "disabled", "queue_remaining": None,
                                 "error": None}
        if not worker.enabled:
            return entry
        quick = settings.model_copy(update={"connect_timeout": min(settings.connect_timeout, PROBE_TIMEOUT),
                                            "request_timeout": min(settings.request_timeout, PROBE_TIMEOUT)})
        try:
            info = await WorkerClient(worker, quick, self.session).queue_info()
            remaining = int(((info or {}).get("exec_info") or {}).get("queue_remaining", 0))
            entry.update(status="busy" if remaining else "idle", queue_remaining=remaining)
        except (WorkerError, ValueError, TypeError, AttributeError) as exc:
            entry.update(status="offline", error=getattr(exc, "message", str(exc)))
        return entry

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(json.loads(OPENAPI_PATH.read_text(encoding="utf-8")))
