"""An invalid gpu_config.json refuses a prompt with Multi-GPU nodes when it is queued, in ComfyUI's own 400, and
leaves every other prompt alone; unknown keys show in GET /multigpu/status.

The master here is ComfyUI 0.3.64's ``POST /prompt`` (server.py ``post_prompt``) over the stand-in's validation,
which follows ``execution.validate_prompt``, with the extension's prompt hook and middleware wired as the adapter
wires them; its workers are stand-ins.
"""

from __future__ import annotations

import json
import logging
import traceback
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from comfy_distributed.comfy.node_catalog import NODE_CLASS_MAPPINGS
from comfy_distributed.collector.orchestrator import Orchestrator
from comfy_distributed.comfy.prompt_hook import INVALID_CONFIG_ERROR, make_prompt_handler, make_prompt_middleware
from comfy_distributed.queue_mode.balancer import QueueBalancer
from comfy_distributed.graph.workflow import JOB_INPUT
from tests.component.api_support import Master, write_config
from tests.component.cluster import balancer, plain, workflow
from tests.standin import nodes as standin_nodes
from tests.standin.validation import validate_prompt
from tests.waiting import closed_port


class ComfyMaster:
    """ComfyUI's ``post_prompt`` step by step: prompt handlers (one that raises is logged and skipped, as
    ``trigger_on_prompt`` does), the queue number, validation, then 200 or 400 ``{"error", "node_errors"}``."""

    def __init__(self, orchestrator: Orchestrator, folder: Path, queue_mode: QueueBalancer | None = None) -> None:
        dirs = standin_nodes.Dirs(str(folder / "output"), str(folder / "temp"), str(folder / "input"))
        self.node_classes: dict[str, type] = {**standin_nodes.make_core_nodes(dirs)[0],
                                              **standin_nodes.test_pack_nodes()[0], **NODE_CLASS_MAPPINGS}
        self.handlers = [make_prompt_handler(orchestrator, queue_mode)]
        self.queued: list[dict[str, Any]] = []
        self.number = 0
        app = web.Application()
        app.middlewares.append(make_prompt_middleware(orchestrator, set, set, self.is_output_node))
        app.router.add_post("/prompt", self.post_prompt)
        app.router.add_post("/api/prompt", self.post_prompt)
        self.client = TestClient(TestServer(app))

    def is_output_node(self, class_type: str) -> bool:  # ComfyHost.is_output_node
        return bool(getattr(self.node_classes.get(class_type), "OUTPUT_NODE", False))

    async def post_prompt(self, request: web.Request) -> web.Response:
        json_data = await request.json()
        for handler in self.handlers:
            try:
                json_data = handler(json_data)
            except Exception:
                logging.warning("[ERROR] An error occurred during the on_prompt_handler processing\n%s",
                                traceback.format_exc())
        number = float(json_data["number"]) if "number" in json_data else self.number
        self.number += 1
        if "prompt" not in json_data:
            error = {"type": "no_prompt", "message": "No prompt provided", "details": "No prompt provided",
                     "extra_info": {}}
            return web.json_response({"error": error, "node_errors": {}}, status=400)
        prompt_id = str(json_data.get("prompt_id", uuid.uuid4()))
        ok, error, _, node_errors = validate_prompt(json_data["prompt"], self.node_classes,
                                                    json_data.get("partial_execution_targets"))
        if not ok:
            return web.json_response({"error": error, "node_errors": node_errors}, status=400)
        self.queued.append({"prompt": json_data["prompt"], "number": number, "prompt_id": prompt_id})
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": node_errors})

    async def post(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        response = await self.client.post("/prompt", json=body)
        return response.status, await response.json()


@pytest.fixture
async def masters():
    made: list[ComfyMaster] = []

    async def start(orchestrator: Orchestrator, folder: Path, queue_mode: QueueBalancer | None = None) -> ComfyMaster:
        master = ComfyMaster(orchestrator, folder, queue_mode)
        await master.client.start_server()
        made.append(master)
        return master

    yield start
    for master in made:
        await master.client.close()


BROKEN = {
    "not JSON": ('{"workers": [{"id": 1, "port": 8189}', "line 1 column"),
    "a bad field": (json.dumps({"workers": [{"id": 1, "port": 70000}]}), "workers[0].port"),
}


def break_file(path: Path, how: str) -> str:
    text, where = BROKEN[how]
    path.write_text(text)
    return where


def tile_prompt() -> dict:
    """A Split / per-tile work / Merge pipeline whose image is saved."""
    return {
        "1": {"class_type": "DistributedTestImage",
              "inputs": {"seed": 1, "batch_size": 1, "width": 64, "height": 64, "delay": 0.0}},
        "2": {"class_type": "MultiGPUTileSplit",
              "inputs": {"image": ["1", 0], "tile_width": 32, "tile_height": 32, "padding": 8, "feather": 4}},
        "3": {"class_type": "DistributedTestTileWork", "inputs": {"image": ["2", 0]}},
        "4": {"class_type": "MultiGPUTileMerge", "inputs": {"tile": ["3", 0]}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "tiles"}},
    }


