"""Tile Split / Merge pairs in a prompt: pairing, refusals, a worker's tile prompt, the master's expansion."""

from __future__ import annotations

import pytest

from comfy_distributed.errors import WorkflowError
from comfy_distributed.tile_graph import build_master_tile, build_tile_prompt, tile_pairs


def img2img() -> dict:
    """Load -> upscale -> Split -> VAE Encode -> KSampler -> VAE Decode -> Merge -> Save, model shared."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
        "3": {"class_type": "ImageScaleBy", "inputs": {"image": ["2", 0], "upscale_method": "lanczos", "scale_by": 2.0}},
        "4": {"class_type": "MultiGPUTileSplit", "inputs": {"image": ["3", 0], "tile_width": 512, "tile_height": 512,
                                                          "padding": 32}},
        "5": {"class_type": "VAEEncode", "inputs": {"pixels": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "sharp", "clip": ["1", 1]}},
        "7": {"class_type": "MultiGPUSeedDistributor", "inputs": {"seed": 7}},
        "8": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["6", 0], "negative": ["6", 0],
                                                   "latent_image": ["5", 0], "seed": ["7", 0], "steps": 1, "cfg": 1.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "denoise": 0.3}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["1", 2]}},
        "10": {"class_type": "MultiGPUTileMerge", "inputs": {"tile": ["9", 0]}},
        "11": {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "up"}},
    }


def test_a_pair_and_its_pipeline_are_found():
    (pair,) = tile_pairs(img2img())
    assert (pair.split, pair.merge) == ("4", "10")
    assert pair.pipeline == {"5", "8", "9"}  # the model, the prompt and the seed are shared, not per tile


def test_a_workers_tile_prompt_loads_the_crop_and_previews_the_tile():
    prompt = img2img()
    (pair,) = tile_pairs(prompt)
    worker = build_tile_prompt(prompt, pair, "multigpu-tile-job-3.png")
    assert sorted(worker, key=int) == ["1", "4", "5", "6", "8", "9", "10"]  # the source image and upscale left out
    assert worker["4"]["class_type"] == "LoadImage"
    assert worker["4"]["inputs"] == {"image": "multigpu-tile-job-3.png [temp]"}
    assert worker["10"]["class_type"] == "PreviewImage" and worker["10"]["inputs"] == {"images": ["9", 0]}
    assert worker["8"]["inputs"]["seed"] == 7  # every tile the same seed: tiles are parts of one image
    assert all(not node["class_type"].startswith("MultiGPU") for node in worker.values())


def test_the_masters_tile_copies_only_what_depends_on_the_split():
    prompt = img2img()
    (pair,) = tile_pairs(prompt)
    nodes, link = build_master_tile(prompt, pair, "10.tile.2.", ["10.tile.2.source", 0])
    assert sorted(nodes) == ["10.tile.2.5", "10.tile.2.8", "10.tile.2.9"]
    assert nodes["10.tile.2.5"]["inputs"] == {"pixels": ["10.tile.2.source", 0], "vae": ["1", 2]}
    assert nodes["10.tile.2.8"]["inputs"]["model"] == ["1", 0]  # the loaded model, from the master's cache
    assert nodes["10.tile.2.8"]["inputs"]["latent_image"] == ["10.tile.2.5", 0]
    assert nodes["10.tile.2.8"]["inputs"]["seed"] == 7
    assert link == ["10.tile.2.9", 0]


def test_two_pairs_one_after_the_other_each_close_their_own_split():
    prompt = img2img()
    prompt["12"] = {"class_type": "MultiGPUTileSplit", "inputs": {"image": ["10", 0], "tile_width": 256,
                                                                 "tile_height": 256, "padding": 16}}
    prompt["13"] = {"class_type": "ImageInvert", "inputs": {"image": ["12", 0]}}
    prompt["14"] = {"class_type": "MultiGPUTileMerge", "inputs": {"tile": ["13", 0]}}
    pairs = tile_pairs(prompt)
    assert [(p.split, p.merge, sorted(p.pipeline)) for p in pairs] == [("4", "10", ["5", "8", "9"]),
                                                                       ("12", "14", ["13"])]


@pytest.mark.parametrize("change, message", [
    (lambda p: p.pop("4") and p["5"]["inputs"].update(pixels=["3", 0]), "Tile Merge 10: no Multi-GPU Tile Split"),
    (lambda p: p.pop("10") and p["11"]["inputs"].update(images=["9", 0]), "Tile Split 4: no Multi-GPU Tile Merge"),
    (lambda p: p["10"]["inputs"].pop("tile"), "Tile Merge 10: connect the processed tile"),
    (lambda p: p.update({"20": {"class_type": "MultiGPUTileMerge", "inputs": {"tile": ["9", 0]}}}),
     "Tile Split 4: closed by more than one Tile Merge"),
    (lambda p: p["9"]["inputs"].update(samples=["8", 0]) or p.update({"20": {"class_type": "MultiGPUCollector",
                                                                             "inputs": {"images": ["9", 0]}}})
     or p["10"]["inputs"].update(tile=["20", 0]), "Collector 20 lies between them"),
    (lambda p: p["5"]["inputs"].update(pixels=["4", 1]), "node 5 takes an output other than its tile"),
])
def test_an_incomplete_or_odd_pair_is_refused_naming_its_nodes(change, message):
    prompt = img2img()
    change(prompt)
    with pytest.raises(WorkflowError, match=message):
        tile_pairs(prompt)


def test_a_nested_pair_is_refused():
    prompt = img2img()
    prompt["20"] = {"class_type": "MultiGPUTileSplit", "inputs": {"image": ["9", 0], "tile_width": 64,
                                                                 "tile_height": 64, "padding": 8}}
    prompt["21"] = {"class_type": "MultiGPUTileMerge", "inputs": {"tile": ["20", 0]}}
    prompt["10"]["inputs"]["tile"] = ["21", 0]
    with pytest.raises(WorkflowError, match=r"Split 4 / Merge 10: node\(s\) 20, 21 of another tile pair .* cannot be nested"):
        tile_pairs(prompt)


def test_a_collector_below_a_tile_pair_is_refused_for_its_workers():
    from comfy_distributed.workflow import build_worker_prompt

    prompt = img2img()
    prompt["12"] = {"class_type": "MultiGPUCollector", "inputs": {"images": ["10", 0]}}
    prompt["11"]["inputs"]["images"] = ["12", 0]
    with pytest.raises(WorkflowError, match=r"Collector 12: tile node\(s\) 10, 4 lie above it.*before the Tile Split"):
        build_worker_prompt(prompt, ["12"], 1)


def test_a_collector_above_the_split_is_fine():
    """Each GPU makes its images, the Collector gathers them, the tiles then share out every frame."""
    from comfy_distributed.workflow import build_worker_prompt

    prompt = img2img()
    prompt["12"] = {"class_type": "MultiGPUCollector", "inputs": {"images": ["3", 0]}}
    prompt["4"]["inputs"]["image"] = ["12", 0]
    worker = build_worker_prompt(prompt, ["12"], 1)
    assert {n["class_type"] for n in worker.values()} == {"LoadImage", "ImageScaleBy", "PreviewImage"}
    (pair,) = tile_pairs(prompt)
    assert pair.split == "4"
