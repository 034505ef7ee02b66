"""What a worker answers is untrusted: odd shapes, redirects, error text and a silent websocket
must end in a clear failure of that worker (its unit runs elsewhere), never in a hung job."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Callable

import pytest
from aiohttp import web

from comfy_distributed.config import ConfigStore, Settings, WorkerConfig
from comfy_distributed.errors import WorkerProtocolError
from comfy_distributed.cluster.health import HealthMonitor
from comfy_distributed.queue_mode.balancer import FORWARD_POSITION, ForwardedPrompt, QueueBalancer
from comfy_distributed.worker_client import OutputFile, WorkerClient, summarize_rejection
from comfy_distributed.cluster.preflight import preflight_problems
from tests.component.cluster import Cluster, assert_unit_images, balancer, by_position, plain, workflow
from tests.standin import StandinComfy
from tests.waiting import until


@pytest.fixture(autouse=True)
async def nothing_leaks(standin_cluster):
    """Every test here fails at teardown if it leaked a task or an unclosed client session (see conftest)."""
    yield


@pytest.fixture
async def three_workers(tmp_path):
    async with StandinComfy(tmp_path / "w1", name="w1") as w1, StandinComfy(tmp_path / "w2", name="w2") as w2, \
            StandinComfy(tmp_path / "w3", name="w3") as w3:
        yield w1, w2, w3


def _node(body: dict, node: Any) -> dict:
    return {**body, "DistributedTestImage": node}


OBJECT_INFO_SHAPES: dict[str, Callable[[Any], Any]] = {
    "input_a_list": lambda body: _node(body, {**body["DistributedTestImage"], "input": []}),
    "input_a_string": lambda body: _node(body, {**body["DistributedTestImage"], "input": "required"}),
    "required_a_list": lambda body: _node(body, {**body["DistributedTestImage"], "input": {"required": []}}),
    "entry_a_list": lambda body: _node(body, ["IMAGE"]),
    "top_level_a_list": lambda body: list(body.values()),
}


@pytest.mark.parametrize("shape", sorted(OBJECT_INFO_SHAPES))
async def test_a_malformed_object_info_leaves_that_worker_out_and_the_result_whole(tmp_path, three_workers, shape):
    w1, w2, w3 = three_workers
    w2.tamper_json = {"/object_info": OBJECT_INFO_SHAPES[shape]}
    cluster = Cluster(tmp_path, [w1.port, w2.port, w3.port], worker_timeout=10)
    job = cluster.start(workflow(seed=42))
    await until(lambda: job.settled.is_set(), timeout=15)
    result = await cluster.collect(job)
    assert result.master_units == [] and result.failures == []
    assert sorted(by_position(result)) == [1, 2, 3]
    assert by_position(result)[2][0] in ("GPU 1", "GPU 3")  # worker 2's unit, run by another worker
    for position in (1, 2, 3):
        assert_unit_images(result, position, 42 + position)
    assert w2.received == []
    (event,) = [d for e, d in cluster.events if e == "multigpu.worker_failed"]
    assert event["worker"] == "GPU 2" and event["reason"] == "protocol_error" and event["rerun"] is True
    assert "GET /object_info" in event["message"]


def test_preflight_problems_never_fails_on_odd_shapes():
    prompt = {
        "1": {"class_type": "K", "inputs": {"a": "v", "b": ["9", 0], "c": ["x"], "d": {"x": 1}}},
        "2": {"class_type": ["K"], "inputs": {}},
        "3": {"class_type": "K", "inputs": "not inputs"},
    }
    odd: list[Any] = [[], "x", None, {"K": []}, {"K": {"input": []}}, {"K": {"input": "x"}},
                      {"K": {"input": {"required": [], "optional": "x"}}},
                      {"K": {"input": {"required": {"a": "COMBO", "c": [["v"], {}]}}}},
                      {"K": {"input": {"required": {"a": ["COMBO", {"options": "abc"}]}}}}]
    for info in odd:
        problems = preflight_problems(prompt, info, synced=set())
        assert "node class ['K'] (node 2)" in problems
    assert preflight_problems(prompt, {"K": {"input": {"required": {"a": [["w"], {}]}}}}, set()) == [
        "a 'v' (node 1, K)", "node class ['K'] (node 2)"]


def _history(entry_shape: Callable[[dict], Any]) -> Callable[[dict], dict]:
    return lambda body: {prompt_id: entry_shape(entry) for prompt_id, entry in body.items()}


HISTORY_SHAPES: dict[str, Callable[[dict], Any]] = {
    "entry_not_an_object": lambda entry: ["not", "an", "entry"],
    "outputs_not_an_object": lambda entry: {**entry, "outputs": ["2"]},
    "output_not_an_object": lambda entry: {**entry, "outputs": {"2": ["q_00001_.png"]}},
    "images_not_a_list": lambda entry: {**entry, "outputs": {"2": {"images": "q_00001_.png"}}},
    "image_not_an_object": lambda entry: {**entry, "outputs": {"2": {"images": ["q_00001_.png"]}}},
    "filename_not_a_string": lambda entry: {**entry, "outputs": {"2": {"images": [
        {"filename": {"name": "q.png"}, "subfolder": "", "type": "output"}]}}},
    "status_not_an_object": lambda entry: {**entry, "status": "success"},
}


async def _forward_and_wait(b: QueueBalancer, seconds: float) -> Any:
    """Forward ``plain()`` and wait for it like the master's stand-in node, giving up after ``seconds``."""
    _, forward = b.route(plain())
    assert forward is not None
    b.start(forward)
    give_up = time.monotonic() + seconds
    return await asyncio.to_thread(b.wait, forward.job_id, "2", lambda: time.monotonic() > give_up)


