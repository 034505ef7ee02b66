"""Tier 3: queue mode spreads whole prompts over the master and the workers."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests.comfy_test_nodes import seeded_images
from tests.real.cluster import Cluster
from tests.real.harness import http_json, output_images, requires_comfyui, submit_prompt
from tests.waiting import poll

pytestmark = [requires_comfyui, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    made = Cluster(tmp_path_factory.mktemp("queue"))
    try:
        made.use_workers(made.w1, made.w2, queue_mode="no_collector", heartbeat_interval=0.5)
        yield made
    finally:
        made.stop()


def plain(seed: int) -> dict:
    return {
        "1": {"class_type": "DistributedTestImage",
              "inputs": {"seed": seed, "batch_size": 1, "width": 40, "height": 32, "delay": 2.0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": f"queued{seed}"}},
    }


def expected(seed: int) -> np.ndarray:
    return np.clip(255.0 * seeded_images(seed, 1, 40, 32)[0].numpy(), 0, 255).astype(np.uint8)


def finished(url: str, prompt_id: str) -> dict | None:
    entry = (http_json("GET", f"{url}/history/{prompt_id}") or {}).get(prompt_id)
    return entry if entry and entry.get("status", {}).get("completed") is not None else None


def test_a_queue_of_prompts_spreads_over_every_gpu(cluster):
    poll(lambda: all(w["status"] == "idle" for w in cluster.status()["workers"]), 30, "workers idle", interval=0.05)
    seeds = list(range(600, 606))
    prompt_ids = [submit_prompt(cluster.master.url, plain(seed)) for seed in seeds]
    poll(lambda: all(finished(cluster.master.url, p) for p in prompt_ids), 60, "every prompt done on the master",
         interval=0.05)
    for seed, prompt_id in zip(seeds, prompt_ids):
        entry = finished(cluster.master.url, prompt_id)
        assert entry["status"]["status_str"] == "success", entry["status"]
        (blob,) = output_images(cluster.master.url, entry)  # the master's history shows every result
        assert np.array_equal(np.array(Image.open(io.BytesIO(blob)).convert("RGB")), expected(seed))
    ran_on = {name: len(http_json("GET", f"{instance.url}/history") or {})
              for name, instance in (("w1", cluster.w1), ("w2", cluster.w2))}
    assert ran_on["w1"] >= 1 and ran_on["w2"] >= 1, ran_on  # both workers took whole prompts
    assert ran_on["w1"] + ran_on["w2"] < len(seeds)  # and the master ran some itself
