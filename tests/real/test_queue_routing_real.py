"""Tier 3: queue mode routes like a scheduler, against real ComfyUI workers.

The random SD1.5 checkpoint is linked under three names so that the instances differ in what they have:
the master has ``a.safetensors``; worker 1 has ``b`` and ``c``; worker 2 has ``a`` and ``b``. A prompt is
never given to a participant that lacks its checkpoint, every output kind of a forwarded prompt comes back
into the master's history, of two idle workers the one that ran the prompt's checkpoint last gets it, and a
worker killed while it runs a forwarded prompt does not lose the prompt. The tests run in this order (the
last one kills a worker).
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.parse
import urllib.request
import uuid

import aiohttp
import numpy as np
import pytest

from comfy_distributed.cli.master_events import registered
from comfy_distributed.worker_client import ComfyClient
from tests.real.cluster import Cluster, decoded, plain_image, plain_image_pixels
from tests.real.harness import (
    http_json,
    link_model,
    output_images,
    requires_comfyui,
    sd15_workflow,
    submit_prompt,
    wait_for_history,
)
from tests.waiting import poll

pytestmark = [requires_comfyui, pytest.mark.timeout(900)]

HAS = {"master": ("a",), "w1": ("b", "c"), "w2": ("a", "b")}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, random_sd15_checkpoint):
    made = Cluster(tmp_path_factory.mktemp("queue-routing"))
    try:
        for name, letters in HAS.items():
            for letter in letters:
                link_model(getattr(made, name).base_dir, "checkpoints", random_sd15_checkpoint,
                           f"{letter}.safetensors")
        made.use_workers(made.w1, made.w2, queue_mode="no_collector", heartbeat_interval=0.5)
        poll(lambda: all(w["status"] == "idle" for w in made.status()["workers"]), 60, "workers idle",
             interval=0.1)
        yield made
    finally:
        made.stop()


class Events:
    """The events a UI sees on the master's websocket, gathered in a thread while a test runs."""

    def __init__(self, url: str) -> None:
        self.url, self.seen, self._stop = url, [], threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._listen()), daemon=True)

    def __enter__(self) -> "Events":
        self._thread.start()
        assert self._ready.wait(30), "the master's websocket did not open"
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    async def _listen(self) -> None:
        client_id = uuid.uuid4().hex
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{self.url}/ws?clientId={client_id}") as websocket:
                async with ComfyClient(self.url) as client, registered(client, client_id) as refused:
                    assert refused is None, refused
                    self._ready.set()
                    await self._receive(websocket)

    async def _receive(self, websocket: aiohttp.ClientWebSocketResponse) -> None:
        """Every text event until told to stop (the master's own events included: this client is registered)."""
        while not self._stop.is_set():
            try:
                message = await websocket.receive(timeout=0.2)
            except asyncio.TimeoutError:
                continue
            if message.type == aiohttp.WSMsgType.TEXT:
                self.seen.append(json.loads(message.data))
            elif message.type != aiohttp.WSMsgType.BINARY:
                return

    def named(self, kind: str) -> list[dict]:
        return [event["data"] for event in list(self.seen) if event.get("type") == kind]


def ran_on(instance) -> int:
    """Prompts the instance has run (its history)."""
    return len(http_json("GET", f"{instance.url}/history") or {})


def sd15(letter: str, seed: int) -> dict:
    return sd15_workflow(f"{letter}.safetensors", seed=seed, steps=1, batch_size=1, filename_prefix=f"q{letter}")


def ran_there(instance, before: int) -> int:
    return ran_on(instance) - before


def test_a_participant_lacking_the_checkpoint_is_never_given_the_prompt(cluster):
    before = {name: ran_on(getattr(cluster, name)) for name in ("w1", "w2")}
    with Events(cluster.master.url) as events:
        prompt_ids = [submit_prompt(cluster.master.url, sd15("a", seed)) for seed in (1, 2, 3)]
        entries = [wait_for_history(cluster.master.url, p, 300) for p in prompt_ids]
    assert all(len(output_images(cluster.master.url, e)) == 1 for e in entries)
    assert ran_there(cluster.w1, before["w1"]) == 0  # worker 1 lacks a.safetensors: never sent it
    assert ran_there(cluster.w2, before["w2"]) >= 1  # the queue still spread: worker 2 took some
    said = [n["message"] for n in events.named("multigpu.notice")] + \
        [f["message"] for f in events.named("multigpu.worker_failed") if f["reason"] == "preflight"]
    assert any("GPU 1" in m and "a.safetensors" in m for m in said), said  # and the user is told why


