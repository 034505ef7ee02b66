"""The HTTP API under ``/multigpu/``: config, settings, job plans, VRAM, worker callback, status.

Every handler reads its body as the route's request model (:mod:`.schemas_in`) and answers JSON; a
bad request gets a 4xx whose ``error`` names the problem. State-changing endpoints require the API
token whenever one is configured, and always when the master listens beyond loopback. Which route
needs what is the route table's (:mod:`.routes`), from which ``python -m comfy_distributed.api.openapi``
also writes ``openapi.json`` beside this module, served at ``GET /multigpu/openapi.json``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Callable

import aiohttp
from aiohttp import web

from .access import TOKEN_ENV, Access, ApiError, Guard, check_launch_flags, listens_beyond_loopback
from .schemas_in import (
    AddWorkerRequest,
    ClearMemoryRequest,
    PrepareJobRequest,
    RemoveWorkerRequest,
    UpdateSettingRequest,
    UpdateWorkerRequest,
    WatchEventsRequest,
)
from .job_complete import MAX_RESULT_BODY, ResultIntake
from .audience import Audience
from .routes import MASTER_ROUTES
from .http_json import Handler, json_errors, read_json_object, read_model
from ..config import (
    REDACTED,
    SECRET_SETTINGS,
    ConfigStore,
    GpuConfig,
    Settings,
    WorkerConfig,
    public_view,
    settings_form,
    pool_agent_warnings,
    unknown_key_warnings,
)
from ..errors import ConfigError, WorkerError, WorkflowError
from ..cluster.health import HealthMonitor
from ..engine.jobs import RESERVATION_TTL
from ..cluster.view import cluster_line, cluster_summary
from ..cluster.metrics import CONTENT_TYPE
from .openapi import OPENAPI_PATH
from ..collector.orchestrator import Orchestrator
from ..engine.plan import plan_summary
from ..worker_client import WorkerClient, worker_session

log = logging.getLogger("comfy_distributed")

__all__ = ["ApiError", "MAX_RESULT_BODY", "OPENAPI_PATH", "MultiGPUApi", "TOKEN_ENV", "json_errors",
           "listens_beyond_loopback", "read_json_object"]

SETTINGS_FORM = settings_form()
"""How the panel draws the settings: derived from the Settings model, the one place they are described."""
MAX_BODY = 64 * 1024
MAX_PROMPT_BODY = 16 * 1024 * 1024
STATUS_CACHE_SECONDS = 1.0
PROBE_TIMEOUT = 3.0


def _worker_changes(worker: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` as they apply to ``worker``: a masked header value sent back means "keep it", but stored
    headers (proxy keys, bearer tokens) never follow a change of address unless they are sent again."""
    changes = dict(fields)
    moved = any(key in changes and changes[key] != worker.get(key) for key in ("host", "port"))
    headers = changes.get("headers")
    if moved and isinstance(headers, dict) and REDACTED in headers.values():
        raise ApiError(400, "the worker's address changes: send its header values again (a masked '***' value "
                            "would send the old secret to the new address)")
    if isinstance(headers, dict):
        old_headers = worker.get("headers") or {}
        changes["headers"] = {name: old_headers.get(name, value) if value == REDACTED else value
                              for name, value in headers.items()}
    elif moved and worker.get("headers"):
        changes["headers"] = {}
        log.warning("Multi-GPU: worker %s moved to a new address; its stored headers were dropped", worker.get("id"))
    return changes


