"""Preflight and input-file sync against stand-in workers."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfy_distributed.errors import JobError
from comfy_distributed.cluster.preflight import preflight_problems
from comfy_distributed.graph.workflow import COLLECTOR_CLASS, DISTRIBUTOR_CLASS


def load_image_prompt(name: str) -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "3": {"class_type": COLLECTOR_CLASS, "inputs": {"images": ["1", 0]}},
    }


@pytest.fixture
def input_dir(tmp_path) -> Path:
    folder = tmp_path / "master-input"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(np.full((6, 5, 3), 77, dtype=np.uint8)).save(folder / "sub" / "pic.png")
    return folder


async def test_input_files_are_uploaded_and_renamed_when_the_worker_has_another(standin_cluster, input_dir):
    cluster = await standin_cluster(workers=2, input_dir=input_dir)
    w1, w2 = cluster.workers
    clash = w2.base_dir / "input" / "sub"
    clash.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((6, 5, 3), dtype=np.uint8)).save(clash / "pic.png")  # same name, other picture
    result = await cluster.run(load_image_prompt("sub/pic.png"))
    assert result.failures == [] and len(result.images) == 2
    assert (w1.base_dir / "input" / "sub" / "pic.png").read_bytes() == (input_dir / "sub" / "pic.png").read_bytes()
    assert w1.received[0]["prompt"]["1"]["inputs"]["image"] == "sub/pic.png"
    assert w2.received[0]["prompt"]["1"]["inputs"]["image"] == "sub/pic (1).png"  # its own file is kept
    for _, blobs in result.images:
        assert np.array(Image.open(io.BytesIO(blobs[0]))).max() == 77


async def test_a_worker_missing_a_node_class_is_skipped_before_dispatch(standin_cluster, input_dir):
    cluster = await standin_cluster(workers=2, input_dir=input_dir)
    w1, w2 = cluster.workers
    del w2.node_classes["DistributedTestImage"]
    prompt = {
        "1": {"class_type": "DistributedTestImage",
              "inputs": {"seed": ["2", 0], "batch_size": 1, "width": 8, "height": 8, "delay": 0.0}},
        "2": {"class_type": DISTRIBUTOR_CLASS, "inputs": {"seed": 5}},
        "3": {"class_type": COLLECTOR_CLASS, "inputs": {"images": ["1", 0]}},
    }
    result = await cluster.run(prompt)
    assert w2.received == []  # never asked to run it
    ran = [u.position for u, _ in result.images] + [u.position for u in result.master_units]
    assert sorted(ran) == [1, 2]  # worker 2's unit ran elsewhere (worker 1 or the master)
    (failure,) = cluster.events_named("multigpu.worker_failed")
    assert failure["reason"] == "preflight" and failure["worker"] == "GPU 2"
    assert "node class DistributedTestImage" in failure["message"]


async def test_a_path_out_of_the_input_folder_is_refused(standin_cluster, input_dir):
    cluster = await standin_cluster(workers=1, input_dir=input_dir)
    with pytest.raises(JobError, match="outside the master's input folder"):
        await cluster.run(load_image_prompt("../../../etc/passwd.png"))
    assert cluster.workers[0].received == []


def test_preflight_reads_both_combo_forms():
    info = {
        "CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": [["a.safetensors", "b.safetensors"], {}]}}},
        "KSampler": {"input": {"required": {"sampler_name": ["COMBO", {"options": ["euler"]}],
                                            "seed": ["INT", {}]}}},
    }
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "c.safetensors"}},
        "2": {"class_type": "KSampler", "inputs": {"sampler_name": "dpmpp_2m", "seed": 3, "model": ["1", 0]}},
        "3": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "x.pth"}},
    }
    problems = preflight_problems(prompt, info, synced=set())
    assert problems == [
        "ckpt_name 'c.safetensors' (node 1, CheckpointLoaderSimple)",
        "sampler_name 'dpmpp_2m' (node 2, KSampler)",
        "node class UpscaleModelLoader (node 3)",
    ]


def test_preflight_reads_a_node_class_s_own_input_types_too():
    """The master checks itself against its node classes' INPUT_TYPES(), whose specs are tuples, not JSON lists."""
    info = {
        "CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": (["a.safetensors"], {"tooltip": "t"})}}},
        "KSampler": {"input": {"required": {"sampler_name": ("COMBO", {"options": ("euler",)}),
                                            "scheduler": (("normal", "karras"),)}}},
    }
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "b.safetensors"}},
        "2": {"class_type": "KSampler", "inputs": {"sampler_name": "euler", "scheduler": "simple"}},
    }
    assert preflight_problems(prompt, info, synced=set()) == [
        "ckpt_name 'b.safetensors' (node 1, CheckpointLoaderSimple)",
        "scheduler 'simple' (node 2, KSampler)",
    ]
