"""Live previews against stand-in workers that send preview frames as ComfyUI does: the master relays each unit's
frames to its UI only while a panel watches, a few a second at most, and says when the unit ended there."""

from __future__ import annotations

import asyncio
import base64
import time

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from comfy_distributed import events
from comfy_distributed.api.handlers import MultiGPUApi
from comfy_distributed.cluster.previews import FRAME_INTERVAL
from comfy_distributed.worker_client import preview_frames
from tests.component.cluster import StandinCluster, balancer, plain, workflow
from tests.standin import StandinComfy
from tests.waiting import until

DELAY = 1.5
"""Seconds of a unit's simulated work: ten steps, so ten frames of a worker with a preview method."""


def timed(cluster: StandinCluster) -> list[tuple[float, str, dict]]:
    """The cluster's UI events from now on, each with when it was sent."""
    seen: list[tuple[float, str, dict]] = []

    def notify(name: str, data: dict) -> None:
        cluster.events.append((name, data))
        seen.append((time.monotonic(), name, data))

    cluster.orchestrator.cluster.notify = notify
    return seen


def previews_of(seen: list[tuple[float, str, dict]], worker_id: int) -> list[tuple[float, dict]]:
    return [(at, data) for at, name, data in seen if name == events.PREVIEW and data["worker_id"] == worker_id]


@pytest.mark.parametrize("as_frames", [False, True], ids=["files", "images as frames"])
async def test_previews_reach_the_ui_while_a_panel_watches(standin_cluster, as_frames):
    """With the unit's images as websocket frames too (type-4 previews then, told apart from them by node)."""
    cluster = await standin_cluster(workers=2, frames=as_frames)
    for worker in cluster.workers:
        worker.preview_method = "latent2rgb"
    seen = timed(cluster)
    api = TestClient(TestServer(MultiGPUApi(cluster.store, cluster.orchestrator).make_app()))
    await api.start_server()
    try:
        response = await api.post("/multigpu/events", json={"client_id": "panel-1", "on": True, "previews": True})
        assert response.status == 200 and await response.json() == {"on": True, "previews": True, "expires_in": 30.0}
        job = cluster.start(workflow(delay=DELAY))
        await until(lambda: job.settled.is_set(), 30)
        await cluster.collect(job)
    finally:
        await api.close()
    for worker_id, position in ((1, 1), (2, 2)):
        relayed = previews_of(seen, worker_id)
        frames, last = relayed[:-1], relayed[-1][1]
        assert 2 <= len(frames) <= DELAY / FRAME_INTERVAL + 2, [d["data"] and len(d["data"]) for _, d in relayed]
        for at, data in frames:
            assert data["job_id"] == job.job_id and data["position"] == position and data["mime"] == "image/jpeg"
            assert data["worker"] == f"GPU {worker_id}"
            assert base64.b64decode(data["data"]).startswith(b"\xff\xd8\xff")
        gaps = [b[0] - a[0] for a, b in zip(frames, frames[1:])]
        assert min(gaps) >= FRAME_INTERVAL - 0.02, gaps  # at most three a second
        assert last == {"job_id": job.job_id, "position": position, "worker_id": worker_id,
                        "worker": f"GPU {worker_id}", "mime": None, "data": None}  # the unit's end
    assert len(cluster.orchestrator.cluster.previews) == 0
    for worker in cluster.workers:
        assert worker.request_counts["/view"] == (0 if as_frames else 2)  # the batch of 2


async def test_without_a_watcher_no_frame_is_read_and_nothing_is_sent(standin_cluster, monkeypatch):
    parsed: list[bytes] = []
    real_parse = preview_frames.parse_preview
    monkeypatch.setattr(preview_frames, "parse_preview", lambda message: parsed.append(message) or real_parse(message))
    cluster = await standin_cluster(workers=1)
    cluster.workers[0].preview_method = "latent2rgb"
    job = cluster.start(workflow(delay=0.5))
    await until(lambda: job.settled.is_set(), 30)
    await cluster.collect(job)
    assert parsed == [] and cluster.events_named(events.PREVIEW) == []


async def test_a_watch_that_ends_stops_the_frames_but_the_thumbnail_still_goes(standin_cluster):
    cluster = await standin_cluster(workers=1)
    cluster.workers[0].preview_method = "auto"
    seen = timed(cluster)
    relay = cluster.orchestrator.cluster.previews
    relay.watch("panel", True)
    job = cluster.start(workflow(delay=DELAY))
    await until(lambda: previews_of(seen, 1), 20, "a first frame")
    relay.watch("panel", False)
    shown = len(previews_of(seen, 1))
    await until(lambda: job.settled.is_set(), 30)
    await cluster.collect(job)
    relayed = previews_of(seen, 1)
    assert len(relayed) <= shown + 2  # a frame already on its way may still leave, no more
    assert relayed[-1][1]["data"] is None and all(d["data"] for _, d in relayed[:-1])


