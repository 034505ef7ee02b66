"""A master that plays a fixed distributed run over HTTP and a websocket, for the ``run`` command's tests,
and the workflow and files those tests send it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


def image_workflow(delay: float = 0.5, extra: dict | None = None) -> dict[str, Any]:
    return {
        "1": {"class_type": "DistributedTestImage",
              "inputs": {"seed": 3, "batch_size": 2, "width": 32, "height": 24, "delay": delay}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "run"}},
        **(extra or {}),
    }


def write(path: Path, content: Any) -> Path:
    path.write_text(json.dumps(content))
    return path


class ScriptedMaster:
    """A master that plays a fixed distributed run: ComfyUI events plus this extension's multigpu.* events, the
    latter, as the real master does, only to sockets whose client id registered with POST /multigpu/events."""

    def __init__(self, prepare: bool = True, finish: bool = True) -> None:
        self.prepare, self.finish = prepare, finish
        self.sockets: list[tuple[str, web.WebSocketResponse]] = []
        self.registered: set[str] = set()
        self.queued: list[dict] = []
        self.authorization: list[str | None] = []
        app = web.Application()
        app.router.add_get("/ws", self.ws)
        app.router.add_post("/prompt", self.prompt)
        app.router.add_post("/multigpu/prepare_job", self.prepare_job)
        app.router.add_get("/multigpu/status", self.status)
        app.router.add_post("/multigpu/events", self.events)
        app.router.add_get("/history/{prompt_id}", self.history)
        app.router.add_get("/view", self.view)
        self.server = TestServer(app)

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.sockets.append((request.query.get("clientId", ""), ws))
        async for _message in ws:
            pass
        return ws

    async def prepare_job(self, request: web.Request) -> web.Response:
        self.authorization.append(request.headers.get("Authorization"))
        if not self.prepare:  # an older master: ComfyUI's own 404, not JSON
            return web.Response(status=404, text="404: Not Found")
        return web.json_response({"job_id": "J", "expires_in": 60})

    async def events(self, request: web.Request) -> web.Response:
        body = await request.json()
        (self.registered.add if body["on"] else self.registered.discard)(body["client_id"])
        return web.json_response({"on": body["on"], "previews": False, "expires_in": 30.0 if body["on"] else 0.0})

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response({"jobs": [{"job_id": "J", "prompt_id": "P"}], "workers": []})

    async def prompt(self, request: web.Request) -> web.Response:
        self.queued.append(await request.json())
        asyncio.get_running_loop().create_task(self.play())
        return web.json_response({"prompt_id": "P", "number": 0, "node_errors": {}})

    async def play(self) -> None:
        units = [{"position": 1, "state": "done"}, {"position": 2, "state": "running"}]
        events = [
            ("execution_start", {"prompt_id": "P"}),
            ("executing", {"node": "1", "prompt_id": "P"}),
            ("progress", {"value": 3, "max": 10, "node": "1", "prompt_id": "P"}),
            ("multigpu.job_progress", {"job_id": "OTHER", "progress": 1.0, "units": []}),
            ("multigpu.job_progress", {"job_id": "J", "progress": 0.5, "units": units}),
            ("multigpu.worker_failed", {"job_id": "J", "message": "Worker GPU 2: boom", "rerun": True}),
            ("executing", {"node": "2", "prompt_id": "P"}),
        ]
        if self.finish:
            events.append(("executing", {"node": None, "prompt_id": "P"}))
        for kind, data in events:
            for client_id, ws in self.sockets:
                if client_id in self.registered or not kind.startswith("multigpu."):
                    await ws.send_json({"type": kind, "data": data})
        if not self.finish:
            for _, ws in self.sockets:
                await ws.close()

    async def history(self, request: web.Request) -> web.Response:
        images = [{"filename": "a.png", "subfolder": "", "type": "output"},
                  {"filename": "a.png", "subfolder": "w1", "type": "temp"}]
        return web.json_response({"P": {"status": {"status_str": "success"}, "outputs": {"2": {"images": images}}}})

    async def view(self, request: web.Request) -> web.Response:
        return web.Response(body=PNG + request.query["subfolder"].encode(), content_type="image/png")
