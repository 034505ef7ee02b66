"""Tier 3: input files, preflight and latents with real ComfyUI workers that lack things."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load

from tests.real.cluster import Cluster, decoded, worker_failures
from tests.real.harness import (
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
def cluster(tmp_path_factory):
    made = Cluster(tmp_path_factory.mktemp("inputs"))
    try:
        made.use_workers(made.w1, made.w2)
        yield made
    finally:
        made.stop()


def view(url: str, file: dict) -> bytes:
    query = urllib.parse.urlencode({"filename": file["filename"], "subfolder": file.get("subfolder", ""),
                                    "type": file.get("type", "output")})
    with urllib.request.urlopen(f"{url}/view?{query}", timeout=30) as response:
        return response.read()


def test_an_input_image_only_the_master_has_reaches_the_plain_workers(cluster):
    picture = np.random.default_rng(5).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    Image.fromarray(picture).save(cluster.master.base_dir / "input" / "only-on-master.png")
    assert not (cluster.w1.base_dir / "input" / "only-on-master.png").exists()
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "only-on-master.png"}},
        "2": {"class_type": "MultiGPUCollector", "inputs": {"images": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "loaded"}},
    }
    entry, events, _ = cluster.run(prompt)
    assert worker_failures(events) == []
    images = decoded(output_images(cluster.master.url, entry))
    assert len(images) == 3 and all(np.array_equal(image, picture) for image in images)
    for worker in (cluster.w1, cluster.w2):  # uploaded once, through the worker's own /upload/image
        assert (worker.base_dir / "input" / "only-on-master.png").read_bytes() == \
            (cluster.master.base_dir / "input" / "only-on-master.png").read_bytes()


def test_a_path_escaping_the_input_folder_is_refused(cluster):
    prompt = {
        "1": {"class_type": "DistributedTestLatent",
              "inputs": {"seed": 1, "batch_size": 1, "width": 64, "height": 64, "note": "../../outside.png"}},
        "2": {"class_type": "MultiGPUCollector", "inputs": {"latent": ["1", 0]}},
        "3": {"class_type": "SaveLatent", "inputs": {"samples": ["2", 1], "filename_prefix": "refused"}},
    }
    entry, events, _ = cluster.run(prompt)
    assert entry["status"]["status_str"] == "error"
    assert "outside the master's input folder" in json.dumps(entry["status"]["messages"])
    assert not cluster.w1.base_dir.joinpath("output", "refused_00001_.latent").exists()


def latent_prompt(seed: int) -> dict:
    return {
        "1": {"class_type": "DistributedTestLatent",
              "inputs": {"seed": ["4", 0], "batch_size": 2, "width": 64, "height": 64}},
        "4": {"class_type": "MultiGPUSeedDistributor", "inputs": {"seed": seed}},
        "2": {"class_type": "MultiGPUCollector", "inputs": {"latent": ["1", 0]}},
        "3": {"class_type": "SaveLatent", "inputs": {"samples": ["2", 1], "filename_prefix": "collected"}},
    }


def saved_latent(url: str, entry: dict, node: str = "3") -> torch.Tensor:
    (file,) = entry["outputs"][node]["latents"]
    return load(view(url, file))["latent_tensor"]


def test_latents_are_identical_to_single_instance_runs(cluster):
    entry, events, _ = cluster.run(latent_prompt(seed=40))
    assert worker_failures(events) == []
    collected = saved_latent(cluster.master.url, entry)
    singles = []
    for seed in (40, 41, 42):
        single = {
            "1": {"class_type": "DistributedTestLatent",
                  "inputs": {"seed": seed, "batch_size": 2, "width": 64, "height": 64}},
            "3": {"class_type": "SaveLatent", "inputs": {"samples": ["1", 0], "filename_prefix": "single"}},
        }
        singles.append(saved_latent(cluster.w1.url, wait_for_history(cluster.w1.url,
                                                                     submit_prompt(cluster.w1.url, single), 60)))
    assert collected.shape == (6, 4, 8, 8)
    assert torch.equal(collected, torch.cat(singles))


def test_a_worker_lacking_the_checkpoint_is_skipped_and_named(cluster, random_sd15_checkpoint):
    for instance in (cluster.master, cluster.w1):  # worker 2 does not have it
        link_model(instance.base_dir, "checkpoints", random_sd15_checkpoint, "random-sd15.safetensors")
    prompt = sd15_workflow("random-sd15.safetensors", seed=0, steps=1, batch_size=2)
    prompt["5"]["inputs"]["seed"] = ["20", 0]
    prompt["20"] = {"class_type": "MultiGPUSeedDistributor", "inputs": {"seed": 31}}
    prompt["21"] = {"class_type": "MultiGPUCollector", "inputs": {"images": ["6", 0]}}
    prompt["7"]["inputs"]["images"] = ["21", 0]
    before = len(http_json("GET", f"{cluster.w2.url}/history") or {})
    entry, events, _ = cluster.run(prompt)
    (message,) = worker_failures(events)
    assert "GPU 2 (w2)" in message and "random-sd15.safetensors" in message and "ckpt_name" in message
    images = decoded(output_images(cluster.master.url, entry))
    assert len(images) == 6  # its unit ran on a participant that has the checkpoint
    assert len(http_json("GET", f"{cluster.w2.url}/history") or {}) == before  # never sent a prompt


def test_audio_is_collected_in_order(cluster):
    import wave

    from comfy_distributed.collector.codecs import decode_audio

    if "LoadAudio" not in (http_json("GET", f"{cluster.master.url}/object_info/LoadAudio") or {}):
        pytest.skip("this ComfyUI has no audio nodes (they need torchaudio, which its environment lacks)")
    samples = (np.random.default_rng(9).integers(-20000, 20000, (1, 4000))).astype(np.int16)
    with wave.open(str(cluster.master.base_dir / "input" / "tone.wav"), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(16000)
        handle.writeframes(samples.tobytes())
    prompt = {
        "1": {"class_type": "LoadAudio", "inputs": {"audio": "tone.wav"}},
        "2": {"class_type": "MultiGPUCollector", "inputs": {"audio": ["1", 0]}},
        "3": {"class_type": "SaveAudio", "inputs": {"audio": ["2", 2], "filename_prefix": "collected"}},
    }
    entry, events, _ = cluster.run(prompt)
    assert worker_failures(events) == [], worker_failures(events)
    files = entry["outputs"]["3"]["audio"]
    assert len(files) == 3  # master, worker 1, worker 2: one clip each
    expected = torch.from_numpy(samples.astype(np.float32) / 2**15)
    for file in files:
        clip = decode_audio(view(cluster.master.url, file))
        assert clip["sample_rate"] == 16000
        assert torch.equal(clip["waveform"][0], expected)
