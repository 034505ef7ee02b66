"""Tier 3: live previews from real ComfyUI workers started with ``--preview-method latent2rgb``.

Two plain workers sample the random SD1.5 checkpoint under a master with this extension. While a
client is registered for the previews (``POST /multigpu/events`` with ``previews``), the master relays each
worker's preview frames of its unit to it as ``multigpu.preview`` events, seen here on the master's
websocket as a UI sees them, then one that ends each unit; to a client registered without previews it
sends none.
"""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from tests.real.cluster import Cluster, decoded, worker_failures
from tests.real.harness import link_model, output_images, requires_comfyui, sd15_workflow

pytestmark = [requires_comfyui, pytest.mark.timeout(900)]

STEPS = 4
"""Sampling steps per unit: a frame each (about 4 s a step on a 2-core machine); the first is relayed at once,
so even a fast machine shows one."""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, random_sd15_checkpoint) -> Cluster:
    made = Cluster(tmp_path_factory.mktemp("previews"), workers=(), plain=("w1", "w2"),
                   worker_args=("--preview-method", "latent2rgb"))
    try:
        for instance in (made.master, made.w1, made.w2):
            link_model(instance.base_dir, "checkpoints", random_sd15_checkpoint, "random-sd15.safetensors")
        made.use_workers(made.w1, made.w2)
        yield made
    finally:
        made.stop()


def distributed_sd15(seed: int) -> dict:
    prompt = sd15_workflow("random-sd15.safetensors", seed=0, steps=STEPS, batch_size=2)
    prompt["5"]["inputs"]["seed"] = ["20", 0]
    prompt["20"] = {"class_type": "MultiGPUSeedDistributor", "inputs": {"seed": seed}}
    prompt["21"] = {"class_type": "MultiGPUCollector", "inputs": {"images": ["6", 0]}}
    prompt["7"]["inputs"]["images"] = ["21", 0]
    return prompt


def test_each_worker_s_unit_shows_its_previews_while_watched(cluster):
    entry, events, _ = cluster.run(distributed_sd15(seed=40), previews=True)
    assert worker_failures(events) == []
    assert len(decoded(output_images(cluster.master.url, entry))) == 6
    previews = [e["data"] for e in events if e["type"] == "multigpu.preview"]
    for worker_id in (1, 2):
        mine = [p for p in previews if p["worker_id"] == worker_id]
        frames, end = mine[:-1], mine[-1]
        assert frames, f"no preview of worker {worker_id}: {previews}"
        for frame in frames:
            assert frame["mime"] == "image/jpeg" and frame["worker"].startswith(f"GPU {worker_id}")
            image = Image.open(io.BytesIO(base64.b64decode(frame["data"])))
            assert image.format == "JPEG" and max(image.size) == 512  # scaled to ComfyUI's --preview-size
        assert {f["position"] for f in frames} == {end["position"]} and end["data"] is None and end["mime"] is None
        assert len({f["job_id"] for f in mine}) == 1 and mine[0]["job_id"]
    assert {p["position"] for p in previews if p["worker_id"] == 1} != {p["position"] for p in previews
                                                                        if p["worker_id"] == 2}


def test_without_a_watcher_the_master_sends_no_preview(cluster):
    entry, events, _ = cluster.run(distributed_sd15(seed=41))  # registered for the events, not the previews
    assert worker_failures(events) == []
    assert len(decoded(output_images(cluster.master.url, entry))) == 6
    assert [e for e in events if e["type"] == "multigpu.preview"] == []
    assert any(e["type"] == "multigpu.job_progress" for e in events)  # the rest of the job's events still came
