"""``POST /multigpu/workers/launch`` and ``/restart`` on their own aiohttp app (``LaunchApi``), over a
config whose workers are stand-in ComfyUI folders, with the health monitor's launch marks recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from comfy_distributed.cluster.core import Cluster
from comfy_distributed.api.handlers import MultiGPUApi
from comfy_distributed.api.launch import add_launch_routes
from comfy_distributed.config import ConfigStore
from comfy_distributed.errors import ConfigError
from comfy_distributed.cluster.health import HealthMonitor
from comfy_distributed.launcher import LaunchContext, Launcher
from comfy_distributed.collector.orchestrator import Orchestrator

TOKEN = "launch-token-0123456789"


class RecordingHealth(HealthMonitor):
    def __init__(self, store: ConfigStore) -> None:
        super().__init__(store)
        self.launching: list[tuple[Any, float]] = []

    def mark_launching(self, worker_id: int | str, seconds: float) -> None:
        self.launching.append((worker_id, seconds))
        super().mark_launching(worker_id, seconds)


class LaunchApi:
    """The two routes on their own app, over a config whose workers are stand-ins in ``root``."""

    def __init__(self, root: Path, state: Path, config: Path) -> None:
        self.root, self.state, self.config = root, state, config
        self.store = ConfigStore(config)
        self.health = RecordingHealth(self.store)
        api = MultiGPUApi(self.store, Orchestrator(Cluster(self.store)), health=self.health)
        routes = web.RouteTableDef()
        add_launch_routes(routes, self.store, self.health, self.launcher, api.authorize)
        app = web.Application()
        app.add_routes(routes)
        self.client = TestClient(TestServer(app))

    def launcher(self) -> Launcher:
        return Launcher(self.store.get(), LaunchContext(self.root, self.config, self.state))

    async def __aenter__(self) -> "LaunchApi":
        await self.client.start_server()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.client.close()
        try:
            launcher = self.launcher()
        except ConfigError:  # the test broke the file: nothing was started
            return
        for instance in launcher.instances():
            if instance.kind == "local":
                launcher.stop(instance)  # reaps our children

    async def post(self, path: str, body: Any = None, *, raw: bytes | None = None, token: str | None = TOKEN):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if raw is not None:
            headers["Content-Type"] = "application/json"
        kwargs = {"data": raw} if raw is not None else {"json": {} if body is None else body}  # a body is JSON
        response = await self.client.post(path, headers=headers, **kwargs)
        return response.status, await response.json()
