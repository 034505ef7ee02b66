"""Each /multigpu endpoint's success and failure paths, on the real aiohttp app."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

from comfy_distributed.api.handlers import listens_beyond_loopback
from comfy_distributed.config import load_config
from tests.component.api_support import TOKEN, Master, first_prompt, png_bytes, workflow, write_config
from tests.standin import StandinComfy
from tests.waiting import closed_port


@pytest.fixture
async def master(tmp_path, monkeypatch):
    write_config(tmp_path / "gpu_config.json", [
        {"id": 1, "name": "GPU 1", "port": closed_port(), "enabled": True,
         "headers": {"Authorization": "Bearer worker-secret"}},
        {"id": 2, "name": "GPU 2", "port": closed_port(), "enabled": False, "custom": "kept"},
    ])
    made = Master(tmp_path / "gpu_config.json")
    await made.client.start_server()
    yield made
    await made.client.close()


async def test_get_config_hides_secrets(master):
    master.store.update_data(lambda c: c["settings"].update(api_token=TOKEN))
    status, body = await master.call("GET", "/multigpu/config")
    assert status == 200
    assert "api_token" not in body["settings"]
    assert body["workers"][0]["headers"] == {"Authorization": "***"}
    assert TOKEN not in json.dumps(body) and "worker-secret" not in json.dumps(body)
    assert body["auth"] == {"token_configured": True, "token_required": True, "public": False}


async def test_update_worker_enables_and_persists_keeping_unknown_keys(master):
    status, body = await master.call("POST", "/multigpu/config/update_worker",
                                      {"worker_id": 2, "enabled": True, "name": "Second"})
    assert status == 200 and body["worker"]["enabled"] is True and body["worker"]["name"] == "Second"
    saved = json.loads(master.path.read_text())
    assert saved["workers"][1]["enabled"] is True and saved["workers"][1]["custom"] == "kept"
    assert saved["workers"][0]["headers"] == {"Authorization": "Bearer worker-secret"}


async def test_masked_header_sent_back_keeps_the_secret(master):
    status, _ = await master.call("POST", "/multigpu/config/update_worker",
                                  {"worker_id": 1, "headers": {"Authorization": "***", "X-Extra": "1"}})
    assert status == 200
    assert load_config(master.path).workers[0].headers == {"Authorization": "Bearer worker-secret", "X-Extra": "1"}


@pytest.mark.parametrize("body, status, words", [
    ({"worker_id": 99, "enabled": False}, 404, "no worker with id 99"),
    ({"enabled": False}, 400, "missing field 'worker_id'"),
    ({"worker_id": {"a": 1}, "enabled": False}, 400, "'worker_id' must be"),
    ({"worker_id": 1, "port": 70000}, 400, "workers[0].port"),
    ({"worker_id": 1, "enabled": "maybe"}, 400, "workers[0].enabled"),
    ({"worker_id": 1, "host": "file:///etc/passwd"}, 400, "workers[0].host"),
    ({"worker_id": 1, "name": "x\n"}, 400, "workers[0].name"),
    ({"worker_id": 1, "id": 5}, 400, "unknown field(s) ['id']"),
    ({"worker_id": 1}, 400, "nothing to change"),
])
async def test_update_worker_refusals(master, body, status, words):
    before = master.path.read_bytes()
    got, answer = await master.call("POST", "/multigpu/config/update_worker", body)
    assert got == status and words in answer["error"]
    assert master.path.read_bytes() == before


async def test_a_worker_is_given_to_the_pool_through_the_api(master):
    """pool_agent and pool_tags are set like the other fields, checked by the config model, shown as saved."""
    status, body = await master.call("POST", "/multigpu/config/update_worker",
                                     {"worker_id": 1, "pool_agent": True, "pool_tags": ["gpu48", "video"]})
    assert status == 200 and body["worker"]["pool_agent"] is True and body["worker"]["pool_tags"] == ["gpu48", "video"]
    saved = load_config(master.path).workers[0]
    assert saved.pool_agent and saved.pool_tags == ["gpu48", "video"] and saved.given_to_pool
    status, body = await master.call("POST", "/multigpu/config/add_worker", {"port": 9001, "pool_agent": True})
    assert status == 201 and body["worker"]["pool_agent"] is True and body["worker"]["pool_tags"] == []


@pytest.mark.parametrize("body, words", [
    ({"worker_id": 1, "pool_tags": ["not ok"]}, "workers[0].pool_tags: 'not ok' is not a tag"),
    ({"worker_id": 1, "pool_tags": "gpu48"}, "workers[0].pool_tags"),
    ({"worker_id": 1, "pool_tags": [f"t{n}" for n in range(33)]}, "workers[0].pool_tags"),
    ({"worker_id": 1, "pool_agent": "yes"}, "workers[0].pool_agent"),
    ({"worker_id": 1, "pool_agent": 1}, "workers[0].pool_agent"),
    ({"worker_id": 1, "pool_agent": True, "name": "GPU #1"}, "name 'GPU #1' is also its pool agent's name"),
])
async def test_pool_fields_refusals_name_the_field(master, body, words):
    before = master.path.read_bytes()
    status, answer = await master.call("POST", "/multigpu/config/update_worker", body)
    assert status == 400 and words in answer["error"], answer
    assert master.path.read_bytes() == before


async def test_add_and_remove_worker(master):
    status, body = await master.call("POST", "/multigpu/config/add_worker", {"name": "New", "port": 9001})
    assert status == 201 and body["worker"]["id"] == 3
    status, body = await master.call("POST", "/multigpu/config/add_worker", {"id": 3, "port": 9002})
    assert status == 400 and "already used" in body["error"]
    status, body = await master.call("POST", "/multigpu/config/add_worker", {"name": "no port"})
    assert status == 400 and "port" in body["error"]
    status, body = await master.call("POST", "/multigpu/config/remove_worker", {"worker_id": 3})
    assert status == 200 and body == {"removed": 3}
    status, body = await master.call("POST", "/multigpu/config/remove_worker", {"worker_id": 3})
    assert status == 404
    assert [w.id for w in load_config(master.path).workers] == [1, 2]


async def test_update_setting(master):
    status, body = await master.call("POST", "/multigpu/config/update_setting", {"key": "worker_timeout", "value": 30})
    assert status == 200 and body["settings"]["worker_timeout"] == 30
    assert load_config(master.path).settings.worker_timeout == 30
    status, body = await master.call("POST", "/multigpu/config/update_setting", {"key": "../../etc", "value": 1})
    assert status == 400 and "unknown setting" in body["error"] and "worker_timeout" in body["known"]
    status, body = await master.call("POST", "/multigpu/config/update_setting", {"key": "worker_timeout", "value": -1})
    assert status == 400 and "settings.worker_timeout" in body["error"]
    status, body = await master.call("POST", "/multigpu/config/update_setting", {"key": "connect_timeout"})
    assert status == 400 and "value" in body["error"]


@pytest.mark.parametrize("path, body, words", [
    ("/multigpu/clear_memory", {"master": "yes"}, "'master' must be true or false"),
    ("/multigpu/clear_memory", {"worker_ids": "1"}, "'worker_ids' must be a list of worker ids"),
    ("/multigpu/clear_memory", {"worker_ids": [1, True]}, "'worker_ids[1]' must be a worker id"),
    ("/multigpu/clear_memory", {"worker_ids": ["a b"]}, "'worker_ids[0]' must be a worker id"),
    ("/multigpu/config/update_setting", {"key": 5, "value": 1}, "'key' must be the name of a setting"),
    ("/multigpu/config/update_setting", {"value": 1}, "'key' must be the name of a setting"),
    ("/multigpu/config/add_worker", {"port": 9001, "id": "a/b"}, "'id' must be a worker id"),
    ("/multigpu/config/remove_worker", {"worker_id": 1.5}, "'worker_id' must be a worker id"),
    ("/multigpu/config/update_worker", {"worker_id": 1, "python": "/bin/sh"}, "unknown field(s) ['python']"),
    ("/multigpu/config/add_worker", {"port": 9001, "ssh": {"host": "x"}}, "unknown field(s) ['ssh']"),
])
async def test_request_model_refusals_name_the_field(master, path, body, words):
    """Every body is read as its pydantic model: a refusal names the field and what it must be, and no
    request sets a path or a program to run (python, ssh)."""
    before = master.path.read_bytes()
    status, answer = await master.call("POST", path, body)
    assert status == 400 and words in answer["error"], answer
    assert master.path.read_bytes() == before


async def test_every_problem_of_a_body_is_named_at_once(master):
    status, answer = await master.call("POST", "/multigpu/clear_memory", {"worker_ids": [True], "master": 0})
    assert status == 400 and "'worker_ids[0]'" in answer["error"] and "'master'" in answer["error"], answer


async def test_malformed_and_oversize_bodies(master):
    for raw, status in ((b"{not json", 400), (b"[1, 2]", 400), (b"", 400), (b'{"a": NaN}', 400),
                        (b"[" * 5000, 400), (b'{"x": "' + b"a" * 70000 + b'"}', 413)):
        got, body = await master.call("POST", "/multigpu/config/update_worker", raw=raw)
        assert got == status and isinstance(body["error"], str)


async def test_token_is_required_once_configured(master):
    master.api.env_token = TOKEN  # as COMFY_DISTRIBUTED_TOKEN read at start
    status, body = await master.call("POST", "/multigpu/config/update_worker", {"worker_id": 1, "enabled": False})
    assert status == 401 and "token" in body["error"]
    status, body = await master.call("POST", "/multigpu/config/update_worker", {"worker_id": 1, "enabled": False},
                                     token="wrong-token-wrong-token")
    assert status == 401
    status, body = await master.call("POST", "/multigpu/config/update_worker", {"worker_id": 1, "enabled": False},
                                     token=TOKEN)
    assert status == 200
    response = await master.client.post("/multigpu/clear_memory", json={"worker_ids": []},
                                        headers={"X-MultiGPU-Token": TOKEN})
    assert response.status == 200
    status, _ = await master.call("GET", "/multigpu/config")  # reads stay open
    assert status == 200


async def test_public_master_without_token_refuses_changes(tmp_path, monkeypatch):
    write_config(tmp_path / "gpu_config.json", [])
    made = Master(tmp_path / "gpu_config.json", public=True)
    await made.client.start_server()
    try:
        status, body = await made.call("POST", "/multigpu/config/add_worker", {"port": 9000})
        assert status == 401 and "listens beyond loopback" in body["error"]
        assert load_config(made.path).workers == []
    finally:
        await made.client.close()


def test_listen_detection():
    assert not listens_beyond_loopback("127.0.0.1")
    assert not listens_beyond_loopback(None)
    assert not listens_beyond_loopback("127.0.0.1,::1")
    assert listens_beyond_loopback("0.0.0.0,::")
    assert listens_beyond_loopback("192.168.1.5")


async def test_invalid_config_file_is_a_409_and_untouched(master):
    master.path.write_text('{"workers": [{"id": 1, "port": "x"}]}')
    before = master.path.read_bytes()
    status, body = await master.call("POST", "/multigpu/config/update_worker", {"worker_id": 1, "enabled": False})
    assert status == 409 and "workers[0].port" in body["error"]
    status, body = await master.call("GET", "/multigpu/config")
    assert status == 409
    assert master.path.read_bytes() == before


async def test_prepare_job_plans_seeds_and_positions(master):
    master.store.update_data(lambda c: c["workers"][1].update(enabled=True))
    status, body = await master.call("POST", "/multigpu/prepare_job", {"prompt": workflow(seed=10)})
    assert status == 200, body
    assert body["collectors"] == ["3"]
    assert [(p["role"], p["worker_id"], p["seeds"]["2"]) for p in body["participants"]] == [
        ("master", None, 10), ("worker", 1, 11), ("worker", 2, 12)]
    assert body["outputs"]["3"] == {"batch_size": 2, "ranges": [[0, 2], [2, 4], [4, 6]]}
    # a prompt queued with that id is planned under it
    _, job = master.orchestrator.prepare(workflow(seed=10), body["job_id"])
    assert job is not None and job.job_id == body["job_id"]
    master.orchestrator.discard(job)


@pytest.mark.parametrize("body, words", [
    ({"prompt": {"1": {"class_type": "SaveImage", "inputs": {}}}}, "no Multi-GPU Collector"),
    ({"prompt": "x"}, "'prompt' must be"),
    ({}, "'prompt' must be"),
    ({"prompt": {"1": 5}}, "node 1"),
])
async def test_prepare_job_refusals(master, body, words):
    status, answer = await master.call("POST", "/multigpu/prepare_job", body)
    assert status == 400 and words in answer["error"]


async def test_clear_memory_reaches_workers_and_master(tmp_path, monkeypatch):
    async with StandinComfy(tmp_path / "w1", name="w1") as w1:
        write_config(tmp_path / "gpu_config.json", [
            {"id": 1, "name": "GPU 1", "port": w1.port},
            {"id": 2, "name": "GPU 2", "port": closed_port()},
            {"id": 3, "name": "GPU 3", "port": closed_port(), "enabled": False},
        ], connect_timeout=2)
        made = Master(tmp_path / "gpu_config.json")
        await made.client.start_server()
        try:
            status, body = await made.call("POST", "/multigpu/clear_memory", {})
            assert status == 200
            assert [(w["worker_id"], w["ok"]) for w in body["workers"]] == [(1, True), (2, False)]
            assert "cannot connect" in body["workers"][1]["error"]
            assert body["master"] == {"ok": True, "error": None} and made.freed == 1
            assert w1.free_calls == [{"unload_models": True, "free_memory": True}]
            status, body = await made.call("POST", "/multigpu/clear_memory", {"worker_ids": [1], "master": False})
            assert status == 200 and body["master"] is None and len(w1.free_calls) == 2
            status, body = await made.call("POST", "/multigpu/clear_memory", {"worker_ids": [7]})
            assert status == 404 and "7" in body["error"]
        finally:
            await made.client.close()


async def test_status_reports_each_worker(tmp_path, monkeypatch):
    async with StandinComfy(tmp_path / "w1", name="w1") as w1:
        write_config(tmp_path / "gpu_config.json", [
            {"id": 1, "port": w1.port}, {"id": 2, "port": closed_port()}, {"id": 3, "port": 9, "enabled": False},
        ])
        made = Master(tmp_path / "gpu_config.json")
        await made.client.start_server()
        try:
            status, body = await made.call("GET", "/multigpu/status")
            assert status == 200
            assert [(w["id"], w["status"]) for w in body["workers"]] == [(1, "idle"), (2, "offline"), (3, "disabled")]
            assert body["master"]["status"] == "online"
        finally:
            await made.client.close()


async def test_job_complete_accepts_only_the_share_owner(tmp_path, monkeypatch):
    async with StandinComfy(tmp_path / "w1", name="w1") as w1:
        w1.gate = asyncio.Event()  # the worker never finishes by itself: only its callback completes the share
        write_config(tmp_path / "gpu_config.json", [{"id": 1, "name": "GPU 1", "port": w1.port}])
        made = Master(tmp_path / "gpu_config.json")
        await made.client.start_server()
        try:
            _, job = made.orchestrator.prepare(workflow())
            made.orchestrator.start(job)
            sent = (await first_prompt(w1))["extra_data"]["multigpu"]
            assert sent["job_id"] == job.job_id and sent["worker_id"] == 1
            png = base64.b64encode(png_bytes()).decode()
            who = {"X-MultiGPU-Job": job.job_id, "X-MultiGPU-Worker": "1", "X-MultiGPU-Share-Token": sent["share_token"]}
            good = {"outputs": {"3": [png]}}
            for header, body_change, status in (
                    ({"X-MultiGPU-Share-Token": "guess"}, {}, 403), ({"X-MultiGPU-Worker": "2"}, {}, 403),
                    ({"X-MultiGPU-Job": "nope"}, {}, 404), ({"X-MultiGPU-Job": ""}, {}, 400),
                    ({}, {"outputs": {"9": [png]}}, 400), ({}, {"outputs": {"3": ["bm90IGEgcG5n"]}}, 400),
                    ({}, {"outputs": {"3": ["%%"]}}, 400), ({}, {"outputs": {"3": [png, png, png]}}, 400),
                    ({}, {"job_id": "other"}, 400)):
                got, body = await made.call("POST", "/multigpu/job_complete", {**good, **body_change},
                                            headers={**who, **header})
                assert got == status, (header, body_change, body)
            got, body = await made.call("POST", "/multigpu/job_complete", {**good, "worker_id": 1}, headers=who)
            assert got == 200 and body == {"accepted": 1}
            result = await asyncio.to_thread(made.orchestrator.collect, job.job_id, "3", lambda: False)
            assert [len(blobs) for _, blobs in result.images] == [1] and result.failures == []
            got, body = await made.call("POST", "/multigpu/job_complete", good, headers=who)
            assert got == 404  # the job has been collected
            w1.gate.set()
        finally:
            await made.client.close()
