"""What the tile jobs' component tests share (over configured stand-in workers, or over the pool's agents): the
tile workflow, the master's side played as its Tile Merge plays it, and the image of the master alone."""

from __future__ import annotations

import asyncio

import pytest
import torch

from comfy_distributed.collector.codecs import decode_batch, quantize_like_png
from comfy_distributed.tiles.expanded import encode_crop
from comfy_distributed.tiles.graph import tile_pairs
from comfy_distributed.tiles.grid import crop, merge, plan_tiles
from comfy_distributed.tiles.jobs import start_tiles
from tests.comfy_test_nodes import DistributedTestTileWork, seeded_images
from tests.component.cluster import Cluster


def tile_workflow(width: int = 200, height: int = 136, frames: int = 1, tile: int = 64, padding: int = 16,
                  gain: float = 1.1, scale: int = 1, delay: float = 0.0) -> dict:
    return {
        "1": {"class_type": "DistributedTestImage", "inputs": {"seed": 5, "batch_size": frames, "width": width,
                                                                "height": height, "delay": 0.0}},
        "2": {"class_type": "MultiGPUTileSplit", "inputs": {"image": ["1", 0], "tile_width": tile,
                                                           "tile_height": tile, "padding": padding,
                                                           "feather": padding}},
        "3": {"class_type": "DistributedTestTileWork", "inputs": {"image": ["2", 0], "gain": gain, "scale": scale,
                                                                 "delay": delay}},
        "4": {"class_type": "MultiGPUTileMerge", "inputs": {"tile": ["3", 0]}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "tiled"}},
    }


def image_of(prompt: dict, node_id: str) -> torch.Tensor:
    source = prompt[node_id]["inputs"]
    return seeded_images(source["seed"], source["batch_size"], source["width"], source["height"])


async def run_tiles(cluster: Cluster, prompt: dict, master_delay: float = 0.0):
    """What the master's Tile Merge does, with the test node run in-process for the master's tiles (its hint,
    when it has one, cropped per tile when it has the image's size, as the Tile Start crops it).
    Returns the merged image, the job (None: no worker enabled) and the positions the master ran."""
    cluster.orchestrator.loop = asyncio.get_running_loop()
    (pair,) = tile_pairs(prompt)
    split, work = prompt[pair.split]["inputs"], prompt["3"]["inputs"]
    image = image_of(prompt, split["image"][0])
    grid = plan_tiles(image.shape[2], image.shape[1], split["tile_width"], split["tile_height"], split["padding"],
                      split["feather"])
    crops = [quantize_like_png(crop(image, t)) for t in grid.tiles]
    files = [[encode_crop(c)] for c in crops]
    hint_link, hints, hint_crops = work.get("hint"), {}, None
    if hint_link is not None:
        hint = image_of(prompt, hint_link[0])
        if hint_link == split["image"]:
            hint_crops, hints = crops, {(hint_link[0], hint_link[1]): 0}
        elif hint.shape[1:3] == image.shape[1:3]:
            hint_crops = [quantize_like_png(crop(hint, t)) for t in grid.tiles]
            hints = {(hint_link[0], hint_link[1]): 1}
            files = [f + [encode_crop(h)] for f, h in zip(files, hint_crops)]

    def on_master(position: int) -> torch.Tensor:
        if master_delay:
            import time
            time.sleep(master_delay)
        guide = None if hint_link is None else hint_crops[position - 1] if hint_crops else image_of(prompt, hint_link[0])
        (out,) = DistributedTestTileWork().work(crops[position - 1], work["gain"], work["scale"], 0.0, guide)
        return quantize_like_png(out)  # as MultiGPUUnitPart does

    job = await asyncio.to_thread(start_tiles, cluster.orchestrator, prompt, pair, files, int(image.shape[0]), hints)
    mine: dict[int, torch.Tensor] = {}
    if job is None:
        tiles = {p: on_master(p) for p in range(1, len(grid.tiles) + 1)}
    else:
        result = await asyncio.to_thread(cluster.orchestrator.collect, job.job_id, pair.merge, lambda: False,
                                         lambda unit: mine.__setitem__(unit.position, on_master(unit.position)))
        assert result.failures == []
        tiles = dict(mine)
        for unit, files in result.outputs:
            early = unit.decoded.get(pair.merge)
            tiles[unit.position] = early if early is not None else decode_batch(files["images"])
    return merge(grid, [tiles[p] for p in range(1, len(grid.tiles) + 1)]), job, sorted(mine)


@pytest.fixture
async def alone(tmp_path):
    """The same workflow with no worker at all: the image every cluster must give."""
    async def make(prompt: dict) -> torch.Tensor:
        async with Cluster(tmp_path / "alone", []) as cluster:
            merged, job, _ = await run_tiles(cluster, prompt)
            assert job is None
            return merged

    (tmp_path / "alone").mkdir()
    return make