@pytest.mark.parametrize("shape", sorted(HISTORY_SHAPES))
async def test_a_malformed_history_entry_ends_a_forward_at_once_and_the_master_runs_it(tmp_path, shape):
    async with StandinComfy(tmp_path / "w1", name="w1") as w1:
        w1.tamper_json = {"/history/{prompt_id}": _history(HISTORY_SHAPES[shape])}
        w1.drop_ws_after_start = True  # the files come from the history, not from the websocket's executed event
        b = balancer(tmp_path, [w1.port], queue_mode="no_collector", max_retries=0, worker_timeout=60)
        started = time.monotonic()
        done = await _forward_and_wait(b, seconds=15)
        assert time.monotonic() - started < 10  # well within the 60 s worker timeout
        assert done.state() == "master" and done.outputs() == {}
        (cause,) = done.record(FORWARD_POSITION).causes
        assert cause.startswith("GPU 1: ") and "history" in cause


def _with_outputs(extra: dict) -> Callable[[dict], Any]:
    return lambda entry: {**entry, "outputs": {"2": {**entry["outputs"]["2"], **extra}}}


async def test_a_forward_keeps_a_node_s_small_values_and_drops_a_huge_one(tmp_path):
    async with StandinComfy(tmp_path / "w1", name="w1") as w1:
        w1.tamper_json = {"/history/{prompt_id}": _history(_with_outputs(
            {"text": ["a caption"], "animated": True, "huge": ["x" * 70_000]}))}  # a bare true: not ComfyUI's [true]
        w1.drop_ws_after_start = True
        b = balancer(tmp_path, [w1.port], queue_mode="no_collector", max_retries=0)
        done = await _forward_and_wait(b, seconds=15)
        assert done.state() == "done"
        output = done.outputs()["2"]
        assert output.values == {"text": ["a caption"], "animated": True}  # "huge" left out, with a warning
        assert [f.filename for f, _ in output.files["images"]] == ["q_00001_.png"]
        assert b.cluster.speeds.get("1") is None  # an animation's frames say nothing of images per second
        await b.close()
        await b.cluster.close()
    async with StandinComfy(tmp_path / "w2", name="w2") as w2:
        b = balancer(tmp_path, [w2.port], queue_mode="no_collector")
        assert (await _forward_and_wait(b, seconds=15)).state() == "done"
        assert b.cluster.speeds.get("1") is not None  # a still image is learnt from
        await b.close()
        await b.cluster.close()


@pytest.mark.parametrize("key", ["", "k" * 65])
async def test_a_forward_with_an_odd_output_key_is_refused(tmp_path, key):
    async with StandinComfy(tmp_path / "w1", name="w1") as w1:
        w1.tamper_json = {"/history/{prompt_id}": _history(_with_outputs({key: ["x"]}))}
        w1.drop_ws_after_start = True
        b = balancer(tmp_path, [w1.port], queue_mode="no_collector", max_retries=0)
        done = await _forward_and_wait(b, seconds=15)
        assert done.state() == "master"
        (cause,) = done.record(FORWARD_POSITION).causes
        assert "empty or longer than 64 characters" in cause


async def test_an_unexpected_error_in_a_forward_still_releases_the_waiting_node(tmp_path, monkeypatch):
    async def broken(self, job, unit, client):
        raise KeyError("something we did not foresee")

    monkeypatch.setattr(ForwardedPrompt, "unit_prompt", broken)
    b = balancer(tmp_path, [9], queue_mode="no_collector", max_retries=0)
    done = await _forward_and_wait(b, seconds=10)
    assert done.state() == "master"
    assert done.record(FORWARD_POSITION).causes == ["GPU 1: internal error: KeyError('something we did not foresee')"]
    assert done.running_on("1") == 0  # the worker counts no load from it any more


