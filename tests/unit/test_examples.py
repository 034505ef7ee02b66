"""The README's example workflows: well formed, our nodes' inputs as the nodes declare them, plannable.

Core ComfyUI nodes are checked by tier 3 where an example runs there (the tiled upscale); here every
example at least parses, names only known inputs of our nodes, and plans over two workers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from comfy_distributed.config import GpuConfig
from comfy_distributed.comfy.node_catalog import NODE_CLASS_MAPPINGS
from comfy_distributed.engine.plan import plan_job
from comfy_distributed.tiles.graph import tile_pairs
from comfy_distributed.graph.values import literals, value_nodes
from comfy_distributed.graph.workflow import build_worker_prompt, is_link

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "api_workflows").glob("*.json"))
CONFIG = GpuConfig.model_validate({"workers": [{"id": 1, "port": 8189}, {"id": 2, "port": 8190}]})


def test_there_are_examples():
    assert len(EXAMPLES) >= 5


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_an_example_is_a_prompt_our_nodes_accept(path):
    prompt = json.loads(path.read_text(encoding="utf-8"))
    for node_id, node in prompt.items():
        assert isinstance(node.get("class_type"), str) and isinstance(node.get("inputs"), dict), node_id
        for value in node["inputs"].values():
            if is_link(value):
                assert str(value[0]) in prompt, f"node {node_id} links to a missing node {value[0]}"
        node_class = NODE_CLASS_MAPPINGS.get(node["class_type"])
        if node_class is None:
            continue
        declared = node_class.INPUT_TYPES()
        known = {**declared.get("required", {}), **declared.get("optional", {})}
        assert set(node["inputs"]) <= set(known), f"node {node_id}: unknown inputs {set(node['inputs']) - set(known)}"
        assert set(declared.get("required", {})) <= set(node["inputs"]), f"node {node_id}: a required input is missing"
        for name, value in node["inputs"].items():
            choices = known[name][0]
            if isinstance(choices, list) and not is_link(value):
                assert value in choices, f"node {node_id}: {name} {value!r} is not one of {choices}"
    planned = plan_job(prompt, CONFIG)
    for position, size in planned.worker_units():
        values = literals(prompt, planned.home(position), lambda _class: None)
        copy = build_worker_prompt(prompt, planned.collectors, position, size, values) if planned.collectors else {}
        assert not any(n["class_type"].startswith("MultiGPU") for n in copy.values())
    tile_pairs(prompt)
    assert all(prompt[n]["inputs"]["values"] for n in value_nodes(prompt))