class MultiGPUApi:
    """The /multigpu routes of one master. ``add_routes`` registers them on ComfyUI's table."""

    def __init__(self, store: ConfigStore, orchestrator: Orchestrator, *, public: bool = False,
                 free_master: Callable[[], None] | None = None, health: HealthMonitor | None = None,
                 env_token: str | None = None, master_queue: Callable[[], int | None] = lambda: None,
                 audience: Audience | None = None,
                 cors_origin: str | None = None) -> None:
        self.health = health
        self.master_queue = master_queue
        """Prompts running and waiting in the master's own queue (ComfyUI's; None outside ComfyUI)."""
        self.env_token = env_token
        """``COMFY_DISTRIBUTED_TOKEN`` as the master read it at start; it wins over ``settings.api_token``."""
        self.store = store
        self.orchestrator = orchestrator
        self.public = public
        self.free_master = free_master
        self._session: aiohttp.ClientSession | None = None
        self._status_cache: tuple[float, list[dict[str, Any]]] | None = None
        self.guard = Guard(public, self.token, self._allowed_hosts, cors_origin)
        self._results = ResultIntake(orchestrator)
        self.audience = audience if audience is not None else Audience(lambda event, data, client_id: None)
        """The clients the master's events go to (``POST /multigpu/events``)."""

    def add_routes(self, routes: web.RouteTableDef) -> None:
        """Every route of ``api_routes.MASTER_ROUTES``, behind the guard with the access the table gives it."""
        handlers: dict[str, Handler] = {
            "getConfig": self.get_config, "updateWorker": self.update_worker, "addWorker": self.add_worker,
            "removeWorker": self.remove_worker, "updateSetting": self.update_setting,
            "prepareJob": self.prepare_job, "clearMemory": self.clear_memory,
            "jobComplete": self._results.job_complete, "getStatus": self.status, "getOpenApi": self.openapi,
            "getMetrics": self.metrics, "watchEvents": self.watch_events,
        }
        for route in MASTER_ROUTES:
            routes.route(route.method, route.path)(self._wrap(handlers[route.operation_id], route.access))

    def make_app(self) -> web.Application:
        """A standalone app with these routes (tests, tools); its clean-up also stops the orchestrator and closes
        its cluster's connections to workers, as the master's does when it stops."""
        routes = web.RouteTableDef()
        self.add_routes(routes)
        app = web.Application(client_max_size=MAX_RESULT_BODY)
        app.add_routes(routes)
        app.on_cleanup.append(lambda _app: self.close())
        app.on_cleanup.append(lambda _app: self.orchestrator.close())
        app.on_cleanup.append(lambda _app: self.orchestrator.cluster.close())
        return app

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- plumbing -----------------------------------------------------------------------

    def _wrap(self, handler: Handler, access: Access) -> Handler:
        return json_errors(handler, lambda request: self.guard.check(request, access))

    def token(self) -> str | None:
        return self.env_token or self._config().settings.api_token

    def _allowed_hosts(self) -> list[str]:
        try:
            return self.store.get().settings.allowed_hosts
        except ConfigError:
            return []

    def authorize(self, request: web.Request) -> None:
        """The guard of a control route (also used by the launch routes)."""
        self.guard.check(request, Access.CONTROL)

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
            self._session = worker_session()  # the one policy: no cookies, no redirects, no proxy from the env
        return self._session

    # --- config -------------------------------------------------------------------------

    async def get_config(self, request: web.Request) -> web.Response:
        config = self._config()
        return web.json_response({**public_view(config), "auth": self._auth_info(config),
                                  "settings_form": SETTINGS_FORM})

    def _auth_info(self, config: GpuConfig) -> dict[str, bool]:
        configured = bool(self.env_token or config.settings.api_token)
        return {"token_configured": configured, "token_required": configured or self.public, "public": self.public}

    async def update_worker(self, request: web.Request) -> web.Response:
        body = await read_model(request, UpdateWorkerRequest, MAX_BODY)
        worker_id = body.worker_id
        fields = body.sent("worker_id")
        check_launch_flags(fields.get("extra_args"), "extra_args")
        index = self._worker_index(self._config(), worker_id)

        def change(config: dict[str, Any]) -> None:
            position = next((i for i, w in enumerate(config["workers"]) if str(w["id"]) == str(worker_id)), None)
            if position is None:  # removed meanwhile
                raise ApiError(404, f"no worker with id {worker_id!r}")
            worker = config["workers"][position]
            worker.update(_worker_changes(worker, fields))

        config = self._update(change)
        worker = config.find_worker(worker_id) or config.workers[index]
        return web.json_response({"worker": public_view(config)["workers"][config.workers.index(worker)]})

    async def add_worker(self, request: web.Request) -> web.Response:
        fields = (await read_model(request, AddWorkerRequest, MAX_BODY)).sent()
        check_launch_flags(fields.get("extra_args"), "extra_args")
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
        worker_id = (await read_model(request, RemoveWorkerRequest, MAX_BODY)).worker_id
        self._worker_index(self._config(), worker_id)

        def change(config: dict[str, Any]) -> None:
            before = len(config["workers"])
            config["workers"] = [w for w in config["workers"] if str(w["id"]) != str(worker_id)]
            if len(config["workers"]) == before:
                raise ApiError(404, f"no worker with id {worker_id!r}")

        self._update(change)
        return web.json_response({"removed": worker_id})

    async def update_setting(self, request: web.Request) -> web.Response:
        body = await read_model(request, UpdateSettingRequest, MAX_BODY)

        def change(config: dict[str, Any]) -> None:
            config["settings"][body.key] = body.value

        config = self._update(change)
        settings = {k: v for k, v in public_view(config)["settings"].items() if k not in SECRET_SETTINGS}
        return web.json_response({"settings": settings})

    # --- jobs ---------------------------------------------------------------------------

    async def prepare_job(self, request: web.Request) -> web.Response:
        prompt = (await read_model(request, PrepareJobRequest, MAX_PROMPT_BODY)).prompt
        try:
            self._config()  # a broken file: said as the other routes say it
            config = self.orchestrator.cluster.config()  # with the pool's live agents, as a job is planned
            plan = plan_summary(prompt, self.orchestrator.plan(prompt, config))  # the plan a job would run with now
        except WorkflowError as exc:
            raise ApiError(400, str(exc)) from None
        if not plan["collectors"]:
            raise ApiError(400, "the prompt has no Multi-GPU Collector: nothing to distribute")
        job_id = self.orchestrator.reserve()
        return web.json_response({"job_id": job_id, "expires_in": RESERVATION_TTL, **plan})

    # --- memory and status ----------------------------------------------------------------

    async def clear_memory(self, request: web.Request) -> web.Response:
        body = await read_model(request, ClearMemoryRequest, MAX_BODY, empty_ok=True)
        config = self._config()
        include_master = body.master
        ids = body.worker_ids
        if ids is None:
            workers = config.enabled_workers()
        else:
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
        jobs = self.orchestrator.jobs_summary()
        pool = self.orchestrator.cluster.pool
        cluster = cluster_summary(self.master_queue(), workers, jobs)
        return web.json_response({
            "master": {"status": "online", **self._auth_info(config)},
            "workers": workers,
            "jobs": jobs,
            "cluster": {**cluster, "line": cluster_line(cluster)},
            "config_warnings": [*unknown_key_warnings(config), *pool_agent_warnings(config, pool is not None)],
            "pool": pool.status() if pool is not None else None,
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

    async def metrics(self, request: web.Request) -> web.Response:
        config = self._config()
        workers = self.health.snapshot(config.workers) if self.health is not None else []
        states: dict[str, int] = {}
        for job in self.orchestrator.jobs_summary():
            if not job["settled"]:
                for unit in job["units"]:
                    states[unit["state"]] = states.get(unit["state"], 0) + 1
        text = self.orchestrator.cluster.metrics.render(states, workers)
        return web.Response(text=text, headers={"Content-Type": CONTENT_TYPE})

    async def watch_events(self, request: web.Request) -> web.Response:
        body = await read_model(request, WatchEventsRequest, MAX_BODY)
        expires_in = self.audience.watch(body.client_id, body.on, body.previews)
        previews = self.orchestrator.cluster.previews  # the one relay of every job owner's units
        previews.watch(body.client_id, body.on and body.previews)
        return web.json_response({"on": expires_in > 0, "expires_in": expires_in, "previews": previews.watched()})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(json.loads(OPENAPI_PATH.read_text(encoding="utf-8")))
