"""Tier 3: Tile Split / Tile Merge on a real ComfyUI master with plain real ComfyUI workers.

Every tiled image must equal, pixel for pixel, the same workflow run with no worker enabled (the master runs
every tile itself through its graph expansion).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.real.cluster import Cluster, decoded, worker_failures
from tests.real.harness import link_model, output_images, requires_comfyui, sd15_workflow

pytestmark = [requires_comfyui, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Cluster:
    made = Cluster(tmp_path_factory.mktemp("tiles"), workers=("w1", "w2"))
    try:
        yield made
    finally:
        made.stop()


def tiled_test_workflow(frames: int = 1, delay: float = 0.2, scale: int = 1, source_delay: float = 0.0) -> dict:
    """``source_delay`` changes nothing in the pixels, but makes ComfyUI run the graph again instead of answering
    from its cache (the run with workers must not be the cached run without them)."""
    return {
        "1": {"class_type": "DistributedTestImage", "inputs": {"seed": 9, "batch_size": frames, "width": 200,
                                                                "height": 136, "delay": source_delay}},
        "2": {"class_type": "MultiGPUTileSplit", "inputs": {"image": ["1", 0], "tile_width": 64, "tile_height": 64,
                                                           "padding": 16, "feather": 16}},
        "3": {"class_type": "DistributedTestTileWork", "inputs": {"image": ["2", 0], "gain": 1.2, "scale": scale,
                                                                 "delay": delay}},
        "4": {"class_type": "MultiGPUTileMerge", "inputs": {"tile": ["3", 0]}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "tiled"}},
    }


def run_images(cluster: Cluster, prompt: dict) -> tuple[list[np.ndarray], list[dict]]:
    entry, events, _ = cluster.run(prompt)
    return decoded(output_images(cluster.master.url, entry)), events


def tiles_run_by_workers(events: list[dict]) -> int:
    """How many workers delivered tiles, by the master's multigpu.job_done events."""
    return sum(len(e["data"]["workers_done"]) for e in events if e.get("type") == "multigpu.job_done")


@pytest.mark.parametrize("shape", [{}, {"frames": 3}, {"scale": 2}], ids=["one image", "3 frames", "upscale x2"])
def test_tiled_images_equal_the_master_alone(cluster, shape):
    cluster.use_workers()
    alone, _ = run_images(cluster, tiled_test_workflow(**shape))
    cluster.use_workers(cluster.w1, cluster.w2)
    shared, events = run_images(cluster, tiled_test_workflow(**shape, source_delay=0.01))
    assert worker_failures(events) == []
    assert tiles_run_by_workers(events) >= 1, "no worker ran a tile"
    assert len(shared) == len(alone) == shape.get("frames", 1)
    assert shared[0].shape == (136 * shape.get("scale", 1), 200 * shape.get("scale", 1), 3)
    for index, (got, want) in enumerate(zip(shared, alone)):
        assert np.array_equal(got, want), f"frame {index} differs from the run with no worker"


def test_a_random_weight_sd15_tiled_img2img_equals_the_master_alone(cluster, random_sd15_checkpoint):
    for instance in (cluster.master, cluster.w1, cluster.w2):
        link_model(instance.base_dir, "checkpoints", random_sd15_checkpoint, "random-sd15.safetensors")
    prompt = sd15_workflow("random-sd15.safetensors", seed=3, steps=1, width=256, height=256, batch_size=1)
    del prompt["4"], prompt["5"], prompt["6"]
    # a 256x256 photo-like input; each 128x128 tile (plus padding) goes through VAE Encode -> KSampler -> Decode
    gradient = np.linspace(0, 255, 256, dtype=np.float32)
    pixels = np.stack([np.add.outer(gradient, gradient) / 2, np.tile(gradient, (256, 1)),
                       np.tile(gradient[:, None], (1, 256))], axis=-1)
    noise = np.random.default_rng(1).integers(0, 24, (256, 256, 3))
    photo = Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))
    for name in ("tiles-a.png", "tiles-b.png"):  # one file per run: ComfyUI must not answer the second from its cache
        photo.save(cluster.master.base_dir / "input" / name)
    prompt.update({
        "9": {"class_type": "LoadImage", "inputs": {"image": "tiles-a.png"}},
        "10": {"class_type": "MultiGPUTileSplit", "inputs": {"image": ["9", 0], "tile_width": 128,
                                                            "tile_height": 128, "padding": 16, "feather": 16}},
        "11": {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["1", 2]}},
        "12": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["11", 0], "seed": 5,
            "steps": 1, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 0.5}},
        "13": {"class_type": "VAEDecode", "inputs": {"samples": ["12", 0], "vae": ["1", 2]}},
        "14": {"class_type": "MultiGPUTileMerge", "inputs": {"tile": ["13", 0]}},
    })
    prompt["7"]["inputs"]["images"] = ["14", 0]
    cluster.use_workers()
    alone, _ = run_images(cluster, prompt)
    cluster.use_workers(cluster.w1, cluster.w2)
    prompt["9"]["inputs"]["image"] = "tiles-b.png"
    shared, events = run_images(cluster, prompt)
    assert worker_failures(events) == []
    assert tiles_run_by_workers(events) >= 1, "no worker ran a tile"
    assert len(shared) == len(alone) == 1 and shared[0].shape == (256, 256, 3)
    assert np.array_equal(shared[0], alone[0]), "the tiled img2img differs from the run with no worker"


def test_the_tiled_upscale_node_runs_its_tiles_on_plain_workers(cluster, random_sd15_checkpoint):
    for instance in (cluster.master, cluster.w1, cluster.w2):
        link_model(instance.base_dir, "checkpoints", random_sd15_checkpoint, "random-sd15.safetensors")
    small = np.random.default_rng(2).integers(0, 256, (96, 128, 3)).astype(np.uint8)
    for name in ("upscale-a.png", "upscale-b.png"):  # one file per run, as above
        Image.fromarray(small).save(cluster.master.base_dir / "input" / name)
    prompt = sd15_workflow("random-sd15.safetensors", seed=3, steps=1, batch_size=1)
    del prompt["4"], prompt["5"], prompt["6"]
    prompt["9"] = {"class_type": "LoadImage", "inputs": {"image": "upscale-a.png"}}
    prompt["10"] = {"class_type": "MultiGPUTiledUpscale", "inputs": {
        "image": ["9", 0], "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "vae": ["1", 2],
        "upscale_by": 2.0, "seed": 11, "steps": 1, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
        "denoise": 0.3, "tile_width": 128, "tile_height": 96, "padding": 16, "mask_blur": 8}}
    prompt["7"]["inputs"]["images"] = ["10", 0]
    cluster.use_workers()
    alone, _ = run_images(cluster, prompt)
    cluster.use_workers(cluster.w1, cluster.w2)
    prompt["9"]["inputs"]["image"] = "upscale-b.png"
    shared, events = run_images(cluster, prompt)
    assert worker_failures(events) == []
    assert tiles_run_by_workers(events) >= 1, "no worker ran a tile"
    assert shared[0].shape == (192, 256, 3)
    differ = int((shared[0] != alone[0]).any(axis=-1).sum())
    assert differ == 0, f"{differ} pixel(s) differ from the run with no worker"