def clips_prompt() -> dict:
    prompt = workflow()
    prompt["5"] = {"class_type": "MultiGPUClips", "inputs": {"images": ["3", 0], "frames_per_clip": 0}}
    prompt["4"]["inputs"]["images"] = ["5", 0]
    return prompt


def refused_nodes(answer: dict) -> dict[str, tuple[str, list[str]]]:
    return {node_id: (error["class_type"], error["dependent_outputs"]) for node_id, error in answer["node_errors"].items()}


@pytest.mark.parametrize("how", list(BROKEN))
async def test_an_invalid_file_refuses_the_prompt_on_the_collector_and_no_worker_gets_a_unit(
        standin_cluster, masters, tmp_path, caplog, how):
    cluster = await standin_cluster(workers=2)
    master = await masters(cluster.orchestrator, tmp_path)
    where = break_file(cluster.path, how)
    with caplog.at_level(logging.ERROR, logger="comfy_distributed"):
        status, answer = await master.post({"prompt": workflow(), "client_id": "ui"})
    assert status == 400
    assert answer["error"] == {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                               "details": "", "extra_info": {}}
    assert refused_nodes(answer) == {"3": ("MultiGPUCollector", ["4"])}
    (reason,) = answer["node_errors"]["3"]["errors"]
    assert reason["type"] == INVALID_CONFIG_ERROR and reason["extra_info"] == {}
    assert "gpu_config.json is invalid" in reason["message"]
    assert reason["details"].startswith(str(cluster.path)) and where in reason["details"]
    assert master.queued == [] and cluster.orchestrator.jobs_summary() == []
    assert [w.request_counts["/prompt"] for w in cluster.workers] == [0, 0]
    assert any("prompt refused before it was queued (MultiGPUCollector 3)" in m and where in m for m in caplog.messages)

    cluster.path.write_text(json.dumps({"workers": [{"id": i + 1, "name": f"GPU {i + 1}", "port": w.port}
                                                    for i, w in enumerate(cluster.workers)]}))
    status, answer = await master.post({"prompt": workflow(), "client_id": "ui"})
    assert status == 200, answer  # fixed: the same prompt is queued and shared
    (queued,) = master.queued
    job = cluster.orchestrator.job(queued["prompt"]["3"]["inputs"][JOB_INPUT])
    assert job is not None
    result = await cluster.collect(job)
    assert [unit.name for unit, _ in result.images] == ["GPU 1", "GPU 2"]


async def test_the_refusal_has_the_shape_of_comfyuis_own(standin_cluster, masters, tmp_path):
    """Every key and type of the answer ComfyUI gives a prompt that fails validation, node errors included."""
    cluster = await standin_cluster(workers=1)
    master = await masters(cluster.orchestrator, tmp_path)
    comfy_prompt = plain()
    comfy_prompt["1"]["inputs"]["width"] = "wide"
    status, comfys = await master.post({"prompt": comfy_prompt})
    assert status == 400 and comfys["node_errors"]
    break_file(cluster.path, "a bad field")
    status, ours = await master.post({"prompt": workflow()})
    assert status == 400

    def shape(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: shape(item) for key, item in value.items()}
        return type(value).__name__

    (comfy_node,), (our_node,) = comfys["node_errors"].values(), ours["node_errors"].values()
    assert shape(ours["error"]) == shape(comfys["error"])
    assert shape({**our_node, "errors": None}) == shape({**comfy_node, "errors": None})
    assert set(our_node["errors"][0]) == set(comfy_node["errors"][0]) == {"type", "message", "details", "extra_info"}


@pytest.mark.parametrize("make, marked", [
    (tile_prompt, {"2": ("MultiGPUTileSplit", ["5"]), "4": ("MultiGPUTileMerge", ["5"])}),
    (clips_prompt, {"3": ("MultiGPUCollector", ["4"]), "5": ("MultiGPUClips", ["4"])}),
], ids=["tiles", "clips"])
async def test_tile_and_clips_prompts_are_refused_too(standin_cluster, masters, tmp_path, make, marked):
    cluster = await standin_cluster(workers=1)
    master = await masters(cluster.orchestrator, tmp_path)
    break_file(cluster.path, "not JSON")
    status, answer = await master.post({"prompt": make()})
    assert status == 400 and refused_nodes(answer) == marked
    assert master.queued == [] and cluster.workers[0].request_counts["/prompt"] == 0


