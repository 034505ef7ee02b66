"""Tier 3: weighted and dynamic scheduling on a real master, with units the master runs itself."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.real.cluster import Cluster, decoded, image_workflow, worker_failures
from tests.real.harness import output_images, requires_comfyui, submit_prompt, wait_for_history

pytestmark = [requires_comfyui, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    made = Cluster(tmp_path_factory.mktemp("scheduling"))
    try:
        yield made
    finally:
        made.stop()


def single_image(instance, seed: int) -> np.ndarray:
    prompt = {
        "1": {"class_type": "DistributedTestImage",
              "inputs": {"seed": seed, "batch_size": 1, "width": 64, "height": 48, "delay": 0.0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "single"}},
    }
    (image,) = decoded(output_images(instance.url, wait_for_history(instance.url, submit_prompt(instance.url, prompt),
                                                                     timeout=120)))
    return image


def configure(cluster: Cluster, mode: str, master_weight: float | None = None, **settings) -> None:
    cluster.use_workers(cluster.w1, cluster.w2, scheduling_mode=mode, unit_size=1, **settings)
    if master_weight is not None:
        config = json.loads(cluster.config_path.read_text())
        config["master"]["weight"] = master_weight
        cluster.config_path.write_text(json.dumps(config))


@pytest.mark.parametrize("mode, master_weight", [("dynamic", None), ("weighted", 3.0)])
def test_unit_plan_images_match_single_instance_runs(cluster, mode, master_weight):
    configure(cluster, mode, master_weight)
    seed = 7000 if mode == "dynamic" else 8000
    entry, events, _ = cluster.run(image_workflow(seed=seed, delay=0.5, batch=2))
    assert worker_failures(events) == []
    images = decoded(output_images(cluster.master.url, entry))
    assert len(images) == 6  # batch 2 x 3 participants, in units of one image: unit i has seed + i
    for index, image in enumerate(images):
        assert np.array_equal(image, single_image(cluster.w1, seed + index)), f"image {index}"
    done = [e["data"] for e in events if e["type"] == "multigpu.job_done"]
    if mode == "weighted":  # the master (weight 3 of 5) runs units beyond its own via graph expansion
        assert done and len(done[-1]["master_units"]) >= 2


def test_collector_input_overrides_the_setting(cluster):
    configure(cluster, "static")
    prompt = image_workflow(seed=9000, delay=0.2, batch=2)
    prompt["3"]["inputs"]["scheduling"] = "dynamic"
    entry, events, _ = cluster.run(prompt)
    images = decoded(output_images(cluster.master.url, entry))
    assert len(images) == 6
    assert np.array_equal(images[1], single_image(cluster.w1, 9001))  # dynamic: image 1 is unit 1, seed + 1