def test_every_output_kind_of_a_forwarded_prompt_comes_back(cluster):
    # the master lacks b.safetensors, so the prompt goes to a worker even with the master idle
    prompt = sd15("b", 5)
    prompt["8"] = {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": "latents/qb"}}
    prompt["9"] = {"class_type": "SaveAnimatedWEBP",
                   "inputs": {"images": ["6", 0], "filename_prefix": "anim", "fps": 6.0, "lossless": False,
                              "quality": 80, "method": "default"}}
    with Events(cluster.master.url) as events:
        entry = wait_for_history(cluster.master.url, submit_prompt(cluster.master.url, prompt), 300)
    assert events.named("multigpu.worker_failed") == []
    outputs = entry["outputs"]
    (latent,) = outputs["8"]["latents"]
    assert latent["subfolder"].startswith("worker-") and latent["filename"].endswith(".latent")
    data = view(cluster.master.url, latent)
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    assert header["latent_tensor"]["shape"] == [1, 4, 8, 8]  # a real latent file, whole
    worker = cluster.w1 if latent["subfolder"].split("/")[0] == "worker-1" else cluster.w2
    assert data == view(worker.url, {"filename": latent["filename"], "subfolder": "latents", "type": "output"})
    (webp,) = outputs["9"]["images"]
    assert outputs["9"]["animated"] == [False]  # one frame: as the worker's node said
    assert view(cluster.master.url, webp)[8:12] == b"WEBP"
    assert len(output_images(cluster.master.url, {"outputs": {"7": outputs["7"]}})) == 1


def test_of_two_idle_workers_the_one_that_ran_the_checkpoint_last_gets_it(cluster):
    # b twice at once: worker 1 takes one, worker 2 the other (the master lacks b); then c, which only worker 1
    # has: worker 1 last ran c, worker 2 last ran b. With both idle, the next b goes to worker 2, although
    # worker 1 comes first in the config.
    first = [submit_prompt(cluster.master.url, sd15("b", seed)) for seed in (10, 11)]
    for prompt_id in first:
        wait_for_history(cluster.master.url, prompt_id, 300)
    wait_for_history(cluster.master.url, submit_prompt(cluster.master.url, sd15("c", 12)), 300)
    poll(lambda: all(w["status"] == "idle" for w in cluster.status()["workers"]), 30, "workers idle", interval=0.1)
    before = {name: ran_on(getattr(cluster, name)) for name in ("w1", "w2")}
    wait_for_history(cluster.master.url, submit_prompt(cluster.master.url, sd15("b", 13)), 300)
    assert (ran_there(cluster.w1, before["w1"]), ran_there(cluster.w2, before["w2"])) == (0, 1)


def test_a_worker_killed_while_running_a_forwarded_prompt_does_not_lose_it(cluster):
    seeds = (30, 31, 32)
    with Events(cluster.master.url) as events:
        prompt_ids = [submit_prompt(cluster.master.url, plain_image(seed, delay=6.0)) for seed in seeds]
        poll(lambda: any(busy(w) for w in (cluster.w1, cluster.w2)), 60, "a worker running a forwarded prompt",
             interval=0.05)
        running = next(w for w in (cluster.w1, cluster.w2) if busy(w))
        running.stop()  # the worker's process goes away mid-prompt
        entries = [wait_for_history(cluster.master.url, p, 300) for p in prompt_ids]
    for seed, entry in zip(seeds, entries):
        (blob,) = output_images(cluster.master.url, entry)
        assert np.array_equal(decoded([blob])[0], plain_image_pixels(seed))
    failed = events.named("multigpu.worker_failed")
    assert failed and failed[0]["worker"].endswith(f"({running.name})") and failed[0]["rerun"] is True


def busy(instance) -> bool:
    queue = http_json("GET", f"{instance.url}/queue", timeout=5)
    return bool(queue["queue_running"])


def view(url: str, file: dict) -> bytes:
    query = urllib.parse.urlencode({"filename": file["filename"], "subfolder": file.get("subfolder", ""),
                                    "type": file.get("type", "output")})
    with urllib.request.urlopen(f"{url}/view?{query}", timeout=30) as response:
        return response.read()
