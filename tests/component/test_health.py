"""The health monitor against stand-in workers."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from comfy_distributed.config import ConfigStore
from comfy_distributed.cluster.health import HealthMonitor
from tests.standin import StandinComfy
from tests.waiting import closed_port, until


def write(path, workers, **settings):
    path.write_text(json.dumps({"workers": workers, "settings": settings}))
    path.touch()


async def test_statuses_follow_the_workers(tmp_path):
    async with StandinComfy(tmp_path / "w1", name="w1") as w1:
        path = tmp_path / "gpu_config.json"
        write(path, [{"id": 1, "port": w1.port}, {"id": 2, "port": closed_port()},
                     {"id": 3, "port": 9, "enabled": False}], heartbeat_interval=0.1, health_ttl=1)
        events: list[tuple[str, dict]] = []
        monitor = HealthMonitor(ConfigStore(path), lambda e, d: events.append((e, d)))
        async with monitor:
            await until(lambda: monitor.status(1) == "idle" and monitor.status(2) == "offline", timeout=10.0)
            assert monitor.status(3) == "disabled"
            assert monitor.unavailable().keys() == {"2"}
            snapshot = {w["id"]: w for w in monitor.snapshot(ConfigStore(path).get().workers)}
            assert snapshot[1]["device"] and snapshot[1]["vram_total"] is not None
            assert "cannot connect" in snapshot[2]["error"]

            w1.gate = asyncio.Event()  # a prompt that stays in the queue makes the worker busy
            async with aiohttp.ClientSession() as session:
                prompt = {"1": {"class_type": "DistributedTestImage",
                                "inputs": {"seed": 1, "batch_size": 1, "width": 8, "height": 8, "delay": 0.0}},
                          "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
                async with session.post(f"{w1.url}/prompt", json={"prompt": prompt}) as response:
                    assert response.status == 200
            await until(lambda: monitor.status(1) == "busy", timeout=10.0)
            w1.gate.set()
            await until(lambda: monitor.status(1) == "idle", timeout=10.0)

            await w1.stop()  # refused connections: offline at once
            await until(lambda: monitor.status(1) == "offline", timeout=3)
            await w1.start()
            await until(lambda: monitor.status(1) == "idle", timeout=3)
        changes = [(d["id"], d["previous"], d["status"]) for e, d in events if e == "multigpu.worker_status"]
        assert (1, "idle", "busy") in changes and (1, "busy", "idle") in changes
        assert (1, "idle", "offline") in changes and (1, "offline", "idle") in changes


async def test_launching_until_it_answers(tmp_path):
    port = closed_port()
    path = tmp_path / "gpu_config.json"
    write(path, [{"id": 1, "port": port}], heartbeat_interval=0.1, health_ttl=1)
    monitor = HealthMonitor(ConfigStore(path))
    async with monitor:
        monitor.mark_launching(1, seconds=30)
        await until(lambda: monitor.status(1) == "launching", timeout=10.0)
        async with StandinComfy(tmp_path / "w1", name="w1", port=port):
            await until(lambda: monitor.status(1) == "idle", timeout=10.0)


async def test_a_server_that_is_not_comfyui_is_an_error(tmp_path):
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    async def queue(request: web.Request) -> web.Response:
        return web.json_response([1, 2])

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"devices": "nope"})

    app = web.Application()
    app.router.add_get("/prompt", queue)
    app.router.add_get("/system_stats", stats)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        path = tmp_path / "gpu_config.json"
        write(path, [{"id": 1, "port": server.port}], heartbeat_interval=0.1)
        monitor = HealthMonitor(ConfigStore(path))
        async with monitor:
            await until(lambda: monitor.status(1) == "error", timeout=10.0)
    finally:
        await server.close()
