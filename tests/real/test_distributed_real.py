"""Tier 3: a real ComfyUI master with this extension and plain real ComfyUI workers.

One master (this extension + the test node pack) and three plain workers: w1 and w2 with
the test node pack, w3 without it (a worker missing a custom node). The master's
gpu_config.json is rewritten per test; the master re-reads it for each job.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.real.cluster import Cluster, decoded, image_workflow, worker_failures
from tests.real.harness import (
    ComfyInstance,
    http_json,
    link_model,
    output_images,
    requires_comfyui,
    sd15_workflow,
    submit_prompt,
    wait_for_history,
)

pytestmark = [requires_comfyui, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Cluster:
    made = Cluster(tmp_path_factory.mktemp("cluster"), workers=("w1", "w2"), plain=("w3-plain",))
    try:
        yield made
    finally:
        made.stop()


def single_instance_images(instance: ComfyInstance, prompt: dict) -> list[np.ndarray]:
    prompt_id = submit_prompt(instance.url, prompt)
    return decoded(output_images(instance.url, wait_for_history(instance.url, prompt_id, timeout=600)))


def plain_image_workflow(seed: int) -> dict:
    return {
        "1": {"class_type": "DistributedTestImage",
              "inputs": {"seed": seed, "batch_size": 2, "width": 64, "height": 48, "delay": 0.0}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "single"}},
    }


def test_six_images_in_order_identical_to_single_runs(cluster):
    cluster.use_workers(cluster.w1, cluster.w2)
    entry, events, _ = cluster.run(image_workflow(seed=1000))
    images = decoded(output_images(cluster.master.url, entry))
    assert len(images) == 6
    assert worker_failures(events) == []
    expected = []
    for seed in (1000, 1001, 1002):  # master, worker 1 (seed+1), worker 2 (seed+2)
        expected += single_instance_images(cluster.w1, plain_image_workflow(seed))
    for index, (got, want) in enumerate(zip(images, expected)):
        assert np.array_equal(got, want), f"image {index} differs from the single-instance run"


def distributed_sd15_matches_single_runs(cluster: Cluster, checkpoint, seed: int) -> None:
    """A random-weight SD1.5 (1 step, 64x64, batch 2) with a Seed Distributor and a Collector on the master and
    both workers: six images, each the same as a single run of its seed on one instance."""
    for instance in (cluster.master, cluster.w1, cluster.w2):
        link_model(instance.base_dir, "checkpoints", checkpoint, "random-sd15.safetensors")
    cluster.use_workers(cluster.w1, cluster.w2)
    prompt = sd15_workflow("random-sd15.safetensors", seed=0, steps=1, batch_size=2)
    prompt["5"]["inputs"]["seed"] = ["20", 0]
    prompt["20"] = {"class_type": "MultiGPUSeedDistributor", "inputs": {"seed": seed}}
    prompt["21"] = {"class_type": "MultiGPUCollector", "inputs": {"images": ["6", 0]}}
    prompt["7"]["inputs"]["images"] = ["21", 0]
    entry, events, _ = cluster.run(prompt)
    images = decoded(output_images(cluster.master.url, entry))
    assert worker_failures(events) == []
    assert len(images) == 6
    expected = []
    for each in (seed, seed + 1, seed + 2):
        expected += single_instance_images(cluster.w2, sd15_workflow("random-sd15.safetensors", seed=each, steps=1))
    for index, (got, want) in enumerate(zip(images, expected)):
        assert np.array_equal(got, want), f"image {index} differs from the single-instance run"
    assert not np.array_equal(images[0], images[2])  # the workers really used other seeds


def test_real_diffusion_pipeline_matches_single_instance_runs(cluster, random_sd15_checkpoint):
    distributed_sd15_matches_single_runs(cluster, random_sd15_checkpoint, 777)


def test_worker_missing_a_node_class_is_named_and_its_unit_run_elsewhere(cluster):
    cluster.use_workers(cluster.w1, cluster.w3)
    entry, events, _ = cluster.run(image_workflow(seed=50, delay=0.2))
    images = decoded(output_images(cluster.master.url, entry))
    (message,) = worker_failures(events)
    assert "GPU 2 (w3-plain)" in message and "DistributedTestImage" in message
    assert "DistributedTestImage" in cluster.master.log_tail(200)
    expected = []
    for seed in (50, 51, 52):  # unit 2 keeps its seed wherever it runs
        expected += single_instance_images(cluster.w1, plain_image_workflow(seed))
    assert len(images) == 6
    assert all(np.array_equal(a, b) for a, b in zip(images, expected))


def node_images(url: str, entry: dict, node_id: str) -> list[np.ndarray]:
    return decoded(output_images(url, {"outputs": {node_id: entry["outputs"][node_id]}}))


def test_no_enabled_worker_behaves_as_without_the_nodes(cluster):
    cluster.use_workers()
    entry, events, _ = cluster.run(image_workflow(seed=200, delay=0.0))
    images = decoded(output_images(cluster.master.url, entry))
    expected = single_instance_images(cluster.w1, plain_image_workflow(200))
    assert len(images) == 2 and all(np.array_equal(a, b) for a, b in zip(images, expected))
    assert "multigpu_job_id" not in json.dumps(entry["prompt"])
    assert worker_failures(events) == []


def test_two_collectors_each_collect_their_own_images(cluster):
    cluster.use_workers(cluster.w1, cluster.w2)
    prompt = image_workflow(seed=300, delay=0.2)
    prompt["5"] = {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}}
    prompt["6"] = {"class_type": "MultiGPUCollector", "inputs": {"images": ["5", 0]}}
    prompt["7"] = {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "inverted"}}
    entry, events, _ = cluster.run(prompt, path="/api/prompt")  # the route the frontend uses
    assert worker_failures(events) == []
    plain, inverted = node_images(cluster.master.url, entry, "4"), node_images(cluster.master.url, entry, "7")
    assert len(plain) == len(inverted) == 6
    expected_inverted = []
    for seed in (300, 301, 302):
        single = plain_image_workflow(seed)
        single["5"] = {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}}
        single["4"]["inputs"]["images"] = ["5", 0]
        expected_inverted += single_instance_images(cluster.w1, single)
    assert all(np.array_equal(a, b) for a, b in zip(inverted, expected_inverted))
    assert not np.array_equal(plain[0], inverted[0])


def test_master_stays_responsive_while_the_collector_waits(cluster):
    cluster.use_workers(cluster.w1, cluster.w2)
    prompt = image_workflow(seed=400, delay=4.0)  # every participant busy for 4 s
    with ThreadPoolExecutor(1) as pool:
        job = pool.submit(cluster.run, prompt)
        answers = []
        deadline = time.monotonic() + 60
        while not job.done() and time.monotonic() < deadline:
            started = time.monotonic()
            queue = http_json("GET", f"{cluster.master.url}/queue", timeout=5)
            answers.append((time.monotonic() - started, len(queue["queue_running"])))
            time.sleep(0.05)  # polling interval
        entry, events, elapsed = job.result()
    assert any(running for _, running in answers), "never saw the job running on the master"
    slowest = max(latency for latency, _ in answers)
    assert slowest < 2.0, f"the master's server took {slowest:.2f}s to answer during a job"
    assert len(output_images(cluster.master.url, entry)) == 6
