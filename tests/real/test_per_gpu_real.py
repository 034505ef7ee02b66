"""Tier 3: per-GPU control on a real ComfyUI master with plain real ComfyUI workers (random-weight SD1.5).

Multi-GPU Value: each worker's images must equal, pixel for pixel, a single-instance run of the same workflow with
that worker's values and seed typed in. A coordinator-only master: the workers make the whole batch, in the usual
order, with a checkpoint the master does not even have.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.real.cluster import Cluster, decoded, worker_failures
from tests.real.harness import link_model, output_images, requires_comfyui, sd15_workflow

pytestmark = [requires_comfyui, pytest.mark.timeout(900)]

SEED = 21
TEXTS = {"master": "a red cube on a table", "1": "a blue sphere in the sky", "2": "a green cone in the grass"}
CFGS = {"master": 7.0, "1": 5.5, "2": 9.0}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, random_sd15_checkpoint) -> Cluster:
    made = Cluster(tmp_path_factory.mktemp("values"), workers=("w1", "w2"))
    try:
        for instance in (made.master, made.w1, made.w2):
            link_model(instance.base_dir, "checkpoints", random_sd15_checkpoint, "random-sd15.safetensors")
        for instance in (made.master, made.w1):  # worker 2 lacks this one
            link_model(instance.base_dir, "checkpoints", random_sd15_checkpoint, "second-sd15.safetensors")
        for instance in (made.w1, made.w2):  # the master lacks this one
            link_model(instance.base_dir, "checkpoints", random_sd15_checkpoint, "workers-only-sd15.safetensors")
        yield made
    finally:
        made.stop()


def distributed(values: dict[str, dict], prefix: str) -> dict:
    """txt2img (batch 1, 64x64, 1 step), its seed from a Distributor, ``values``: input -> Value node's values."""
    prompt = sd15_workflow("random-sd15.safetensors", SEED, batch_size=1, filename_prefix=prefix)
    prompt["8"] = {"class_type": "MultiGPUSeedDistributor", "inputs": {"seed": SEED}}
    prompt["9"] = {"class_type": "MultiGPUCollector", "inputs": {"images": ["6", 0]}}
    prompt["5"]["inputs"]["seed"] = ["8", 0]
    prompt["7"]["inputs"]["images"] = ["9", 0]
    targets = {"text": ("2", "text"), "cfg": ("5", "cfg"), "ckpt_name": ("1", "ckpt_name")}
    for index, (name, per) in enumerate(values.items()):
        node_id = f"v{index}"
        prompt[node_id] = {"class_type": "MultiGPUValue", "inputs": {
            "default": str(per["master"]), "values": json.dumps({k: v for k, v in per.items() if k != "master"})}}
        target, field = targets[name]
        prompt[target]["inputs"][field] = [node_id, 0]
    return prompt


def single(ckpt: str, text: str, cfg: float, seed: int, prefix: str) -> dict:
    prompt = sd15_workflow(ckpt, seed, batch_size=1, cfg=cfg, positive=text, filename_prefix=prefix)
    return prompt


def images(cluster: Cluster, prompt: dict) -> tuple[list[np.ndarray], list[dict]]:
    entry, events, _ = cluster.run(prompt)
    return decoded(output_images(cluster.master.url, entry)), events


def test_each_worker_makes_its_images_with_its_own_prompt_and_cfg(cluster):
    cluster.use_workers(cluster.w1, cluster.w2)
    shared, events = images(cluster, distributed({"text": TEXTS, "cfg": CFGS}, "values"))
    assert worker_failures(events) == []
    assert len(shared) == 3
    cluster.use_workers()
    for offset, who in enumerate(("master", "1", "2")):
        (alone,), _ = images(cluster, single("random-sd15.safetensors", TEXTS[who], CFGS[who], SEED + offset,
                                             f"single-{who}"))
        assert np.array_equal(shared[offset], alone), f"{who}'s image differs from a single run with its values"
    assert not np.array_equal(shared[1], shared[2])


def test_a_checkpoint_a_worker_lacks_is_refused_for_that_worker_only(cluster):
    ckpts = {"master": "random-sd15.safetensors", "1": "random-sd15.safetensors", "2": "second-sd15.safetensors"}
    cluster.use_workers(cluster.w1, cluster.w2)
    shared, events = images(cluster, distributed({"ckpt_name": ckpts, "cfg": CFGS}, "lacking"))
    (message,) = worker_failures(events)
    assert "GPU 2 (w2)" in message and "'second-sd15.safetensors'" in message and "Multi-GPU Value" in message
    assert len(shared) == 3  # worker 2's image was made elsewhere, with its checkpoint and CFG
    cluster.use_workers()
    (alone,), _ = images(cluster, single("second-sd15.safetensors", "a photo of a cat", CFGS["2"], SEED + 2,
                                         "single-lacking"))
    assert np.array_equal(shared[2], alone)


def ran_node(events: list[dict], node_id: str) -> bool:
    """Whether the master's websocket said it executed ``node_id``."""
    return any(e.get("type") == "executing" and (e.get("data") or {}).get("node") == node_id for e in events)


def test_a_coordinator_only_master_makes_nothing_and_returns_the_whole_batch_in_order(cluster):
    cluster.use_workers(cluster.w1, cluster.w2)
    reference = distributed({}, "participating")
    reference["4"]["inputs"]["batch_size"] = 2
    usual, events = images(cluster, reference)
    assert worker_failures(events) == [] and len(usual) == 6 and ran_node(events, "5")  # the master sampled
    coordinating = distributed({}, "coordinating")
    coordinating["4"]["inputs"]["batch_size"] = 2
    coordinating["1"]["inputs"]["ckpt_name"] = "workers-only-sd15.safetensors"  # the same weights, not on the master
    coordinating["9"]["inputs"]["master_role"] = "coordinator only"
    shared, events = images(cluster, coordinating)
    assert worker_failures(events) == []
    assert not ran_node(events, "5") and not ran_node(events, "1"), "the coordinator-only master sampled or loaded"
    assert len(shared) == 6
    for index, (got, want) in enumerate(zip(shared, usual)):
        assert np.array_equal(got, want), f"image {index} differs from the run where the master takes part"
