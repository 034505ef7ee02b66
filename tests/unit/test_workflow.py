import pytest

from comfy_distributed.errors import WorkflowError
from comfy_distributed.graph.workflow import (
    COLLECTOR_CLASS,
    DISTRIBUTOR_CLASS,
    JOB_INPUT,
    build_worker_prompt,
    distributed_collectors,
    mark_master_prompt,
    offset_seed,
)


def sample_prompt(seed_input=42):
    return {
        "1": {"class_type": "DistributedTestImage",
              "inputs": {"seed": ["2", 0], "batch_size": 2, "width": 64, "height": 64, "delay": 0.0}},
        "2": {"class_type": DISTRIBUTOR_CLASS, "inputs": {"seed": seed_input}},
        "3": {"class_type": COLLECTOR_CLASS, "inputs": {"images": ["1", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "x"}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }


def test_worker_copy_is_pruned_seeded_and_plain():
    copy = build_worker_prompt(sample_prompt(), ["3"], seed_offset=2)
    assert set(copy) == {"1", "3"}  # SaveImage after the Collector and the unrelated preview are gone
    assert copy["1"]["inputs"]["seed"] == 44  # seed + index + 1
    assert copy["3"]["class_type"] == "PreviewImage"
    assert copy["3"]["inputs"] == {"images": ["1", 0]}
    assert not any(n["class_type"] in (COLLECTOR_CLASS, DISTRIBUTOR_CLASS) for n in copy.values())


def test_worker_copy_leaves_the_original_untouched():
    prompt = sample_prompt()
    build_worker_prompt(prompt, ["3"], 1)
    assert prompt == sample_prompt()


def test_seed_from_primitive_int_is_resolved():
    prompt = sample_prompt(["9", 0])
    prompt["9"] = {"class_type": "PrimitiveInt", "inputs": {"value": 7}}
    assert build_worker_prompt(prompt, ["3"], 1)["1"]["inputs"]["seed"] == 8


def test_seed_from_a_node_that_must_run_is_refused_with_reason():
    prompt = sample_prompt(["9", 0])
    prompt["9"] = {"class_type": "SomeRandomSeed", "inputs": {}}
    with pytest.raises(WorkflowError, match="Distributor 2: its seed comes from node 9 \\(SomeRandomSeed\\)"):
        build_worker_prompt(prompt, ["3"], 1)


def test_seed_wraps_at_64_bits():
    assert offset_seed(2**64 - 1, 1) == 0
    assert offset_seed(10, 3) == 13


def test_several_collectors_and_nesting():
    prompt = sample_prompt()
    prompt["6"] = {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}}
    prompt["7"] = {"class_type": COLLECTOR_CLASS, "inputs": {"images": ["6", 0]}}
    prompt["8"] = {"class_type": "ImageInvert", "inputs": {"image": ["3", 0]}}
    prompt["10"] = {"class_type": COLLECTOR_CLASS, "inputs": {"images": ["8", 0]}}  # downstream of 3
    assert distributed_collectors(prompt) == ["3", "7"]
    copy = build_worker_prompt(prompt, ["3", "7"], 1)
    assert set(copy) == {"1", "3", "6", "7"}
    assert copy["7"]["class_type"] == "PreviewImage"


def test_master_prompt_is_marked_without_changing_the_original():
    prompt = sample_prompt()
    marked = mark_master_prompt(prompt, ["3"], "job-1")
    assert marked["3"]["inputs"][JOB_INPUT] == "job-1"
    assert JOB_INPUT not in prompt["3"]["inputs"]
    assert marked["1"] is prompt["1"]


def test_unconnected_collector_is_an_error():
    prompt = sample_prompt()
    prompt["3"]["inputs"] = {}
    with pytest.raises(WorkflowError, match="Collector 3"):
        build_worker_prompt(prompt, ["3"], 1)
