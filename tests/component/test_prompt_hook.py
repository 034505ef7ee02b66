"""The prompt hook and middleware on an aiohttp app shaped like ComfyUI's POST /prompt."""

from __future__ import annotations

import json

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from comfy_distributed.config import ConfigStore
from comfy_distributed.orchestrator import Orchestrator
from comfy_distributed.prompt_hook import make_prompt_handler, make_prompt_middleware
from comfy_distributed.workflow import COLLECTOR_CLASS, JOB_INPUT


class FakeMaster:
    """ComfyUI's order of things: prompt handlers, then validation, then 200 or 400."""

    def __init__(self, orchestrator: Orchestrator) -> None:
        self.handlers = [make_prompt_handler(orchestrator)]
        self.accepted: list[dict] = []
        self.app = web.Application(middlewares=[])
        self.app.middlewares.append(make_prompt_middleware(orchestrator))  # as the adapter does
        self.app.router.add_post("/prompt", self.post_prompt)
        self.app.router.add_post("/api/prompt", self.post_prompt)

    async def post_prompt(self, request: web.Request) -> web.Response:
        data = await request.json()
        for handler in self.handlers:
            data = handler(data)
        if data["prompt"].get("invalid"):
            return web.json_response({"error": {"type": "invalid"}, "node_errors": {}}, status=400)
        self.accepted.append(data["prompt"])
        return web.json_response({"prompt_id": "p1", "number": 0, "node_errors": {}})


def prompt(invalid: bool = False) -> dict:
    data: dict = {
        "1": {"class_type": "DistributedTestImage", "inputs": {"seed": 1, "batch_size": 1, "width": 8, "height": 8,
                                                           "delay": 0.0}},
        "3": {"class_type": COLLECTOR_CLASS, "inputs": {"images": ["1", 0]}},
    }
    if invalid:
        data["invalid"] = {"class_type": "Nope", "inputs": {}}
    return data


class RecordingOrchestrator(Orchestrator):
    def __init__(self, store: ConfigStore) -> None:
        super().__init__(store)
        self.started: list[str] = []
        self.discarded: list[str] = []

    def start(self, job) -> None:
        self.started.append(job.job_id)

    def discard(self, job) -> None:
        self.discarded.append(job.job_id)
        super().discard(job)


async def make_client(tmp_path) -> tuple[TestClient, FakeMaster, RecordingOrchestrator]:
    path = tmp_path / "gpu_config.json"
    path.write_text(json.dumps({"workers": [{"id": 1, "port": 9}]}))
    orchestrator = RecordingOrchestrator(ConfigStore(path))
    master = FakeMaster(orchestrator)
    client = TestClient(TestServer(master.app))
    await client.start_server()
    return client, master, orchestrator


async def test_accepted_prompt_starts_its_job(tmp_path):
    client, master, orchestrator = await make_client(tmp_path)
    try:
        for path in ("/prompt", "/api/prompt"):
            response = await client.post(path, json={"prompt": prompt(), "client_id": "ui"})
            assert response.status == 200
        assert len(orchestrator.started) == 2 and orchestrator.discarded == []
        assert [p["3"]["inputs"][JOB_INPUT] for p in master.accepted] == orchestrator.started
    finally:
        await client.close()


async def test_rejected_prompt_never_reaches_workers(tmp_path):
    client, master, orchestrator = await make_client(tmp_path)
    try:
        response = await client.post("/prompt", json={"prompt": prompt(invalid=True)})
        assert response.status == 400
        assert orchestrator.started == [] and len(orchestrator.discarded) == 1
        assert orchestrator.job(orchestrator.discarded[0]) is None
    finally:
        await client.close()


async def test_prompt_without_collector_is_untouched(tmp_path):
    client, master, orchestrator = await make_client(tmp_path)
    try:
        plain = {"1": {"class_type": "SaveImage", "inputs": {}}}
        response = await client.post("/prompt", json={"prompt": plain})
        assert response.status == 200
        assert master.accepted == [plain] and orchestrator.started == []
    finally:
        await client.close()
