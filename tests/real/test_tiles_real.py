"""Tier 3: Tile Split / Tile Merge on a real ComfyUI master with plain real ComfyUI workers.

Every tiled image must equal, pixel for pixel, the same workflow run with no worker enabled (the master runs
every tile itself through its graph expansion).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.real.cluster import Cluster, decoded, image_workflow, worker_failures
from tests.real.harness import http_json, link_model, output_images, requires_comfyui, sd15_workflow
from tests.waiting import poll

pytestmark = [requires_comfyui, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[2]


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


def running_prompt(instance) -> bool:
    return bool(http_json("GET", f"{instance.url}/queue", timeout=5)["queue_running"])


def tiles_run_by_workers(events: list[dict]) -> int:
    """How many workers delivered tiles, by the master's multigpu.job_done events."""
    return sum(len(e["data"]["workers_done"]) for e in events if e.get("type") == "multigpu.job_done")


@pytest.mark.parametrize("shape", [{}, {"frames": 5}, {"scale": 2}], ids=["one image", "5 frames", "upscale x2"])
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


def sd15_tiled_img2img(cluster: Cluster, checkpoint, photo_name: str) -> dict:
    """A random-weight SD1.5 img2img of a 256x256 photo-like input, over 128x128 tiles (+16 padding): each tile
    goes through VAE Encode -> KSampler (1 step) -> VAE Decode. One input file per run (``photo_name``), so that
    ComfyUI never answers a run from its cache."""
    for instance in (cluster.master, cluster.w1, cluster.w2):
        link_model(instance.base_dir, "checkpoints", checkpoint, "random-sd15.safetensors")
    prompt = sd15_workflow("random-sd15.safetensors", seed=3, steps=1, width=256, height=256, batch_size=1)
    del prompt["4"], prompt["5"], prompt["6"]
    gradient = np.linspace(0, 255, 256, dtype=np.float32)
    pixels = np.stack([np.add.outer(gradient, gradient) / 2, np.tile(gradient, (256, 1)),
                       np.tile(gradient[:, None], (1, 256))], axis=-1)
    noise = np.random.default_rng(1).integers(0, 24, (256, 256, 3))
    Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8)).save(cluster.master.base_dir / "input"
                                                                           / photo_name)
    prompt.update({
        "9": {"class_type": "LoadImage", "inputs": {"image": photo_name}},
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
    return prompt


_sd15_alone: dict[str, np.ndarray] = {}


def sd15_alone(cluster: Cluster, checkpoint) -> np.ndarray:
    """The tiled img2img with no worker enabled (run once for the tests that compare with it)."""
    if "image" not in _sd15_alone:
        cluster.use_workers()
        (image,), _ = run_images(cluster, sd15_tiled_img2img(cluster, checkpoint, "tiles-alone.png"))
        _sd15_alone["image"] = image
    return _sd15_alone["image"]


def test_a_random_weight_sd15_tiled_img2img_equals_the_master_alone(cluster, random_sd15_checkpoint):
    alone = sd15_alone(cluster, random_sd15_checkpoint)
    cluster.use_workers(cluster.w1, cluster.w2)
    shared, events = run_images(cluster, sd15_tiled_img2img(cluster, random_sd15_checkpoint, "tiles-b.png"))
    assert worker_failures(events) == []
    assert tiles_run_by_workers(events) >= 1, "no worker ran a tile"
    assert len(shared) == 1 and shared[0].shape == (256, 256, 3)
    assert np.array_equal(shared[0], alone), "the tiled img2img differs from the run with no worker"


def test_a_worker_killed_mid_job_still_gives_the_image(cluster, random_sd15_checkpoint):
    alone = sd15_alone(cluster, random_sd15_checkpoint)
    cluster.use_workers(cluster.w1, cluster.w2)
    prompt = sd15_tiled_img2img(cluster, random_sd15_checkpoint, "tiles-kill.png")
    try:
        with ThreadPoolExecutor(1) as pool:
            job = pool.submit(run_images, cluster, prompt)
            poll(lambda: running_prompt(cluster.w2), 120, "worker 2 running a tile", interval=0.02)
            cluster.w2.kill()  # its tile is lost with it and must run elsewhere
            shared, events = job.result()
    finally:
        cluster.w2.restart()
        poll(lambda: any(w["id"] == 2 and w["status"] == "idle" for w in cluster.status()["workers"]), 30,
             "worker 2 idle again after its restart", interval=0.1)
    (message,) = worker_failures(events)
    assert "GPU 2 (w2)" in message
    assert len(shared) == 1 and np.array_equal(shared[0], alone), "the image differs from the run with no worker"


def test_an_image_of_the_splits_size_is_cropped_per_tile(cluster):
    """The pipeline blends each tile with an image made outside it (inverted, blurred: a ControlNet hint's
    place): that image is cropped per tile, so the result is the blend of the whole images, equal with and
    without workers. A shared (uncropped) image would be squeezed into each tile by ImageBlend instead."""
    def prompt(source_delay: float, tiled: bool = True) -> dict:
        graph = tiled_test_workflow(source_delay=source_delay)
        graph["6"] = {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}}
        graph["7"] = {"class_type": "ImageBlur", "inputs": {"image": ["6", 0], "blur_radius": 2, "sigma": 1.0}}
        graph["3"] = {"class_type": "ImageBlend", "inputs": {"image1": ["2", 0] if tiled else ["1", 0],
                                                             "image2": ["7", 0], "blend_factor": 0.3,
                                                             "blend_mode": "normal"}}
        if not tiled:
            del graph["2"], graph["4"]
            graph["5"]["inputs"]["images"] = ["3", 0]
        return graph

    cluster.use_workers()
    (alone,), _ = run_images(cluster, prompt(0.0))
    (whole,), _ = run_images(cluster, prompt(0.0, tiled=False))
    cluster.use_workers(cluster.w1, cluster.w2)
    (shared,), events = run_images(cluster, prompt(0.01))
    assert worker_failures(events) == []
    assert tiles_run_by_workers(events) >= 1, "no worker ran a tile"
    assert np.array_equal(shared, alone), "the tiles run by workers differ from the run with no worker"
    worst = int(np.abs(alone.astype(int) - whole.astype(int)).max())
    assert worst <= 2, f"the tiled blend is {worst} levels from the blend of the whole images"


def test_two_tile_pairs_and_a_collector_in_one_workflow(cluster):
    """Tiles of tiles (two pairs one after the other) next to a Collector's batch, in one prompt."""
    def prompt(source_delay: float) -> dict:
        graph = tiled_test_workflow(source_delay=source_delay)
        graph["6"] = {"class_type": "MultiGPUTileSplit", "inputs": {"image": ["4", 0], "tile_width": 96,
                                                                   "tile_height": 64, "padding": 8, "feather": 8}}
        graph["7"] = {"class_type": "DistributedTestTileWork", "inputs": {"image": ["6", 0], "gain": 0.9, "scale": 1,
                                                                         "delay": 0.1}}
        graph["8"] = {"class_type": "MultiGPUTileMerge", "inputs": {"tile": ["7", 0]}}
        graph["5"]["inputs"]["images"] = ["8", 0]
        batch = image_workflow(seed=40 + int(source_delay * 100), delay=0.2)
        graph.update({f"b{key}": {**node, "inputs": {name: ["b" + value[0], value[1]] if isinstance(value, list)
                                                     else value for name, value in node["inputs"].items()}}
                      for key, node in batch.items()})
        return graph

    cluster.use_workers()
    entry, _, _ = cluster.run(prompt(0.0))
    alone = decoded(output_images(cluster.master.url, {"outputs": {"5": entry["outputs"]["5"]}}))
    cluster.use_workers(cluster.w1, cluster.w2)
    entry, events, _ = cluster.run(prompt(0.01))
    assert worker_failures(events) == []
    shared = decoded(output_images(cluster.master.url, {"outputs": {"5": entry["outputs"]["5"]}}))
    collected = decoded(output_images(cluster.master.url, {"outputs": {"b4": entry["outputs"]["b4"]}}))
    assert len(collected) == 6, "the Collector's batch: 2 images from each of 3 participants"
    assert len(shared) == 1 and np.array_equal(shared[0], alone[0]), "the twice-tiled image differs"


def test_the_tiled_upscale_node_runs_its_tiles_on_plain_workers(cluster, random_sd15_checkpoint):
    """The README's example workflow, with the test checkpoint, a small input, 1 step and small tiles."""
    for instance in (cluster.master, cluster.w1, cluster.w2):
        link_model(instance.base_dir, "checkpoints", random_sd15_checkpoint, "random-sd15.safetensors")
    small = np.random.default_rng(2).integers(0, 256, (96, 128, 3)).astype(np.uint8)
    for name in ("upscale-a.png", "upscale-b.png"):  # one file per run, as above
        Image.fromarray(small).save(cluster.master.base_dir / "input" / name)
    prompt = json.loads((ROOT / "api_workflows" / "tiled_upscale.json").read_text())
    prompt["1"]["inputs"]["ckpt_name"] = "random-sd15.safetensors"
    prompt["4"]["inputs"]["image"] = "upscale-a.png"
    prompt["5"]["inputs"].update({"steps": 1, "tile_width": 128, "tile_height": 96, "padding": 16, "mask_blur": 8})
    cluster.use_workers()
    alone, _ = run_images(cluster, prompt)
    cluster.use_workers(cluster.w1, cluster.w2)
    prompt["4"]["inputs"]["image"] = "upscale-b.png"
    shared, events = run_images(cluster, prompt)
    assert worker_failures(events) == []
    assert tiles_run_by_workers(events) >= 1, "no worker ran a tile"
    assert shared[0].shape == (192, 256, 3)
    differ = int((shared[0] != alone[0]).any(axis=-1).sum())
    assert differ == 0, f"{differ} pixel(s) differ from the run with no worker"
