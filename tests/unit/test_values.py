"""Multi-GPU Value: reading and typing its values, a unit's literal, the worker's copy, the master's re-run."""

from __future__ import annotations

import json

import pytest

from comfy_distributed.config import GpuConfig
from comfy_distributed.errors import WorkflowError
from comfy_distributed.engine.plan import plan_job
from comfy_distributed.collector.nodes import MultiGPUValue
from comfy_distributed.graph.values import literals, read_values, typed, value_for
from comfy_distributed.graph.workflow import build_master_rerun, build_worker_prompt, flatten_for_single

CLASSES = {
    "KSampler": {"required": {"cfg": ("FLOAT", {}), "steps": ("INT", {}), "sampler_name": (["euler", "dpmpp_2m"],),
                              "seed": ("INT", {})}},
    "CLIPTextEncode": {"required": {"text": ("STRING", {"multiline": True})}},
    "CheckpointLoaderSimple": {"required": {"ckpt_name": ("COMBO", {"options": ["a.safetensors", "b.safetensors"]})}},
    "Toggle": {"required": {"on": ("BOOLEAN", {})}},
}


def describe(class_type: str):
    return CLASSES.get(class_type)


def sd(values: dict, default: str = "7") -> dict:
    """Checkpoint -> prompt -> KSampler (cfg from a Value) -> Collector."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["1", 1]}},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}},
        "4": {"class_type": "MultiGPUSeedDistributor", "inputs": {"seed": 10}},
        "5": {"class_type": "MultiGPUValue", "inputs": {"default": default, "values": json.dumps(values)}},
        "6": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["2", 0],
                                                   "latent_image": ["3", 0], "seed": ["4", 0], "steps": 1,
                                                   "cfg": ["5", 0], "sampler_name": "euler", "scheduler": "normal",
                                                   "denoise": 1.0}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "MultiGPUCollector", "inputs": {"images": ["7", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "v"}},
    }


def test_a_workers_copy_gets_its_own_value_typed_for_what_it_feeds():
    prompt = sd({"1": "4.5", "2": 9})
    assert literals(prompt, "1", describe) == {"5": 4.5}
    assert literals(prompt, "2", describe) == {"5": 9.0}
    assert literals(prompt, "3", describe) == {"5": 7.0}  # no entry: the default
    assert literals(prompt, "master", describe) == {"5": 7.0}
    copy = build_worker_prompt(prompt, ["8"], 1, values=literals(prompt, "1", describe))
    assert "5" not in copy and copy["6"]["inputs"]["cfg"] == 4.5
    assert copy["6"]["inputs"]["seed"] == 11  # the seed offset as before


def test_without_node_classes_the_value_stays_the_text_typed():
    prompt = sd({"1": "4.5"})
    assert literals(prompt, "1", lambda _class: None) == {"5": "4.5"}
    assert build_worker_prompt(prompt, ["8"], 1)["6"]["inputs"]["cfg"] == "7"  # no values given: the default


@pytest.mark.parametrize("spec, raw, want", [
    (("INT", {}), "3", 3), (("INT", {}), "3.0", 3), (("INT", {}), 4, 4), (("FLOAT", {}), "0.25", 0.25),
    (("BOOLEAN", {}), "false", False), (("BOOLEAN", {}), "On", True), (("BOOLEAN", {}), True, True),
    (("STRING", {}), "a dog", "a dog"), (("STRING", {}), 5, "5"), ((["euler", "x"],), "x", "x"),
    (("COMBO", {"options": ["a"]}), "b", "b"),  # a choice is checked against each worker's own list, later
])
def test_values_are_typed_as_the_input_takes_them(spec, raw, want):
    got = typed(raw, spec, "here")
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize("spec, raw", [(("INT", {}), "3.5"), (("INT", {}), "three"), (("FLOAT", {}), "nan"),
                                       (("BOOLEAN", {}), "maybe"), (("INT", {}), True)])
def test_a_value_the_input_cannot_take_is_refused_naming_it(spec, raw):
    with pytest.raises(WorkflowError, match=f"here: .* is not a valid {spec[0]}"):
        typed(raw, spec, "here")


@pytest.mark.parametrize("values, message", [
    ("{not json", "its values are not JSON"),
    ("[1, 2]", "must be a JSON object of values by worker id, not list"),
    ('{"1": {"cfg": 3}}', "the value for worker '1' must be text, a number or true/false"),
    ("x" * 70000, "more than 65536"),
])
def test_bad_values_are_refused_naming_the_node(values, message):
    prompt = sd({})
    prompt["5"]["inputs"]["values"] = values
    with pytest.raises(WorkflowError, match=f"Multi-GPU Value 5: .*{message}"):
        read_values(prompt, "5")


def test_one_value_feeding_inputs_of_two_types_is_refused():
    prompt = sd({})
    prompt["6"]["inputs"]["steps"] = ["5", 0]
    with pytest.raises(WorkflowError, match=r"Multi-GPU Value 5: it feeds inputs of different types \(.*INT.*FLOAT"):
        value_for(prompt, "5", "1", describe)


def test_a_wrong_value_names_the_node_and_the_worker():
    with pytest.raises(WorkflowError, match=r"Multi-GPU Value 5 \(worker 2\): 'hot' is not a valid FLOAT"):
        literals(sd({"2": "hot"}), "2", describe)


def test_the_masters_rerun_of_a_unit_uses_that_units_values():
    prompt = sd({"2": 9})
    nodes, links = build_master_rerun(prompt, "8", 2, "p.", None, {"5": 9.0})
    assert nodes["p.6"]["inputs"]["cfg"] == 9.0 and nodes["p.6"]["inputs"]["seed"] == 12
    assert "p.1" not in nodes  # the checkpoint is still the master's loaded one
    assert links == {"images": ["p.7", 0]}


def test_a_prompt_sent_whole_to_one_instance_gets_the_default():
    assert flatten_for_single(sd({"1": 3}))["6"]["inputs"]["cfg"] == "7"
    assert flatten_for_single(sd({"1": 3}), {"5": 7.0})["6"]["inputs"]["cfg"] == 7.0


def config(workers: int = 2, mode: str = "static") -> GpuConfig:
    return GpuConfig.model_validate({"workers": [{"id": i + 1, "port": 9000 + i} for i in range(workers)],
                                     "settings": {"scheduling_mode": mode, "unit_size": 1}})


def test_each_unit_belongs_to_a_participant_whatever_the_mode():
    prompt = sd({})
    assert {p: plan_job(prompt, config()).home(p) for p in (1, 2)} == {1: "1", 2: "2"}
    weighted = plan_job(prompt, config(mode="weighted"))
    assert [weighted.home(p) for p in range(6)] == ["master", "master", "1", "1", "2", "2"]
    dynamic = plan_job(prompt, config(mode="dynamic"))
    assert [dynamic.home(p) for p in range(6)] == ["master", "1", "2", "master", "1", "2"]


def test_the_node_on_the_master_gives_its_default():
    prompt = sd({"1": 3})
    assert MultiGPUValue().value("7", prompt["5"]["inputs"]["values"], "5", prompt) == ("7",)  # no ComfyUI classes
    with pytest.raises(RuntimeError, match="Multi-GPU Value 5: its values are not JSON"):
        MultiGPUValue().value("7", "{", "5", None)
