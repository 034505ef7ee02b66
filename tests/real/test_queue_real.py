"""Tier 3: queue mode spreads whole prompts over the master and the workers."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests.real.cluster import Cluster, plain_image, plain_image_pixels
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


def finished(url: str, prompt_id: str) -> dict | None:
    entry = (http_json("GET", f"{url}/history/{prompt_id}") or {}).get(prompt_id)
    return entry if entry and entry.get("status", {}).get("completed") is not None else None


def test_a_queue_of_prompts_spreads_over_every_gpu(cluster):
    poll(lambda: all(w["status"] == "idle" for w in cluster.status()["workers"]), 30, "workers idle", interval=0.05)
    seeds = list(range(600, 606))
    prompt_ids = [submit_prompt(cluster.master.url, plain_image(seed)) for seed in seeds]
    numbers: dict[str, set[float]] = {}

    def note_numbers() -> bool:
        """Each prompt's queue numbers on the master as seen while it waits; True once every prompt is done."""
        queue = http_json("GET", f"{cluster.master.url}/queue")
        for item in queue["queue_pending"]:
            numbers.setdefault(str(item[1]), set()).add(float(item[0]))
        return all(finished(cluster.master.url, p) for p in prompt_ids)

    poll(note_numbers, 60, "every prompt done on the master", interval=0.05)
    # a forwarded prompt's stand-in waits at the back of the master's queue while its worker runs it (so the
    # master's own prompts run meanwhile), then takes the place the prompt was queued at
    moved = [p for p, seen in numbers.items() if max(seen) >= 1e12 and min(seen) < 1e12]
    assert moved, numbers
    for seed, prompt_id in zip(seeds, prompt_ids):
        entry = finished(cluster.master.url, prompt_id)
        assert entry["status"]["status_str"] == "success", entry["status"]
        (blob,) = output_images(cluster.master.url, entry)  # the master's history shows every result
        assert np.array_equal(np.array(Image.open(io.BytesIO(blob)).convert("RGB")), plain_image_pixels(seed))
    ran_on = {name: len(http_json("GET", f"{instance.url}/history") or {})
              for name, instance in (("w1", cluster.w1), ("w2", cluster.w2))}
    assert ran_on["w1"] >= 1 and ran_on["w2"] >= 1, ran_on  # both workers took whole prompts
    assert ran_on["w1"] + ran_on["w2"] < len(seeds)  # and the master ran some itself
