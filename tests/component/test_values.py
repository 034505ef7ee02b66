"""Multi-GPU Value over stand-in workers: each unit gets the value of the participant it belongs to, in every
scheduling mode, and keeps it when it is re-run elsewhere."""

from __future__ import annotations

import json

import numpy as np
import pytest

from comfy_distributed.engine.plan import plan_job
from tests.comfy_test_nodes import NODE_CLASS_MAPPINGS as TEST_NODES
from tests.comfy_test_nodes import DistributedTestTileWork, seeded_images
from tests.component.cluster import by_position, pixels, workflow


def describe(class_type: str):
    node_class = TEST_NODES.get(class_type)
    return node_class.INPUT_TYPES() if node_class is not None else None


def gain_workflow(mode: str = "static", values: dict | None = None) -> dict:
    """Test image (seed from the Distributor) -> the test tile node, its gain from a Value -> Collector."""
    prompt = workflow(seed=42, batch=2)
    prompt["5"] = {"class_type": "MultiGPUValue", "inputs": {"default": "1.0",
                                                            "values": json.dumps(values or {"1": 0.5, "2": "1.5"})}}
    prompt["6"] = {"class_type": "DistributedTestTileWork", "inputs": {"image": ["1", 0], "gain": ["5", 0],
                                                                      "scale": 1, "delay": 0.0}}
    prompt["3"]["inputs"].update({"images": ["6", 0], "scheduling": mode})
    return prompt


def expected(seed: int, batch: int, gain: float) -> list[list]:
    (out,) = DistributedTestTileWork().work(seeded_images(seed, batch, 32, 24), gain, 1, 0.0)
    return [np.clip(255.0 * image, 0, 255).astype(np.uint8).tolist() for image in out.numpy()]


GAINS = {"master": 1.0, "1": 0.5, "2": 1.5}


@pytest.mark.parametrize("mode", ["static", "weighted", "dynamic"])
async def test_each_unit_gets_its_participants_value(tmp_path, standin_cluster, mode):
    cluster = await standin_cluster(workers=2, scheduling_mode=mode, unit_size=1)
    cluster.orchestrator.describe = describe
    prompt = gain_workflow(mode)
    planned = plan_job(prompt, cluster.orchestrator.cluster.store.get())
    job = cluster.start(prompt)
    assert all(unit.values == {"5": GAINS[planned.home(p)]} for p, unit in job.units.items())
    result = await cluster.collect(job)
    for position, (_, blobs) in by_position(result).items():
        unit = job.units[position]
        seed = 42 + unit.seed_offset
        assert [pixels(b).tolist() for b in blobs] == expected(seed, unit.batch or 2, GAINS[planned.home(position)])
    sent = [r["prompt"] for w in cluster.workers for r in w.received]
    assert sent and all("5" not in p and isinstance(p["6"]["inputs"]["gain"], float) for p in sent)


async def test_a_unit_rerun_elsewhere_keeps_the_value_of_its_participant(tmp_path, standin_cluster):
    cluster = await standin_cluster(workers=2)
    cluster.orchestrator.describe = describe
    cluster.workers[1].fail_routes = {"/prompt": 500}  # worker 2 fails its unit: it runs elsewhere
    job = cluster.start(gain_workflow())
    result = await cluster.collect(job)
    assert cluster.failure_messages()
    assert job.units[2].values == {"5": 1.5}
    if 2 in by_position(result):  # worker 1 took it over
        name, blobs = by_position(result)[2]
        assert name == cluster.workers[0].name or "1" in name
        assert [pixels(b).tolist() for b in blobs] == expected(44, 2, 1.5)
    else:  # the master ran it: through the same values (nodes.run_on_master builds it from unit.values)
        assert [u.position for u in result.master_units] == [2]


async def test_a_bad_value_fails_the_job_with_the_reason(tmp_path, standin_cluster):
    cluster = await standin_cluster(workers=2)
    cluster.orchestrator.describe = describe
    job = cluster.start(gain_workflow(values={"2": "bright"}))
    with pytest.raises(Exception, match=r"Multi-GPU Value 5 \(worker 2\): 'bright' is not a valid FLOAT"):
        await cluster.collect(job)
    assert [w.received for w in cluster.workers] == [[], []]
