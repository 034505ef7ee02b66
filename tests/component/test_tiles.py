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

from comfy_distributed.errors import JobError
from comfy_distributed.collector.codecs import quantize_like_png
from comfy_distributed.tiles.graph import tile_pairs
from comfy_distributed.tiles.jobs import start_tiles
from comfy_distributed.tiles.expanded import encode_crop
from comfy_distributed.tiles.grid import crop, plan_tiles
from tests.comfy_test_nodes import DistributedTestTileWork
from tests.component.tiles_support import alone, image_of, run_tiles, tile_workflow  # noqa: F401  (alone: a fixture)
from tests.waiting import until


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


async def test_tiles_as_websocket_frames_give_the_image_of_the_master_alone(tmp_path, standin_cluster, alone):
    prompt = tile_workflow(frames=2, delay=0.05)
    cluster = await standin_cluster(workers=2, frames=True)
    merged, job, on_master = await run_tiles(cluster, prompt, master_delay=0.05)
    assert job is not None and len(job.units) == 12 and cluster.failure_messages() == []
    assert torch.equal(merged, await alone(prompt))
    w1, w2 = cluster.workers
    assert w1.received and w2.received
    assert {w["prompt"]["4"]["class_type"] for w in w1.received + w2.received} == {"SaveImageWebsocket"}
    assert w1.request_counts["/view"] == 0 and w2.request_counts["/view"] == 0


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


def with_hint(prompt: dict, width: int, height: int, seed: int = 9) -> dict:
    """The workflow with a hint image of its own (seed 9) fed to the per-tile node from outside the pipeline."""
    return {**prompt, "6": {"class_type": "DistributedTestImage", "inputs": {
        "seed": seed, "batch_size": 1, "width": width, "height": height, "delay": 0.0}},
        "3": {**prompt["3"], "inputs": {**prompt["3"]["inputs"], "hint": ["6", 0]}}}


async def test_an_image_of_the_splits_size_is_cropped_per_tile_on_every_worker(tmp_path, standin_cluster, alone):
    prompt = with_hint(tile_workflow(delay=0.02), 200, 136)
    cluster = await standin_cluster(workers=2)
    merged, job, _ = await run_tiles(cluster, prompt)
    assert torch.equal(merged, await alone(prompt))
    unit = job.units[1]
    assert len(job.uploads[1]) == 2  # the tile and its crop of the hint
    body = next(w for w in cluster.workers if w.received).received[0]["prompt"]
    hint_node = body["3"]["inputs"]["hint"][0]
    assert body[hint_node]["class_type"] == "LoadImage" and body[hint_node]["inputs"]["image"].endswith("-1.png [temp]")
    assert "6" not in body and "6" not in unit.prompt  # the whole hint is not made on the worker
    # each crop lines up with its tile: the merged image is the node run on the whole image and whole hint
    image, hint = (quantize_like_png(image_of(prompt, node)) for node in ("1", "6"))  # as the tiles travel
    (whole,) = DistributedTestTileWork().work(image, 1.1, 1, 0.0, hint)
    assert (merged - whole).abs().max() <= 3 / 255  # 8-bit rounding of the tiles; a hint off by a pixel is far more


async def test_the_splits_own_image_fed_again_is_the_tile_itself(tmp_path, standin_cluster, alone):
    base = tile_workflow(delay=0.02)
    prompt = {**base, "3": {**base["3"], "inputs": {**base["3"]["inputs"], "hint": ["1", 0]}}}
    cluster = await standin_cluster(workers=2)
    merged, job, _ = await run_tiles(cluster, prompt)
    assert torch.equal(merged, await alone(prompt))
    assert all(len(named) == 1 for named in job.uploads.values())  # nothing more to upload
    body = next(w for w in cluster.workers if w.received).received[0]["prompt"]
    assert body["3"]["inputs"]["hint"] == ["2", 0] and "1" not in body


async def test_an_image_of_another_size_is_shared_whole(tmp_path, standin_cluster, alone):
    prompt = with_hint(tile_workflow(delay=0.02), 40, 24)
    cluster = await standin_cluster(workers=2)
    merged, job, _ = await run_tiles(cluster, prompt)
    assert torch.equal(merged, await alone(prompt))
    assert all(len(named) == 1 for named in job.uploads.values())
    body = next(w for w in cluster.workers if w.received).received[0]["prompt"]
    assert body["3"]["inputs"]["hint"] == ["6", 0] and body["6"]["class_type"] == "DistributedTestImage"


async def test_interrupting_the_master_cancels_every_outstanding_tile(tmp_path, standin_cluster):
    prompt = tile_workflow(delay=0.05)
    cluster = await standin_cluster(workers=2)
    for worker in cluster.workers:
        worker.gate = asyncio.Event()  # each worker holds its first tile until the end of the test
    cluster.orchestrator.loop = asyncio.get_running_loop()
    (pair,) = tile_pairs(prompt)
    image = image_of(prompt, "1")
    grid = plan_tiles(200, 136, 64, 64, 16, 16)
    files = [[encode_crop(quantize_like_png(crop(image, t)))] for t in grid.tiles]
    job = await asyncio.to_thread(start_tiles, cluster.orchestrator, prompt, pair, files, 1)
    await until(lambda: all(w.received for w in cluster.workers))
    with pytest.raises(JobError, match="interrupted"):
        await asyncio.to_thread(cluster.orchestrator.collect, job.job_id, pair.merge, lambda: True, lambda unit: None)
    await until(lambda: all(w.interrupt_calls for w in cluster.workers))
    assert cluster.orchestrator.job(job.job_id) is None
    for worker in cluster.workers:
        worker.gate.set()
    await asyncio.sleep(0.3)
    assert [len(w.received) for w in cluster.workers] == [1, 1]  # no tile handed out after the cancel
