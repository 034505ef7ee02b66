"""Tier 3: workers with ComfyUI's own ``SaveImageWebsocket`` (``custom_nodes/websocket_image_save.py``, which a
standard install loads) send a unit's images on the job's websocket: the same pixels as single runs, with the test
node pack and with a real diffusion pipeline, and no file is written or fetched on the workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.comfy_process import COMFYUI_PATH
from tests.real.cluster import Cluster, decoded, image_workflow, worker_failures
from tests.real.harness import http_json, output_images, requires_comfyui
from tests.real.test_distributed_real import (distributed_sd15_matches_single_runs, plain_image_workflow,
                                              single_instance_images)

pytestmark = [requires_comfyui, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Cluster:
    node = Path(COMFYUI_PATH or ".") / "custom_nodes" / "websocket_image_save.py"
    assert node.is_file(), f"{node}: a ComfyUI checkout has it"
    made = Cluster(tmp_path_factory.mktemp("frames"), workers=("w1", "w2"),
                   worker_nodes={"websocket_image_save.py": node})
    try:
        yield made
    finally:
        made.stop()


def frame_units(worker) -> list[str]:
    """The class of each unit output node the worker ran (its history: the prompts the master sent it)."""
    history = http_json("GET", f"{worker.url}/history")
    return [node["class_type"] for entry in history.values() for node in entry["prompt"][2].values()
            if node["class_type"] in ("SaveImageWebsocket", "PreviewImage")]


def temp_files(worker) -> list[Path]:
    return [path for path in (worker.base_dir / "temp").rglob("*.png")]


def test_frames_give_the_images_of_single_runs_and_write_no_file(cluster):
    cluster.use_workers(cluster.w1, cluster.w2)
    entry, events, _ = cluster.run(image_workflow(seed=3000, delay=0.2))
    images = decoded(output_images(cluster.master.url, entry))
    assert worker_failures(events) == [] and len(images) == 6
    expected = []
    for seed in (3000, 3001, 3002):
        expected += single_instance_images(cluster.w1, plain_image_workflow(seed))
    for index, (got, want) in enumerate(zip(images, expected)):
        assert np.array_equal(got, want), f"image {index} differs from the single-instance run"
    for worker in (cluster.w1, cluster.w2):
        assert frame_units(worker)[:1] == ["SaveImageWebsocket"], frame_units(worker)
    assert temp_files(cluster.w2) == [], "a unit's images went as frames, not files"


def test_a_real_diffusion_pipeline_through_frames_matches_single_runs(cluster, random_sd15_checkpoint):
    distributed_sd15_matches_single_runs(cluster, random_sd15_checkpoint, 888)
    assert frame_units(cluster.w1).count("SaveImageWebsocket") >= 2
