"""Tile Split / Merge pairs in a prompt: pairing, refusals, a worker's tile prompt, the master's expansion."""

from __future__ import annotations

import pytest

from comfy_distributed.errors import WorkflowError
from comfy_distributed.tiles.graph import (
    build_master_tile,
    build_tile_prompt,
    outside_inputs,
    tile_pairs,
    tile_pipeline,
)


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
    from comfy_distributed.graph.workflow import build_worker_prompt

    prompt = img2img()
    prompt["12"] = {"class_type": "MultiGPUCollector", "inputs": {"images": ["10", 0]}}
    prompt["11"]["inputs"]["images"] = ["12", 0]
    with pytest.raises(WorkflowError, match=r"Collector 12: tile node\(s\) 10, 4 lie above it.*before the Tile Split"):
        build_worker_prompt(prompt, ["12"], 1)


def test_a_collector_above_the_split_is_fine():
    """Each GPU makes its images, the Collector gathers them, the tiles then share out every frame."""
    from comfy_distributed.graph.workflow import build_worker_prompt

    prompt = img2img()
    prompt["12"] = {"class_type": "MultiGPUCollector", "inputs": {"images": ["3", 0]}}
    prompt["4"]["inputs"]["image"] = ["12", 0]
    worker = build_worker_prompt(prompt, ["12"], 1)
    assert {n["class_type"] for n in worker.values()} == {"LoadImage", "ImageScaleBy", "PreviewImage"}
    (pair,) = tile_pairs(prompt)
    assert pair.split == "4"


def with_controlnet() -> dict:
    """img2img with a tile ControlNet fed the upscaled image (the Split's own) and a depth map from disk."""
    prompt = img2img()
    prompt["12"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "tile.safetensors"}}
    prompt["13"] = {"class_type": "LoadImage", "inputs": {"image": "depth.png"}}
    prompt["14"] = {"class_type": "ControlNetApply", "inputs": {"conditioning": ["6", 0], "control_net": ["12", 0],
                                                                "image": ["3", 0], "strength": 1.0}}
    prompt["15"] = {"class_type": "ControlNetApply", "inputs": {"conditioning": ["14", 0], "control_net": ["12", 0],
                                                                "image": ["13", 0], "strength": 0.5}}
    prompt["8"]["inputs"]["positive"] = ["15", 0]
    return prompt


def test_a_controlnet_fed_a_cropped_image_joins_the_pipeline():
    prompt = with_controlnet()
    (pair,) = tile_pairs(prompt)
    assert pair.pipeline == {"5", "8", "9"}  # the ControlNet applies do not depend on the tile
    assert outside_inputs(prompt, pair) == [("1", 0), ("1", 1), ("1", 2), ("2", 0), ("3", 0), ("6", 0), ("12", 0),
                                            ("13", 0), ("14", 0), ("15", 0)]  # the seed became a literal
    # the upscaled image is the Split's; the photo has another size; the depth map has the Split's size
    pipeline, used = tile_pipeline(prompt, pair, [("3", 0), ("13", 0)])
    assert used == [("3", 0), ("13", 0)]
    assert pipeline == {"5", "8", "9", "14", "15"}  # the conditionings are made per tile, from the crops
    worker = build_tile_prompt(prompt, pair, "t-3.png", {("3", 0): "t-3.png", ("13", 0): "t-3-1.png"})
    assert worker["14"]["inputs"]["image"] == ["4", 0]
    assert worker[worker["15"]["inputs"]["image"][0]]["inputs"] == {"image": "t-3-1.png [temp]"}
    assert sorted(set(worker) - {"4.multigpu.hint.2"}, key=int) == ["1", "4", "5", "6", "8", "9", "10", "12", "14",
                                                                    "15"]
    nodes, _ = build_master_tile(prompt, pair, "m.", ["m.source", 0], {("3", 0): ["m.hint.1", 0],
                                                                       ("13", 0): ["m.hint.2", 0]})
    assert sorted(nodes) == ["m.14", "m.15", "m.5", "m.8", "m.9"]
    assert nodes["m.14"]["inputs"] == {"conditioning": ["6", 0], "control_net": ["12", 0], "image": ["m.hint.1", 0],
                                       "strength": 1.0}
    assert nodes["m.15"]["inputs"]["conditioning"] == ["m.14", 0] and nodes["m.8"]["inputs"]["positive"] == ["m.15", 0]


def test_an_image_whose_every_use_is_made_from_a_crop_is_not_cropped():
    prompt = with_controlnet()
    prompt["3"]["inputs"]["scale_by"] = 1.0  # the photo now has the Split's size too
    (pair,) = tile_pairs(prompt)
    assert tile_pipeline(prompt, pair, [("2", 0), ("3", 0)])[1] == [("3", 0)]  # ImageScaleBy need not run per tile


def test_an_image_cropped_per_tile_is_loaded_from_its_own_crop_on_the_worker():
    prompt = img2img()
    prompt["13"] = {"class_type": "LoadImage", "inputs": {"image": "depth.png"}}
    prompt["14"] = {"class_type": "ImageBlend", "inputs": {"image1": ["4", 0], "image2": ["13", 0],
                                                           "blend_factor": 0.5, "blend_mode": "normal"}}
    prompt["15"] = {"class_type": "ImageBlend", "inputs": {"image1": ["14", 0], "image2": ["3", 0],
                                                           "blend_factor": 0.5, "blend_mode": "normal"}}
    prompt["5"]["inputs"]["pixels"] = ["15", 0]
    (pair,) = tile_pairs(prompt)
    assert outside_inputs(prompt, pair) == [("1", 0), ("1", 1), ("1", 2), ("2", 0), ("3", 0), ("6", 0), ("13", 0)]
    worker = build_tile_prompt(prompt, pair, "t-3.png", {("13", 0): "t-3-1.png", ("3", 0): "t-3.png"})
    hint = worker["14"]["inputs"]["image2"][0]
    assert worker[hint] == {"class_type": "LoadImage", "inputs": {"image": "t-3-1.png [temp]"},
                            "_meta": {"title": "Multi-GPU Tile Split 4: this tile's crop of node 13's image"}}
    assert worker["15"]["inputs"]["image2"] == ["4", 0]  # the Split's own image is the tile itself
    assert not {"2", "3", "13"} & set(worker)  # neither the whole image nor the whole depth map is made there
    nodes, _ = build_master_tile(prompt, pair, "m.", ["m.source", 0], {("13", 0): ["m.hint.1", 0],
                                                                       ("3", 0): ["m.hint.2", 0]})
    assert nodes["m.14"]["inputs"]["image2"] == ["m.hint.1", 0] and nodes["m.15"]["inputs"]["image2"] == ["m.hint.2", 0]
    assert build_tile_prompt(prompt, pair, "t-3.png")["14"]["inputs"]["image2"] == ["13", 0]  # shared when not cropped
