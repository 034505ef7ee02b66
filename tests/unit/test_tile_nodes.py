"""The tile nodes' graph expansions, run by hand as ComfyUI would run them (no worker: every tile on the master)."""

from __future__ import annotations

import pytest
import torch

from comfy_distributed.collector.codecs import quantize_like_png
from comfy_distributed.collector.nodes import MultiGPUUnitPart
from comfy_distributed.tiles import nodes as tile_nodes
from comfy_distributed.tiles.nodes import (
    MultiGPUTileMerge,
    MultiGPUTileSource,
    MultiGPUTileSplit,
    MultiGPUTileStart,
    MultiGPUTileStep,
)
from comfy_distributed.tiles.expanded import encode_crop
from comfy_distributed.tiles.grid import crop, merge, plan_tiles
from tests.dynamic_prompt import FakeDynamicPrompt


def workflow() -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
        "2": {"class_type": "MultiGPUTileSplit", "inputs": {"image": ["1", 0], "tile_width": 64, "tile_height": 64,
                                                           "padding": 16, "feather": 8}},
        "3": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
        "4": {"class_type": "MultiGPUTileMerge", "inputs": {"tile": ["3", 0]}},
    }


def test_the_merge_never_asks_for_its_tile_and_expands_into_start_and_step():
    merge_node = MultiGPUTileMerge()
    dyn = FakeDynamicPrompt(workflow())
    assert merge_node.check_lazy_status(None, "4", dyn) == []
    expansion = merge_node.merge(None, "4", dyn)
    graph = expansion["expand"]
    start = graph["4.multigpu.tiles.start"]
    assert start["class_type"] == "MultiGPUTileStart"
    assert start["inputs"] == {"image": ["1", 0], "tile_width": 64, "tile_height": 64, "padding": 16, "feather": 8,
                               "merge": "4"}  # the Split's own inputs: its image source runs, the Split does not
    assert expansion["result"] == (["4.multigpu.tiles.step", 0],)


def test_with_no_worker_the_master_runs_every_tile_and_blends_them():
    """The expansion chain played by hand: Start, Step (expands every tile), the copies, Step again."""
    dyn = FakeDynamicPrompt(workflow())
    dyn.nodes.update(MultiGPUTileMerge().merge(None, "4", dyn)["expand"])
    image = torch.rand(2, 100, 150, 3)
    (run,) = MultiGPUTileStart().start(image, 64, 64, 16, 8, "4", dynprompt=dyn)
    assert run.job_id is None and len(run.grid.tiles) == 6
    expansion = MultiGPUTileStep().step(run, None, "4.multigpu.tiles.step", dyn)
    graph = expansion["expand"]
    dyn.nodes.update(graph)
    parts = None
    for position in range(1, 7):
        prefix = f"4.multigpu.tile.{position}."
        assert graph[prefix + "source"]["inputs"] == {"tiles": ["4.multigpu.tiles.start", 0], "position": position}
        assert graph[prefix + "3"] == {"class_type": "ImageInvert", "inputs": {"image": [prefix + "source", 0]}}
        (tile,) = MultiGPUTileSource().source(run, position)
        (parts,) = MultiGPUUnitPart().add(position, parts, images=1.0 - tile)  # ImageInvert, as ComfyUI runs it
    (next_step,) = expansion["result"]
    assert graph[next_step[0]]["inputs"]["parts"] == ["4.multigpu.tile.6.part", 0]
    (merged,) = MultiGPUTileStep().step(run, parts, next_step[0], dyn)
    grid = plan_tiles(150, 100, 64, 64, 16, 8)
    expected = merge(grid, [quantize_like_png(1.0 - quantize_like_png(crop(image, t))) for t in grid.tiles])
    assert torch.equal(merged, expected)
    assert float((merged - (1.0 - image)).abs().max()) <= 2 / 255


def test_a_split_alone_shows_its_first_tile():
    image = torch.rand(1, 100, 150, 3)
    (tile,) = MultiGPUTileSplit().split(image, 64, 64, 16, 16)
    assert tile.shape == (1, 88, 88, 3)  # cores of about 50 px (150 / 3, 100 / 2), + 2 x 16, on multiples of 8