async def test_an_invalid_file_leaves_a_prompt_without_our_nodes_alone(standin_cluster, masters, tmp_path, caplog):
    cluster = await standin_cluster(workers=1)
    master = await masters(cluster.orchestrator, tmp_path)
    where = break_file(cluster.path, "a bad field")
    with caplog.at_level(logging.WARNING, logger="comfy_distributed"):
        for _ in range(3):
            status, answer = await master.post({"prompt": plain()})
            assert status == 200 and answer["node_errors"] == {}
    assert len(master.queued) == 3 and cluster.workers[0].request_counts["/prompt"] == 0
    said = [m for m in caplog.messages if where in m]
    assert len(said) == 1 and "run on this master alone" in said[0], "said once per problem"


async def test_a_collector_no_output_needs_is_not_a_reason_to_refuse(standin_cluster, masters, tmp_path):
    """ComfyUI runs only the outputs asked for (partial_execution_targets): the Collector's is not one here."""
    cluster = await standin_cluster(workers=1)
    master = await masters(cluster.orchestrator, tmp_path)
    break_file(cluster.path, "not JSON")
    prompt = {**workflow(), **{f"q{k}": v for k, v in plain().items()}}
    prompt["q2"]["inputs"]["images"] = ["q1", 0]
    status, answer = await master.post({"prompt": prompt, "partial_execution_targets": ["q2"]})
    assert status == 200, answer
    status, answer = await master.post({"prompt": prompt})
    assert status == 400 and refused_nodes(answer) == {"3": ("MultiGPUCollector", ["4"])}


async def test_queue_mode_with_an_invalid_file_keeps_plain_prompts_on_the_master(tmp_path, masters):
    balance = balancer(tmp_path, [closed_port()], master_load=5, queue_mode="all")
    orchestrator = Orchestrator(balance.cluster)
    try:
        master = await masters(orchestrator, tmp_path, balance)
        break_file(balance.cluster.store.path, "a bad field")
        status, _ = await master.post({"prompt": plain()})
        assert status == 200 and master.queued[0]["prompt"] == plain(), "not routed: the master runs it"
        status, answer = await master.post({"prompt": workflow()})
        assert status == 400 and list(answer["node_errors"]) == ["3"]
    finally:
        await balance.close()
        await orchestrator.close()
        await orchestrator.cluster.close()


async def test_status_lists_the_unknown_keys_of_every_level(tmp_path):
    path = tmp_path / "gpu_config.json"
    write_config(path, [{"id": 1, "name": "GPU 1", "port": closed_port(), "enabeld": False,
                         "ssh": {"host": "box", "comfyui_path": "/srv/ComfyUI", "prot": 22}},
                        {"id": 2, "port": closed_port(), "_note": "a note"}], worker_timout=30)
    data = json.loads(path.read_text())
    data["master"]["cuda"] = 0
    data["mastr"] = {}
    path.write_text(json.dumps(data))
    master = Master(path)
    await master.client.start_server()
    try:
        status, body = await master.call("GET", "/multigpu/status")
        assert status == 200
        assert body["config_warnings"] == [
            "top level: unknown key 'mastr' (did you mean 'master'?) is ignored",
            "master: unknown key 'cuda' (did you mean 'cuda_device'?) is ignored",
            "worker 1 (GPU 1): unknown key 'enabeld' (did you mean 'enabled'?) is ignored",
            "worker 1 (GPU 1), ssh: unknown key 'prot' (did you mean 'port'?) is ignored",
            "settings: unknown key 'worker_timout' (did you mean 'worker_timeout'?) is ignored",
        ]
        write_config(path, [{"id": 1, "port": closed_port()}])
        status, body = await master.call("GET", "/multigpu/status")
        assert status == 200 and body["config_warnings"] == []
    finally:
        await master.client.close()


async def test_status_warns_of_a_pool_agent_that_does_nothing(tmp_path):
    """No pool on this master: a worker's pool_agent is said to do nothing, in the same list as unknown keys."""
    path = tmp_path / "gpu_config.json"
    write_config(path, [{"id": 1, "name": "GPU 1", "port": closed_port(), "pool_agent": True},
                        {"id": 2, "port": closed_port(), "pool_tags": ["gpu48"]}])
    master = Master(path)
    await master.client.start_server()
    try:
        status, body = await master.call("GET", "/multigpu/status")
        assert status == 200
        assert [line.split(":")[0] for line in body["config_warnings"]] == ["worker 1 (GPU 1)", "worker 2"]
        assert "pool_agent is set but no pool is configured" in body["config_warnings"][0]
        assert "pool_tags are the tags of its pool agent" in body["config_warnings"][1]
    finally:
        await master.client.close()
