"""``POST /multigpu/workers/launch``, ``POST /multigpu/workers/restart`` and ``POST /multigpu/workers/logs``: the
UI's start, restart and log buttons.

The first two start processes and the third reads logs, so all need the same token as the other control
endpoints (``authorize`` raises :class:`~.handlers.ApiError` 401). A local worker is started by the launcher's process manager, a
worker with an ``ssh`` block over SSH. The answer comes once the process is started (not once it is
ready); the health monitor shows the worker as ``launching`` until it answers or
``settings.launch_timeout`` runs out. ``launch`` reports each worker (``ok: false`` with the
launcher's message for one that could not be started), like ``clear_memory``; a ``restart`` that
fails is a 409 whose ``error`` says why (port taken, SSH login refused, not started by the launcher).
``logs`` reads the launched worker's log where the launcher wrote it (never a path from the request).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

from aiohttp import web

from .handlers import MAX_BODY, ApiError, json_errors
from .schemas_in import LaunchWorkersRequest, RestartWorkerRequest, WorkerLogsRequest
from .routes import LAUNCH_PATH, LAUNCH_ROUTES, LOGS_PATH, RESTART_PATH
from ..config import ConfigStore, GpuConfig, WorkerConfig
from ..errors import ConfigError
from ..cluster.health import HealthMonitor
from .http_json import read_model
from ..launcher import Launcher, LaunchError, Outcome

log = logging.getLogger("comfy_distributed")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
__all__ = ["LAUNCH_PATH", "RESTART_PATH", "LaunchHandlers", "add_launch_routes"]


def add_launch_routes(routes: web.RouteTableDef, store: ConfigStore, health: HealthMonitor | None,
                      launcher_factory: Callable[[], Launcher], authorize: Callable[[web.Request], None]) -> None:
    """Register ``api_routes.LAUNCH_ROUTES`` on ``routes`` (ComfyUI's table or a test app's); both are control
    routes, guarded by ``authorize``."""
    handlers = LaunchHandlers(store, health, launcher_factory)
    served = {LAUNCH_PATH: handlers.launch, RESTART_PATH: handlers.restart, LOGS_PATH: handlers.logs}
    for route in LAUNCH_ROUTES:
        routes.route(route.method, route.path)(json_errors(served[route.path], authorize))


class LaunchHandlers:
    def __init__(self, store: ConfigStore, health: HealthMonitor | None,
                 launcher_factory: Callable[[], Launcher]) -> None:
        self.store = store
        self.health = health
        self.launcher_factory = launcher_factory

    def _config(self) -> GpuConfig:
        try:
            return self.store.get()
        except ConfigError as exc:
            raise ApiError(409, f"the configuration file is invalid, fix it first: {exc}") from None

    def _launched(self, outcome: Outcome, config: GpuConfig) -> dict[str, Any]:
        if outcome.action == "started" and self.health is not None and outcome.instance.worker is not None:
            self.health.mark_launching(outcome.instance.worker.id, config.settings.launch_timeout)
        return outcome.as_json()

    async def launch(self, request: web.Request) -> web.Response:
        body = await read_model(request, LaunchWorkersRequest, MAX_BODY, empty_ok=not request.body_exists)
        config = self._config()
        if "worker_ids" not in body.model_fields_set:
            workers = config.enabled_workers()
        else:
            ids = body.worker_ids
            unknown = [value for value in ids if config.find_worker(value) is None]
            if unknown:
                raise ApiError(404, f"no worker with id(s) {unknown}")
            workers = [w for w in config.workers if any(str(w.id) == str(value) for value in ids)]
        outcomes = await asyncio.to_thread(self._launch_all, workers)
        return web.json_response({"workers": [self._launched(o, config) for o in outcomes]})

    def _launch_all(self, workers: list[WorkerConfig]) -> list[Outcome]:
        launcher = self.launcher_factory()
        return [launcher.start(launcher.find(str(worker.id)), wait=False) for worker in workers]

    async def restart(self, request: web.Request) -> web.Response:
        body = await read_model(request, RestartWorkerRequest, MAX_BODY, empty_ok=not request.body_exists)
        worker_id = body.worker_id
        config = self._config()
        if config.find_worker(worker_id) is None:
            raise ApiError(404, f"no worker with id {worker_id!r}")
        outcome = await asyncio.to_thread(self._restart, worker_id)
        answer = self._launched(outcome, config)
        if outcome.error:
            raise ApiError(409, f"{outcome.instance.label} could not be restarted: {outcome.error}", worker=answer)
        return web.json_response({"worker": answer})

    async def logs(self, request: web.Request) -> web.Response:
        body = await read_model(request, WorkerLogsRequest, MAX_BODY)
        config = self._config()
        worker = config.find_worker(body.worker_id)
        if worker is None:
            raise ApiError(404, f"no worker with id {body.worker_id!r}")
        where, text = await asyncio.to_thread(self._log_tail, str(worker.id), body.lines)
        if not text.strip():
            raise ApiError(409, f"{worker.display_name} has no log at {where}: was it started by the launcher "
                                "(its Launch button, or comfy-distributed workers)?")
        return web.json_response({"worker_id": worker.id, "name": worker.display_name, "log": where,
                                  "lines": text.splitlines()})

    def _log_tail(self, worker_id: str, lines: int) -> tuple[str, str]:
        launcher = self.launcher_factory()
        try:
            return launcher.log_tail(launcher.find(worker_id), lines)
        except LaunchError as exc:  # a worker the launcher cannot reach
            raise ApiError(409, str(exc)) from None

    def _restart(self, worker_id: int | str) -> Outcome:
        launcher = self.launcher_factory()
        try:
            instance = launcher.find(str(worker_id))
        except LaunchError as exc:  # removed from the file meanwhile
            raise ApiError(404, str(exc)) from None
        return launcher.restart(instance, wait=False)