def test_a_bad_tile_size_is_refused_by_name():
    with pytest.raises(RuntimeError, match="Multi-GPU Tile Split: tile_width must be a multiple of 8"):
        MultiGPUTileSplit().split(torch.rand(1, 64, 64, 3), 60, 64, 16, 16)


def test_a_crop_of_several_frames_travels_as_one_png_that_loads_as_a_batch():
    import io

    import numpy as np
    from PIL import Image, ImageSequence

    frames = quantize_like_png(torch.rand(3, 24, 40, 3))
    frames[1] = frames[0]  # identical neighbours must stay two frames
    with Image.open(io.BytesIO(encode_crop(frames))) as png:
        loaded = [np.array(f.convert("RGB")) for f in ImageSequence.Iterator(png)]
    assert len(loaded) == 3
    back = torch.from_numpy(np.stack(loaded).astype(np.float32) / 255.0)
    assert torch.equal(back, frames)


def test_a_split_without_its_merge_is_refused_when_it_runs():
    prompt = workflow()
    del prompt["4"]
    with pytest.raises(RuntimeError, match="Multi-GPU Tile Split 2: no Multi-GPU Tile Merge below it"):
        MultiGPUTileSplit().split(torch.rand(1, 64, 64, 3), 64, 64, 16, 16, FakeDynamicPrompt(prompt))


def test_an_image_of_the_splits_size_is_cropped_per_tile_for_the_masters_tiles(monkeypatch):
    """A ControlNet-like node takes a hint from outside the pipeline: the Start gets every outside image, crops
    those of the image's size with the tiles (the Split's own image is the tile), and passes the others whole."""
    prompt = {**workflow(),
              "5": {"class_type": "LoadImage", "inputs": {"image": "depth.png"}},
              "6": {"class_type": "LoadImage", "inputs": {"image": "small.png"}},
              "7": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
              "3": {"class_type": "GuidedWork", "inputs": {"image": ["2", 0], "depth": ["5", 0], "other": ["6", 0],
                                                           "again": ["1", 0], "vae": ["7", 2]}}}
    types = {("1", 0): "IMAGE", ("5", 0): "IMAGE", ("6", 0): "IMAGE", ("7", 2): "VAE"}
    monkeypatch.setattr(tile_nodes, "output_type", lambda _prompt, key: types.get(tuple(key)))
    dyn = FakeDynamicPrompt(prompt)
    graph = MultiGPUTileMerge().merge(None, "4", dyn)["expand"]
    start = graph["4.multigpu.tiles.start"]["inputs"]
    assert {k: v for k, v in start.items() if k.startswith("image_")} == {"image_1": ["5", 0], "image_2": ["6", 0]}
    dyn.nodes.update(graph)
    image, depth, small = torch.rand(1, 100, 150, 3), torch.rand(1, 100, 150, 3), torch.rand(1, 30, 40, 3)
    (run,) = MultiGPUTileStart().start(image, 64, 64, 16, 8, "4", unique_id="4.multigpu.tiles.start",
                                       dynprompt=dyn, image_1=depth, image_2=small)
    assert list(run.hints) == [("1", 0), ("5", 0)]  # the small image is shared, not cropped
    assert run.hints[("1", 0)] is run.crops
    expansion = MultiGPUTileStep().step(run, None, "4.multigpu.tiles.step", dyn)["expand"]
    copy = expansion["4.multigpu.tile.2.3"]["inputs"]
    assert copy["image"] == ["4.multigpu.tile.2.source", 0]
    assert copy["other"] == ["6", 0] and copy["vae"] == ["7", 2]
    (again,) = MultiGPUTileSource().source(**expansion[copy["again"][0]]["inputs"] | {"tiles": run})
    (crop_of_depth,) = MultiGPUTileSource().source(**expansion[copy["depth"][0]]["inputs"] | {"tiles": run})
    grid = plan_tiles(150, 100, 64, 64, 16, 8)
    assert torch.equal(again, run.crops[1])
    assert torch.equal(crop_of_depth, quantize_like_png(crop(depth, grid.tiles[1])))
