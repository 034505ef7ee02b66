"""The prompt hook and middleware on an aiohttp app shaped like ComfyUI's POST /prompt."""

from __future__ import annotations

import json

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from comfy_distributed.cluster.core import Cluster
from comfy_distributed.config import ConfigStore
from comfy_distributed.collector.orchestrator import Orchestrator
from comfy_distributed.comfy.prompt_hook import make_prompt_handler, make_prompt_middleware
from comfy_distributed.graph.workflow import COLLECTOR_CLASS, JOB_INPUT


class FakeMaster:
    """ComfyUI's order of things: prompt handlers, then validation, then 200 or 400."""

    def __init__(self, orchestrator: Orchestrator) -> None:
        self.handlers = [make_prompt_handler(orchestrator)]
        self.accepted: list[dict] = []
        self.app = web.Application(middlewares=[])
        self.running: set[str] = {"running-1"}
        self.pending: set[str] = {"pending-1", "pending-2"}
        self.app.middlewares.append(  # as the adapter does
            make_prompt_middleware(orchestrator, lambda: set(self.running), lambda: set(self.pending)))
        self.app.router.add_post("/prompt", self.post_prompt)
        self.app.router.add_post("/interrupt", self.post_ok)
        self.app.router.add_post("/api/queue", self.post_ok)
        self.app.router.add_post("/api/prompt", self.post_prompt)

    async def post_ok(self, request: web.Request) -> web.Response:
        await request.json()  # ComfyUI's handlers read the body the middleware already read
        return web.Response(status=200)

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
        super().__init__(Cluster(store))
        self.started: list[str] = []
        self.master_prompt_ids: list[str | None] = []  # not prompt_ids: that is a method of JobBook
        self.discarded: list[str] = []
        self.cancelled: list[tuple[list[str], str]] = []

    def start(self, job, prompt_id=None) -> None:
        self.started.append(job.job_id)
        self.master_prompt_ids.append(prompt_id)

    def cancel_prompts(self, prompt_ids, reason) -> int:
        self.cancelled.append((sorted(prompt_ids), reason))
        return len(prompt_ids)

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
        assert orchestrator.master_prompt_ids == ["p1", "p1"]  # the master's prompt id, read from its answer
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


async def test_interrupt_and_queue_removal_cancel_the_matching_jobs(tmp_path):
    client, master, orchestrator = await make_client(tmp_path)
    try:
        assert (await client.post("/interrupt", json={})).status == 200  # global: the running prompt
        assert (await client.post("/interrupt", json={"prompt_id": "pending-1"})).status == 200  # not running
        assert (await client.post("/api/queue", json={"delete": ["pending-2", "unknown"]})).status == 200
        assert (await client.post("/api/queue", json={"clear": True})).status == 200
        assert [ids for ids, _ in orchestrator.cancelled] == [
            ["running-1"], ["pending-2"], ["pending-1", "pending-2"]]
    finally:
        await client.close()


async def test_an_accepted_prompt_runs_on_stand_in_workers_and_a_rejected_one_reaches_none(standin_cluster):
    """The hook over a real orchestrator: only the accepted prompt's job runs, and nothing is left behind."""
    cluster = await standin_cluster(workers=2)
    master = FakeMaster(cluster.orchestrator)
    client = TestClient(TestServer(master.app))
    await client.start_server()
    try:
        assert (await client.post("/prompt", json={"prompt": prompt(invalid=True)})).status == 400
        assert (await client.post("/prompt", json={"prompt": prompt(), "client_id": "ui"})).status == 200
    finally:
        await client.close()
    (accepted,) = master.accepted
    job = cluster.orchestrator.job(accepted["3"]["inputs"][JOB_INPUT])
    assert job is not None
    result = await cluster.collect(job)
    assert [unit.name for unit, _ in result.images] == ["GPU 1", "GPU 2"]
    assert [len(w.received) for w in cluster.workers] == [1, 1]