class Recorder:
    """Another origin: records every request that reaches it (a redirect must never lead here)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, request.path, dict(request.headers)))
        return web.json_response({})


@pytest.fixture
async def recorder():
    rec = Recorder()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", rec.handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield rec
    await runner.cleanup()


def worker_prompt() -> dict:
    return {"1": {"class_type": "DistributedTestImage",
                  "inputs": {"seed": 1, "batch_size": 1, "width": 8, "height": 8, "delay": 0.0}},
            "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}


async def test_redirects_are_never_followed_so_the_headers_stay_with_the_worker(tmp_path, recorder):
    async with StandinComfy(tmp_path / "w1", name="w1") as w1:
        worker = WorkerConfig(id=1, name="GPU 1", port=w1.port, headers={"X-Proxy-Key": "secret"})
        async with WorkerClient(worker, Settings(connect_timeout=2, request_timeout=5)) as client:
            w1.redirect_routes = {"/object_info": recorder.url + "/object_info", "/view": recorder.url + "/view",
                                  "/ws": recorder.url + "/ws"}
            redirected = rf"redirected to {recorder.url}/\w+, not followed"
            with pytest.raises(WorkerProtocolError, match="GET /object_info: " + redirected):
                await client.object_info()
            with pytest.raises(WorkerProtocolError, match="GET /view: " + redirected):
                await client.view(OutputFile("a.png", "", "output"))
            with pytest.raises(WorkerProtocolError, match="GET /ws: " + redirected):
                await client.run_prompt(worker_prompt(), time.monotonic() + 10)
            w1.redirect_routes = {"/prompt": recorder.url + "/prompt?token=abc"}
            with pytest.raises(WorkerProtocolError, match="POST /prompt: " + redirected) as caught:
                await client.run_prompt(worker_prompt(), time.monotonic() + 10)
            assert "token" not in caught.value.message
    assert w1.received == []
    assert recorder.requests == []


async def test_a_workers_error_text_stays_out_of_the_health_status(tmp_path):
    async with StandinComfy(tmp_path / "w1", name="w1") as w1:
        w1.fail_routes = {"/prompt": 500}
        w1.fail_text = "<script>steal()</script> SECRET-1234"
        path = tmp_path / "gpu_config.json"
        path.write_text(json.dumps({"workers": [{"id": 1, "name": "GPU 1", "port": w1.port}]}))
        store = ConfigStore(path)
        health = HealthMonitor(store)
        try:
            await health.beat()
            (entry,) = health.snapshot(store.get().workers)
        finally:
            await health.close()
    assert entry["error"] == "GET /prompt: HTTP 500 Internal Server Error"


async def test_a_worker_that_answers_odd_health_shapes_is_in_error_not_a_crash(tmp_path):
    async with StandinComfy(tmp_path / "w1", name="w1") as w1, StandinComfy(tmp_path / "w2", name="w2") as w2:
        w1.tamper_json = {"/system_stats": lambda body: {**body, "devices": ["cpu"]}}
        w2.tamper_json = {"/prompt": lambda body: {"exec_info": {"queue_remaining": 1e999}}}
        path = tmp_path / "gpu_config.json"
        path.write_text(json.dumps({"workers": [{"id": 1, "port": w1.port}, {"id": 2, "port": w2.port}]}))
        store = ConfigStore(path)
        health = HealthMonitor(store)
        try:
            await health.beat()
            statuses = [(e["status"], e["error"]) for e in health.snapshot(store.get().workers)]
        finally:
            await health.close()
    assert statuses == [("error", "the answers are not ComfyUI's (GET /prompt, /system_stats)")] * 2


def test_a_rejection_summary_is_parsed_and_each_part_shortened():
    body = {"error": {"message": "x" * 10_000, "details": "y" * 10_000},
            "node_errors": {str(i): {"class_type": "K" * 1000, "errors": [{"message": "m" * 5000}]}
                            for i in range(50)}}
    summary = summarize_rejection(body)
    parts = summary.split(" - ")
    assert len(parts) == 2 + 10 + 1 and parts[-1] == "and 40 more node(s)"
    assert all(len(part) <= 300 for part in parts)
    assert summarize_rejection({"error": {"message": "Prompt outputs failed validation."}}) == \
        "Prompt outputs failed validation"


@pytest.mark.parametrize("limit", ["worker_timeout", "connect_timeout"])
async def test_a_websocket_that_never_upgrades_does_not_hold_the_job(tmp_path, limit):
    """Bounded by the job's deadline (unit re-run elsewhere), or by connect_timeout (then /history is polled)."""
    async with StandinComfy(tmp_path / "w1", name="w1") as w1, StandinComfy(tmp_path / "w2", name="w2") as w2:
        w2.hang_ws = True
        settings: dict[str, Any] = {"worker_timeout": 3}
        if limit == "connect_timeout":
            settings["connect_timeout"] = 1
        async with Cluster(tmp_path, [w1.port, w2.port], **settings) as cluster:
            started = time.monotonic()
            job = cluster.start(workflow(seed=42))
            await until(lambda: job.settled.is_set(), timeout=10)
            assert time.monotonic() - started < 7
            result = await cluster.collect(job)
            assert sorted(by_position(result)) == [1, 2]
            assert_unit_images(result, 1, 43)
            assert_unit_images(result, 2, 44)
            if limit == "worker_timeout":
                assert by_position(result)[2][0] == "GPU 1" and w2.received == []
                (event,) = [d for e, d in cluster.events if e == "multigpu.worker_failed"]
                assert event["reason"] == "timeout" and "GET /ws" in event["message"]
            else:
                assert by_position(result)[2][0] == "GPU 2"  # it ran there, followed through /history