async def test_a_unit_lost_with_its_worker_drops_its_thumbnail(standin_cluster):
    cluster = await standin_cluster(workers=2)
    w1, w2 = cluster.workers
    w1.preview_method = w2.preview_method = "latent2rgb"
    seen = timed(cluster)
    cluster.orchestrator.cluster.previews.watch("panel", True)
    job = cluster.start(workflow(delay=DELAY * 2))
    await until(lambda: previews_of(seen, 1), 20, "a first frame of worker 1")
    await w1.stop()
    await until(lambda: previews_of(seen, 1)[-1][1]["data"] is None, 20, "the end of worker 1's unit")
    await until(lambda: job.settled.is_set(), 60)
    await cluster.collect(job)
    ended = [d for _, d in previews_of(seen, 1) if d["data"] is None]
    assert [(d["position"], d["job_id"]) for d in ended] == [(1, job.job_id)]
    assert cluster.failure_messages(), "worker 1's loss is reported"


async def test_a_cancelled_job_drops_its_thumbnails(standin_cluster):
    cluster = await standin_cluster(workers=1)
    cluster.workers[0].preview_method = "latent2rgb"
    seen = timed(cluster)
    cluster.orchestrator.cluster.previews.watch("panel", True)
    job = cluster.start(workflow(delay=DELAY * 4))
    await until(lambda: previews_of(seen, 1), 20, "a first frame")
    cluster.orchestrator.cancel(job)
    await until(lambda: previews_of(seen, 1)[-1][1]["data"] is None, 20, "the end of the cancelled unit")
    await until(lambda: job.closed, 20)


async def test_a_forwarded_prompt_shows_its_previews_too(standin_cluster, tmp_path):
    cluster = await standin_cluster(workers=1)  # a stand-in whose clean-up the fixture checks
    worker = cluster.workers[0]
    worker.preview_method = "latent2rgb"
    queue = balancer(tmp_path, [worker.port], queue_mode="no_collector")
    sent: list[dict] = []
    queue.cluster.notify = lambda name, data: sent.append(data) if name == events.PREVIEW else None
    queue.cluster.previews.watch("panel", True)
    prompt = plain()
    prompt["1"]["inputs"]["delay"] = 1.0
    _, forward = queue.route(prompt)
    assert forward is not None
    queue.start(forward)
    try:
        done = await asyncio.to_thread(queue.wait, forward.job_id, "2", lambda: False)
        assert done.state() == "done"
    finally:
        await queue.close()
        await queue.cluster.close()
    assert len(sent) >= 2 and sent[-1]["data"] is None
    assert {(d["job_id"], d["position"], d["worker_id"]) for d in sent} == {(None, sent[0]["position"], 1)}


async def frames_seen(worker: StandinComfy, flags: dict | None, seed: int) -> list[tuple[str, object]]:
    """The messages a client sees of a prompt with simulated work: ("progress", step) and ("frame", parsed)."""
    prompt = plain(seed)  # a new seed each time: a cached node would run no step
    prompt["1"]["inputs"]["delay"] = 0.2
    seen: list[tuple[str, object]] = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{worker.url}/ws", params={"clientId": "viewer"}) as ws:
            if flags is not None:
                await ws.send_json({"type": "feature_flags", "data": flags})
            async with session.post(f"{worker.url}/prompt", json={"prompt": prompt, "client_id": "viewer"}) as reply:
                prompt_id = (await reply.json())["prompt_id"]
            while True:
                message = await ws.receive(timeout=20)
                if message.type == aiohttp.WSMsgType.BINARY:
                    seen.append(("frame", preview_frames.parse_preview(message.data)))
                    continue
                event = message.json()
                if event["type"] == "progress":
                    seen.append(("progress", event["data"]["value"]))
                if event["type"] == "executing" and event["data"] == {"node": None, "prompt_id": prompt_id}:
                    return seen


async def test_the_stand_in_frames_previews_as_comfyui_does(tmp_path):
    """Type 1 after each step's progress to a client without feature flags; type 4, naming the prompt, before it
    to one that announced supports_preview_metadata (ComfyUI 0.3.64's progress hook)."""
    async with StandinComfy(tmp_path / "w1", name="w1") as worker:
        worker.preview_method = "latent2rgb"
        plain_client = await frames_seen(worker, None, seed=1)
        flagged = await frames_seen(worker, {"supports_preview_metadata": True}, seed=2)
    assert [kind for kind, _ in plain_client] == ["progress", "frame"] * 10
    assert all(f.mime == "image/jpeg" and f.prompt_id is None for kind, f in plain_client if kind == "frame")
    assert [kind for kind, _ in flagged] == ["frame", "progress"] * 10
    assert all(f.prompt_id and f.node_id == "1" for kind, f in flagged if kind == "frame")
