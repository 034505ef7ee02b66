"""``comfy-distributed run WORKFLOW.json``: queue on the master, follow with a progress bar, save the images.

Against the stand-in ComfyUI started by the launcher (plain ComfyUI events), and against a scripted
master that also sends the cluster's ``multigpu.*`` events.
"""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from comfy_distributed import cli
from comfy_distributed.launcher import LaunchError

from .helpers import explain, free_port, run_cli, write_config

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


def image_workflow(delay: float = 0.5, extra: dict | None = None) -> dict[str, Any]:
    return {
        "1": {"class_type": "DistributedTestImage",
              "inputs": {"seed": 3, "batch_size": 2, "width": 32, "height": 24, "delay": delay}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "run"}},
        **(extra or {}),
    }


@pytest.fixture
def master(comfy_root, state_dir, tmp_path):
    """A stand-in master started by the launcher; the CLI options that reach it."""
    port = free_port()
    config = write_config(tmp_path / "gpu_config.json", port, [])
    options = ["--comfyui", str(comfy_root), "--config", str(config), "--state-dir", str(state_dir)]
    started = run_cli("master", *options)
    assert started.returncode == 0, explain(started)
    yield options
    run_cli("stop", *options)


def write(path: Path, content: Any) -> Path:
    path.write_text(json.dumps(content))
    return path


def test_run_saves_the_images_and_shows_progress(master, tmp_path):
    output = tmp_path / "out"
    result = run_cli("run", str(write(tmp_path / "wf.json", image_workflow())), "--output", str(output), *master)
    assert result.returncode == 0, explain(result)
    saved = sorted(output.iterdir())
    assert len(saved) == 2 and all(p.read_bytes().startswith(PNG[:8]) for p in saved)
    assert "DistributedTestImage" in result.stdout and "/10" in result.stdout, "step progress is shown"
    assert "100%" in result.stdout and f"Saved 2 image(s) to {output}" in result.stdout

    wrapped = write(tmp_path / "wrapped.json", {"prompt": image_workflow(delay=0), "extra_data": {}})
    again = run_cli("run", str(wrapped), "--output", str(output), *master)
    assert again.returncode == 0, explain(again)
    assert len(list(output.iterdir())) == 4, "a second run never overwrites the first one's images"


def test_run_failures_say_what_happened(master, tmp_path):
    missing = write(tmp_path / "missing.json", {"1": {"class_type": "NoSuchNode", "inputs": {}}})
    result = run_cli("run", str(missing), "--output", str(tmp_path / "o"), *master)
    assert result.returncode == 1 and "the master refused the workflow" in result.stderr
    assert "NoSuchNode" in result.stderr and "does not exist" in result.stderr

    failing = write(tmp_path / "fail.json", image_workflow(0, {
        "3": {"class_type": "DistributedTestFail", "inputs": {"images": ["1", 0], "message": "boom"}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}}))
    result = run_cli("run", str(failing), "--output", str(tmp_path / "o"), *master)
    assert result.returncode == 1, explain(result)
    assert "the workflow failed on the master in node 3 (DistributedTestFail): boom" in result.stderr

    ui_format = write(tmp_path / "ui.json", {"nodes": [{"id": 1}], "links": []})
    result = run_cli("run", str(ui_format), *master)
    assert result.returncode == 1 and "Export (API)" in result.stderr

    result = run_cli("run", str(missing), "--master", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1 and "does not answer" in result.stderr and "'python -m comfy_distributed master'" in result.stderr
    assert "Traceback" not in result.stderr


class ScriptedMaster:
    """A master that plays a fixed distributed run: ComfyUI events plus this extension's multigpu.* events."""

    def __init__(self, prepare: bool = True, finish: bool = True) -> None:
        self.prepare, self.finish = prepare, finish
        self.sockets: list[web.WebSocketResponse] = []
        self.queued: list[dict] = []
        self.authorization: list[str | None] = []
        app = web.Application()
        app.router.add_get("/ws", self.ws)
        app.router.add_post("/prompt", self.prompt)
        app.router.add_post("/multigpu/prepare_job", self.prepare_job)
        app.router.add_get("/multigpu/status", self.status)
        app.router.add_get("/history/{prompt_id}", self.history)
        app.router.add_get("/view", self.view)
        self.server = TestServer(app)

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.sockets.append(ws)
        async for _message in ws:
            pass
        return ws

    async def prepare_job(self, request: web.Request) -> web.Response:
        self.authorization.append(request.headers.get("Authorization"))
        if not self.prepare:  # an older master: ComfyUI's own 404, not JSON
            return web.Response(status=404, text="404: Not Found")
        return web.json_response({"job_id": "J", "expires_in": 60})

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
            for ws in self.sockets:
                await ws.send_json({"type": kind, "data": data})
        if not self.finish:
            for ws in self.sockets:
                await ws.close()

    async def history(self, request: web.Request) -> web.Response:
        images = [{"filename": "a.png", "subfolder": "", "type": "output"},
                  {"filename": "a.png", "subfolder": "w1", "type": "temp"}]
        return web.json_response({"P": {"status": {"status_str": "success"}, "outputs": {"2": {"images": images}}}})

    async def view(self, request: web.Request) -> web.Response:
        return web.Response(body=PNG + request.query["subfolder"].encode(), content_type="image/png")


async def test_cluster_progress_and_worker_failures_are_shown(tmp_path, monkeypatch):
    monkeypatch.setenv(cli.TOKEN_ENV, "secret-token-0123456789")
    master = ScriptedMaster()
    async with master.server:
        stream = io.StringIO()
        saved = await cli.run_workflow(master.url, image_workflow(), {"client": "x"}, tmp_path / "out", 30, stream)
    assert master.queued[0]["extra_data"] == {"client": "x", "multigpu_job_id": "J"}
    assert master.authorization == ["Bearer secret-token-0123456789"]
    text = stream.getvalue()
    assert "cluster: 1/2 units done" in text and "warning: Worker GPU 2: boom" in text
    assert [p.name for p in saved] == ["a.png", "2-1-a.png"]
    assert [p.read_bytes() for p in saved] == [PNG, PNG + b"w1"]


async def test_cluster_events_are_matched_without_prepare_job(tmp_path):
    master = ScriptedMaster(prepare=False)
    async with master.server:
        stream = io.StringIO()
        await cli.run_workflow(master.url, image_workflow(), {}, tmp_path / "out", 30, stream)
    assert "multigpu_job_id" not in master.queued[0]["extra_data"]
    assert "cluster: 1/2 units done" in stream.getvalue(), "the job was found through /multigpu/status"


async def test_master_going_away_or_too_slow(tmp_path):
    master = ScriptedMaster(finish=False)
    async with master.server:
        with pytest.raises(LaunchError, match="closed the connection before the workflow finished"):
            await cli.run_workflow(master.url, image_workflow(), {}, tmp_path / "out", 30, io.StringIO())
    slow = ScriptedMaster()
    slow.play = _never  # type: ignore[method-assign]
    async with slow.server:
        with pytest.raises(LaunchError, match=r"did not finish within 1 s \(--timeout\)"):
            await cli.run_workflow(slow.url, image_workflow(), {}, tmp_path / "out", 1, io.StringIO())


async def _never() -> None:
    return None
