"""Tier 3: Multi-GPU Clips on a real ComfyUI master with a plain real ComfyUI worker.

Every participant's clip must be saved as its own file, equal frame by frame to the same workflow run alone,
without our nodes, with that participant's seed (master: seed; worker 1: seed + 1), and keep its own audio.
"""

from __future__ import annotations

import asyncio
import io
import json
import urllib.parse
import urllib.request
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from comfy_distributed.collector.codecs import decode_audio
from tests.audio_support import flac_like_comfyui
from tests.real.cluster import Cluster, run_on_master, worker_failures
from tests.real.harness import ComfyInstance, http_json, link_model, output_images, requires_comfyui

pytestmark = [requires_comfyui, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[2]
BATCH = 8


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Cluster:
    made = Cluster(tmp_path_factory.mktemp("clips"), workers=("w1",))
    try:
        yield made
    finally:
        made.stop()


def image_node(seed: int | list, batch: int = BATCH) -> dict:
    return {"class_type": "DistributedTestImage",
            "inputs": {"seed": seed, "batch_size": batch, "width": 40, "height": 32, "delay": 0.2}}


def save_png(images: list, prefix: str) -> dict:
    return {"class_type": "SaveAnimatedPNG",
            "inputs": {"images": images, "filename_prefix": prefix, "fps": 8.0, "compress_level": 1}}


def clips_workflow(seed: int, batch: int = BATCH) -> dict:
    """Test frames (seed from the Distributor) -> Collector -> Clips -> Save Animated PNG."""
    return {
        "1": image_node(["2", 0], batch),
        "2": {"class_type": "MultiGPUSeedDistributor", "inputs": {"seed": seed}},
        "3": {"class_type": "MultiGPUCollector", "inputs": {"images": ["1", 0]}},
        "4": {"class_type": "MultiGPUClips", "inputs": {"images": ["3", 0], "frames_per_clip": 0}},
        "5": save_png(["4", 0], "clips"),
    }


def run(instance: ComfyInstance, prompt: dict) -> tuple[dict, list[dict]]:
    entry, events, _ = asyncio.run(run_on_master(instance, prompt))
    assert entry["status"]["status_str"] == "success", entry["status"]
    return entry, events


def frames(blob: bytes) -> list[np.ndarray]:
    """Every frame of an animated PNG, as RGB arrays."""
    with Image.open(io.BytesIO(blob)) as image:
        found = []
        for index in range(getattr(image, "n_frames", 1)):
            image.seek(index)
            found.append(np.array(image.convert("RGB")))
        return found


def alone(instance: ComfyInstance, seed: int, batch: int = BATCH) -> list[np.ndarray]:
    """The frames of the workflow without our nodes, run on one plain instance with ``seed``."""
    entry, _ = run(instance, {"1": image_node(seed, batch), "5": save_png(["1", 0], f"alone-{seed}")})
    (blob,) = output_images(instance.url, entry)
    return frames(blob)


def workers_done(events: list[dict]) -> list:
    return [w for e in events if e.get("type") == "multigpu.job_done" for w in e["data"]["workers_done"]]


def test_each_participants_clip_is_its_own_animated_png_equal_to_its_run_alone(cluster):
    seed = 31
    cluster.use_workers(cluster.w1)
    entry, events = run(cluster.master, clips_workflow(seed))
    assert worker_failures(events) == [] and workers_done(events), "worker 1 did not deliver its clip"
    files = output_images(cluster.master.url, entry)
    assert len(files) == 2, f"one file per participant, got {len(files)}"
    for position, blob in enumerate(files):
        got, want = frames(blob), alone(cluster.w1, seed + position)
        assert len(got) == len(want) == BATCH
        for index, (frame, expected) in enumerate(zip(got, want)):
            assert np.array_equal(frame, expected), f"clip {position}, frame {index} differs from its run alone"
    assert not np.array_equal(frames(files[0])[0], frames(files[1])[0]), "the two clips have the same seed"


def test_with_no_worker_the_master_saves_one_clip(cluster):
    cluster.use_workers()
    entry, _ = run(cluster.master, clips_workflow(52, batch=3))
    (blob,) = output_images(cluster.master.url, entry)
    assert len(frames(blob)) == 3


def test_create_video_and_save_video_run_once_per_clip(cluster):
    """The Clips' audio output with no audio in (None per clip) goes into Create Video's optional audio."""
    prompt = clips_workflow(61, batch=4)
    prompt["5"] = {"class_type": "CreateVideo", "inputs": {"images": ["4", 0], "fps": 8.0, "audio": ["4", 1]}}
    prompt["6"] = {"class_type": "SaveVideo", "inputs": {"video": ["5", 0], "filename_prefix": "clip-video",
                                                         "format": "auto", "codec": "auto"}}
    cluster.use_workers(cluster.w1)
    entry, events = run(cluster.master, prompt)
    assert worker_failures(events) == [] and workers_done(events)
    videos = output_images(cluster.master.url, entry)
    assert len(videos) == 2, "one video per participant"
    for blob in videos:
        with av.open(io.BytesIO(blob)) as container:
            decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
        assert len(decoded) == 4 and decoded[0].shape == (32, 40, 3)


def fetch(instance: ComfyInstance, file: dict) -> bytes:
    query = urllib.parse.urlencode({"filename": file["filename"], "subfolder": file.get("subfolder", ""),
                                    "type": file.get("type", "output")})
    with urllib.request.urlopen(f"{instance.url}/view?{query}", timeout=30) as response:
        return response.read()


def test_each_clip_keeps_the_audio_its_participant_made(cluster):
    """A tone through Audio Adjust Volume with the Distributor's seed as its gain in dB: the master's clip (seed
    0) keeps the tone, worker 1's (seed 1) is 1 dB louder; each clip's audio is saved by its own Save Audio run."""
    for node in ("LoadAudio", "AudioAdjustVolume", "SaveAudio"):
        if node not in (http_json("GET", f"{cluster.master.url}/object_info/{node}") or {}):
            pytest.skip("this ComfyUI has no audio nodes (they need torchaudio, which its environment lacks)")
    rate = 8000
    tone = 0.5 * torch.sin(torch.arange(rate // 2, dtype=torch.float32) * (2 * torch.pi * 440 / rate))[None]
    (cluster.master.base_dir / "input" / "clips-tone.flac").write_bytes(flac_like_comfyui(tone, rate))
    prompt = clips_workflow(0, batch=2)
    prompt.update({
        "6": {"class_type": "LoadAudio", "inputs": {"audio": "clips-tone.flac"}},
        "7": {"class_type": "AudioAdjustVolume", "inputs": {"audio": ["6", 0], "volume": ["2", 0]}},
        "8": {"class_type": "SaveAudio", "inputs": {"audio": ["4", 1], "filename_prefix": "clips-audio"}},
    })
    prompt["3"]["inputs"]["audio"] = ["7", 0]
    prompt["4"]["inputs"]["audio"] = ["3", 2]
    cluster.use_workers(cluster.w1)
    entry, events = run(cluster.master, prompt)
    assert worker_failures(events) == [] and workers_done(events), "worker 1 did not deliver its clip"
    assert len(output_images(cluster.master.url, entry)) == 2
    saved = [decode_audio(fetch(cluster.master, file)) for file in entry["outputs"]["8"]["audio"]]
    assert len(saved) == 2, "one audio file per clip"
    for position, audio in enumerate(saved):
        gain = 10 ** (position / 20)
        assert audio["sample_rate"] == rate and audio["waveform"].shape == (1, *tone.shape)
        assert (audio["waveform"][0] - tone * gain).abs().max() < 2e-3, f"clip {position} lacks its own audio"


def test_the_example_saves_one_webp_per_participant(cluster, random_sd15_checkpoint):
    """api_workflows/video_clips.json with the test checkpoint, 64 x 64 and 1 step: two clips of 16 frames."""
    for instance in (cluster.master, cluster.w1):
        link_model(instance.base_dir, "checkpoints", random_sd15_checkpoint, "random-sd15.safetensors")
    prompt = json.loads((ROOT / "api_workflows" / "video_clips.json").read_text())
    prompt["1"]["inputs"]["ckpt_name"] = "random-sd15.safetensors"
    prompt["4"]["inputs"].update({"width": 64, "height": 64})
    prompt["5"]["inputs"]["steps"] = 1
    cluster.use_workers(cluster.w1)
    entry, events = run(cluster.master, prompt)
    assert worker_failures(events) == [] and workers_done(events)
    webps = output_images(cluster.master.url, entry)
    assert len(webps) == 2
    for blob in webps:
        with Image.open(io.BytesIO(blob)) as image:
            assert image.format == "WEBP" and image.n_frames == 16 and image.size == (64, 64)
