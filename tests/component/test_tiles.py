"""Tile jobs over stand-in workers: the tiles of one image shared out, the same pixels whatever ran them.

The master's side is played here as its Tile Merge plays it (``tile_nodes``): crops quantized as 8-bit PNG, the
tile job started from the execution thread, the master's own tiles run through the same test node, the merge at
the end. Real ComfyUI runs the nodes themselves in tests/real.
"""

from __future__ import annotations

import asyncio
import os

import pytest
import torch

from comfy_distributed.media_codecs import decode_batch, quantize_like_png
from comfy_distributed.tile_graph import tile_pairs
from comfy_distributed.tile_nodes import encode_crop
from comfy_distributed.tiles import crop, merge, plan_tiles
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


async def run_tiles(cluster: Cluster, prompt: dict, master_delay: float = 0.0):
    """What the master's Tile Merge does, with the test node run in-process for the master's tiles.
    Returns the merged image, the job (None: no worker enabled) and the positions the master ran."""
    cluster.orchestrator.loop = asyncio.get_running_loop()
    (pair,) = tile_pairs(prompt)
    source, split, work = prompt["1"]["inputs"], prompt[pair.split]["inputs"], prompt["3"]["inputs"]
    image = seeded_images(source["seed"], source["batch_size"], source["width"], source["height"])
    grid = plan_tiles(source["width"], source["height"], split["tile_width"], split["tile_height"], split["padding"],
                      split["feather"])
    crops = [quantize_like_png(crop(image, t)) for t in grid.tiles]

    def on_master(position: int) -> torch.Tensor:
        if master_delay:
            import time
            time.sleep(master_delay)
        (out,) = DistributedTestTileWork().work(crops[position - 1], work["gain"], work["scale"], 0.0)
        return quantize_like_png(out)  # as MultiGPUUnitPart does

    job = await asyncio.to_thread(cluster.orchestrator.start_tiles, prompt, pair, [encode_crop(c) for c in crops],
                                  int(image.shape[0]))
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


@pytest.mark.parametrize("shape", [{}, {"frames": 3}, {"scale": 2}], ids=["one image", "3 frames", "upscale x2"])
async def test_tiles_shared_with_workers_give_the_image_of_the_master_alone(tmp_path, standin_cluster, alone, shape):
    prompt = tile_workflow(**shape, delay=0.05)
    cluster = await standin_cluster(workers=2)
    merged, job, on_master = await run_tiles(cluster, prompt, master_delay=0.05)
    assert job is not None and len(job.units) == 12
    assert torch.equal(merged, await alone(prompt))
    frames = shape.get("frames", 1)
    assert merged.shape == (frames, 136 * shape.get("scale", 1), 200 * shape.get("scale", 1), 3)
    w1, w2 = cluster.workers
    assert w1.received and w2.received  # every participant took tiles
    assert len(w1.received) + len(w2.received) + len(on_master) == 12
    body = w1.received[0]["prompt"]
    assert body["2"]["class_type"] == "LoadImage" and body["2"]["inputs"]["image"].endswith(".png [temp]")
    assert body["4"]["class_type"] == "PreviewImage" and "1" not in body  # the source image is not recomputed
    assert any(name.startswith("multigpu-tile-") for name in os.listdir(w1.dirs.temp))


async def test_a_failing_worker_changes_nothing_in_the_image(tmp_path, standin_cluster, alone):
    prompt = tile_workflow(delay=0.05)
    cluster = await standin_cluster(workers=2)
    cluster.workers[1].fail_routes = {"/prompt": 500}
    merged, job, _ = await run_tiles(cluster, prompt)
    assert torch.equal(merged, await alone(prompt))
    assert cluster.workers[1].received == [] and cluster.failure_messages()
    assert all(state == "done" or state == "master" for state in (job.state_of(p).value for p in job.units))


async def test_a_worker_three_times_slower_takes_fewer_tiles(tmp_path, standin_cluster):
    prompt = tile_workflow(delay=0.2)
    cluster = await standin_cluster(workers=2)
    cluster.workers[1].execution_delay_scale = 3
    _, job, on_master = await run_tiles(cluster, prompt, master_delay=0.2)
    fast, slow = (len(w.received) for w in cluster.workers)
    assert fast > slow >= 1 and len(on_master) >= 2
