"""UI-format workflows to the API format (``ui_workflow``), with the node definitions of a real ComfyUI 0.3.64.

The definitions are ``data/object_info_examples.json``: the classes the examples and these tests use, as a real
master with this extension answered ``/object_info``. The browser tier checks the same conversion against the
frontend's own (tests/browser/test_examples_ui.py).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from comfy_distributed.errors import WorkflowError
from comfy_distributed.graph.ui_format import MAX_NODES, parse_ui_workflow
from comfy_distributed.graph.ui_workflow import CONTROL, dynamic_prompt, to_api_prompt, widget_layout

ROOT = Path(__file__).resolve().parents[2]
OBJECT_INFO = json.loads((Path(__file__).resolve().parent / "data" / "object_info_examples.json").read_text())
UI_EXAMPLES = sorted((ROOT / "example_workflows").glob("*.json"))
TEMPLATE_FOLDERS = ("example_workflows", "example", "examples", "workflow", "workflows")
"""The folders of a custom node that ComfyUI offers as UI templates (app/custom_node_manager.py)."""


def convert(workflow: dict, info: dict | None = None) -> dict:
    return to_api_prompt(parse_ui_workflow(workflow), info or OBJECT_INFO, random.Random(0)).prompt


class Graph:
    """A small UI-format workflow built node by node, links kept consistent on both ends."""

    def __init__(self) -> None:
        self.nodes: list[dict[str, Any]] = []
        self.links: list[list[Any]] = []

    def add(self, node_id: int, node_type: str, values: Any = None, inputs: tuple = (), outputs: tuple = (),
            mode: int = 0) -> dict:
        node = {"id": node_id, "type": node_type, "pos": [0, 0], "size": [300, 100], "flags": {}, "order": 0,
                "mode": mode, "inputs": [{"name": n, "type": t, "link": None} for n, t in inputs],
                "outputs": [{"name": t.lower(), "type": t, "links": []} for t in outputs], "properties": {}}
        if values is not None:
            node["widgets_values"] = values
        self.nodes.append(node)
        return node

    def link(self, origin: int, slot: int, target: int, input_name: str, kind: str = "*") -> None:
        link_id = len(self.links) + 1
        node = next(n for n in self.nodes if n["id"] == target)
        entry = next((i for i in node["inputs"] if i["name"] == input_name), None)
        if entry is None:  # a widget fed by a link, as the frontend saves it
            entry = {"name": input_name, "type": kind, "widget": {"name": input_name}, "link": None}
            node["inputs"].append(entry)
        entry["link"] = link_id
        self.links.append([link_id, origin, slot, target, node["inputs"].index(entry), kind])
        source = next(n for n in self.nodes if n["id"] == origin)
        if slot < len(source["outputs"]):
            source["outputs"][slot]["links"].append(link_id)

    def workflow(self, **extra: Any) -> dict:
        return {"last_node_id": 99, "last_link_id": len(self.links), "nodes": self.nodes, "links": self.links,
                "groups": [], "config": {}, "extra": {}, "version": 0.4, **extra}


def image_graph(invert_mode: int | None = None) -> Graph:
    """Load Image -> (Image Invert) -> Save Image."""
    graph = Graph()
    graph.add(1, "LoadImage", ["in.png", "image"], outputs=("IMAGE", "MASK"))
    graph.add(3, "SaveImage", ["out"], inputs=(("images", "IMAGE"),))
    if invert_mode is None:
        graph.link(1, 0, 3, "images", "IMAGE")
    else:
        graph.add(2, "ImageInvert", [], inputs=(("image", "IMAGE"),), outputs=("IMAGE",), mode=invert_mode)
        graph.link(1, 0, 2, "image", "IMAGE")
        graph.link(2, 0, 3, "images", "IMAGE")
    return graph


# --- the shipped examples ---------------------------------------------------------------------------------


def test_every_api_example_has_its_ui_example():
    assert len(UI_EXAMPLES) >= 6
    assert [p.name for p in UI_EXAMPLES] == sorted(p.name for p in (ROOT / "api_workflows").glob("*.json"))


@pytest.mark.parametrize("path", UI_EXAMPLES, ids=lambda p: p.stem)
def test_a_ui_example_converts_to_its_api_graph(path):
    expected = json.loads((ROOT / "api_workflows" / path.name).read_text())
    converted = to_api_prompt(parse_ui_workflow(json.loads(path.read_text())), OBJECT_INFO)
    assert converted.prompt == expected and converted.skipped == []


@pytest.mark.parametrize("path", UI_EXAMPLES, ids=lambda p: p.stem)
def test_a_ui_example_is_consistent_and_reproducible(path):
    """Links agree on both ends, ids are below last_*_id, and every seed's control is 'fixed'."""
    workflow = json.loads(path.read_text())
    links = {link[0]: link for link in workflow["links"]}
    nodes = {node["id"]: node for node in workflow["nodes"]}
    assert max(nodes) <= workflow["last_node_id"] and max(links) <= workflow["last_link_id"]
    for link_id, origin, origin_slot, target, target_slot, kind in links.values():
        assert link_id in nodes[origin]["outputs"][origin_slot]["links"]
        assert nodes[target]["inputs"][target_slot]["link"] == link_id
        assert kind == nodes[origin]["outputs"][origin_slot]["type"]
    for node in nodes.values():
        assert node["properties"].get("Node name for S&R", node["type"]) == node["type"]
        if node["type"] in OBJECT_INFO:
            slots = widget_layout(node["type"], OBJECT_INFO[node["type"]]).slots
            controls = [v for s, v in zip(slots, node["widgets_values"]) if s == CONTROL]
            assert all(v == "fixed" for v in controls), f"node {node['id']}: {controls}"


@pytest.mark.parametrize("folder", TEMPLATE_FOLDERS)
def test_every_template_comfyui_offers_is_a_ui_workflow(folder):
    """ComfyUI lists every JSON file of these folders as a template; one that is not a UI workflow fails to load
    ("Workflow does not contain a valid version")."""
    for path in (ROOT / folder).glob("*.json"):
        workflow = json.loads(path.read_text())
        assert isinstance(workflow, dict), path
        assert isinstance(workflow.get("version"), (int, float)), f"{path}: no version"
        assert isinstance(workflow.get("nodes"), list) and isinstance(workflow.get("links"), list), path


# --- how the frontend converts -------------------------------------------------------------------------------


def test_primitives_give_their_value_through_reroutes():
    graph = image_graph()
    graph.add(4, "EmptyLatentImage", [512, 512, 1], outputs=("LATENT",))
    graph.add(5, "PrimitiveNode", [768, "fixed"], outputs=("INT",))
    graph.add(6, "Reroute", inputs=(("", "*"),), outputs=("*",))
    graph.add(7, "PreviewImage", [], inputs=(("images", "IMAGE"),))
    graph.link(5, 0, 4, "width", "INT")
    graph.link(5, 0, 6, "", "INT")
    graph.link(6, 0, 4, "height", "INT")
    graph.link(1, 0, 7, "images", "IMAGE")
    prompt = convert(graph.workflow())
    assert prompt["4"] == {"class_type": "EmptyLatentImage", "inputs": {"width": 768, "height": 768, "batch_size": 1}}
    assert "5" not in prompt and "6" not in prompt


def test_reroutes_are_followed_and_an_unfed_one_feeds_nothing():
    graph = Graph()
    graph.add(1, "LoadImage", ["in.png"], outputs=("IMAGE", "MASK"))
    graph.add(2, "Reroute", inputs=(("", "*"),), outputs=("*",))
    graph.add(3, "Reroute", inputs=(("", "*"),), outputs=("*",))
    graph.add(4, "SaveImage", ["out"], inputs=(("images", "IMAGE"),))
    graph.add(5, "Reroute", inputs=(("", "*"),), outputs=("*",))
    graph.add(6, "PreviewImage", [], inputs=(("images", "IMAGE"),))
    graph.link(1, 0, 2, "", "IMAGE")
    graph.link(2, 0, 3, "", "IMAGE")
    graph.link(3, 0, 4, "images", "IMAGE")
    graph.link(5, 0, 6, "images", "IMAGE")
    prompt = convert(graph.workflow())
    assert prompt["4"]["inputs"] == {"filename_prefix": "out", "images": ["1", 0]}
    assert prompt["6"]["inputs"] == {}
    assert set(prompt) == {"1", "4", "6"}


def test_a_muted_node_is_left_out_with_what_it_fed():
    prompt = convert(image_graph(invert_mode=2).workflow())
    assert set(prompt) == {"1", "3"} and prompt["3"]["inputs"] == {"filename_prefix": "out"}


def test_a_bypassed_node_passes_its_input_on():
    prompt = convert(image_graph(invert_mode=4).workflow())
    assert set(prompt) == {"1", "3"} and prompt["3"]["inputs"]["images"] == ["1", 0]


def test_a_bypassed_node_passes_on_its_first_input_of_the_type():
    """A bypassed KSampler's LATENT output takes its latent_image input (slot 3), not its slot 0 (a MODEL)."""
    graph = Graph()
    graph.add(1, "EmptyLatentImage", [64, 64, 1], outputs=("LATENT",))
    graph.add(2, "KSampler", [1, "fixed", 20, 8, "euler", "normal", 1],
              inputs=(("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                      ("latent_image", "LATENT")), outputs=("LATENT",), mode=4)
    graph.add(3, "VAEDecode", [], inputs=(("samples", "LATENT"), ("vae", "VAE")), outputs=("IMAGE",))
    graph.link(1, 0, 2, "latent_image", "LATENT")
    graph.link(2, 0, 3, "samples", "LATENT")
    assert convert(graph.workflow())["3"]["inputs"] == {"samples": ["1", 0]}


def test_notes_and_unconnected_unknown_nodes_are_skipped():
    graph = image_graph()
    graph.add(10, "Note", ["read me"])
    graph.add(11, "MarkdownNote", ["# read me"])
    graph.add(12, "SomeUiOnlyNode", [1, 2])
    converted = to_api_prompt(parse_ui_workflow(graph.workflow()), OBJECT_INFO)
    assert set(converted.prompt) == {"1", "3"}
    assert converted.skipped == ["node 12 (SomeUiOnlyNode): the master has no such class and it is connected to nothing"]


def test_widget_values_map_to_inputs_in_declaration_order():
    graph = Graph()
    graph.add(1, "LoadImageMask", ["mask.png", "red", "image"], outputs=("MASK",))  # upload button saved last
    graph.add(2, "LoadImage", ["in.png"], outputs=("IMAGE", "MASK"))  # without the button's value
    graph.add(3, "MultiGPUCollector", ["dynamic", "coordinator only"], inputs=(("images", "IMAGE"),),
              outputs=("IMAGE", "LATENT", "AUDIO"))
    graph.add(4, "SaveImage", ["out"], inputs=(("images", "IMAGE"),))
    graph.add(5, "MultiGPUValue", ["7", "{}", ""], outputs=("*",))  # an extension's widget that holds nothing
    graph.link(2, 0, 3, "images", "IMAGE")
    graph.link(3, 0, 4, "images", "IMAGE")
    prompt = convert(graph.workflow())
    assert prompt["1"]["inputs"] == {"image": "mask.png", "channel": "red"}
    assert prompt["2"]["inputs"] == {"image": "in.png"}
    assert prompt["3"]["inputs"] == {"scheduling": "dynamic", "master_role": "coordinator only", "images": ["2", 0]}
    assert prompt["5"]["inputs"] == {"default": "7", "values": "{}"}


def test_widget_values_by_name_and_lists():
    graph = Graph()
    graph.add(1, "EmptyLatentImage", {"width": 64, "height": [64, 32], "batch_size": 2, "preview": {}},
              outputs=("LATENT",))
    assert convert(graph.workflow())["1"]["inputs"] == {"width": 64, "height": {"__value__": [64, 32]}, "batch_size": 2}
    graph.nodes[0]["widgets_values"] = {"width": 64}
    with pytest.raises(WorkflowError, match=r"node 1 \(EmptyLatentImage\): its widgets_values has no height, "
                                            r"batch_size.*Export \(API\)"):
        convert(graph.workflow())


@pytest.mark.parametrize("values", [[64, 64], [64, 64, 1, 5], None])
def test_widget_values_that_do_not_match_the_class_are_refused(values):
    graph = Graph()
    graph.add(1, "EmptyLatentImage", values, outputs=("LATENT",))
    with pytest.raises(WorkflowError, match=r"node 1 \(EmptyLatentImage\) has \d widget value\(s\), but the master's "
                                            r"EmptyLatentImage takes 3 \(width, height, batch_size\).*Export \(API\)"):
        convert(graph.workflow())


def test_layouts_of_controls_filters_and_forced_inputs():
    info = {"input": {"required": {"seed": ["INT", {}], "noise_seed": ["INT", {"control_after_generate": False}],
                                   "mode": [["a", "b"], {"control_after_generate": True}],
                                   "count": ["INT", {"control_after_generate": True}],
                                   "steps": ["INT", {"forceInput": True}], "model": ["MODEL"]},
                      "optional": {"note": ["STRING", {"dynamicPrompts": True}]}}}
    layout = widget_layout("Custom", info)
    assert layout.slots == ("seed", CONTROL, "noise_seed", "mode", CONTROL, "control_filter_list", "count", CONTROL,
                            "steps", "note")
    graph = Graph()
    graph.add(1, "Custom", [1, "fixed", 2, "b", "fixed", "", 3, "fixed", "{x|x} // gone"])
    assert convert(graph.workflow(), {"Custom": info})["1"]["inputs"] == \
        {"seed": 1, "noise_seed": 2, "mode": "b", "count": 3, "note": "x "}
    graph.nodes[0]["widgets_values"] = [1, "fixed", 2, "b", "fixed", "", 3, "fixed", 20, "n"]  # older frontends
    assert convert(graph.workflow(), {"Custom": info})["1"]["inputs"]["note"] == "n"


def test_dynamic_prompts_as_the_frontend_makes_them():
    rng = random.Random(1)
    assert dynamic_prompt("a /* no */cat // gone\nsits", rng) == "a cat \nsits"
    assert dynamic_prompt(r"\{literal\} and {red|blue}", rng) in ("{literal} and red", "{literal} and blue")
    assert {dynamic_prompt("{a|{b|c}}", random.Random(n)) for n in range(40)} == {"a", "b", "c"}


# --- refusals ----------------------------------------------------------------------------------------------------


def test_subgraphs_and_group_nodes_are_refused():
    workflow = image_graph().workflow(definitions={"subgraphs": [{"id": "x", "nodes": []}]})
    with pytest.raises(WorkflowError, match=r"subgraphs.*Export \(API\)"):
        parse_ui_workflow(workflow)
    with pytest.raises(WorkflowError, match="group nodes"):
        parse_ui_workflow(image_graph().workflow(extra={"groupNodes": {"g": {}}}))
    graph = image_graph()
    graph.add(9, "workflow>my group")
    with pytest.raises(WorkflowError, match=r"node 9 \(workflow>my group\) is a group node"):
        parse_ui_workflow(graph.workflow())


def test_a_connected_node_the_master_lacks_is_refused():
    graph = image_graph()
    graph.add(4, "FancySave", [], inputs=(("images", "IMAGE"),))
    graph.link(1, 0, 4, "images", "IMAGE")
    with pytest.raises(WorkflowError, match=r"node 4 \(FancySave\): the master has no node class 'FancySave'\. "
                                            r"Install its custom nodes on the master.*Export \(API\)"):
        convert(graph.workflow())


def test_inputs_only_the_browser_fills_are_refused():
    graph = Graph()
    graph.add(1, "Webcam", ["", 640])
    info = {"Webcam": {"input": {"required": {"image": ["WEBCAM", {}], "width": ["INT", {}]}}}}
    with pytest.raises(WorkflowError, match=r"Webcam has an input \(image, WEBCAM\) that only the browser fills in"):
        convert(graph.workflow(), info)


def test_links_that_go_nowhere_or_in_circles_are_refused():
    graph = image_graph()
    graph.nodes[1]["inputs"][0]["link"] = 42
    with pytest.raises(WorkflowError, match=r"node 3 \(SaveImage\): its input images names link 42"):
        convert(graph.workflow())
    graph = Graph()
    graph.add(1, "Reroute", inputs=(("", "*"),), outputs=("*",))
    graph.add(2, "Reroute", inputs=(("", "*"),), outputs=("*",))
    graph.add(3, "SaveImage", ["out"], inputs=(("images", "IMAGE"),))
    graph.link(1, 0, 2, "")
    graph.link(2, 0, 1, "")
    graph.link(2, 0, 3, "images", "IMAGE")
    with pytest.raises(WorkflowError, match="in a circle"):
        convert(graph.workflow())


def test_nothing_to_run_is_refused():
    with pytest.raises(WorkflowError, match="no node the master can run"):
        convert(image_graph(invert_mode=None).workflow() | {"nodes": [{"id": 1, "type": "Note"}]})


@pytest.mark.parametrize("change, message", [
    (lambda w: w.update(nodes={}), "not a workflow in the UI's format"),
    (lambda w: w.update(nodes=[]), "has no nodes"),
    (lambda w: w.update(links={}), "must be lists"),
    (lambda w: w["nodes"].append("node"), r"nodes\[2\] is not an object"),
    (lambda w: w["nodes"].append({"type": "SaveImage"}), r"nodes\[2\]'s id is not a node id"),
    (lambda w: w["nodes"].append({"id": True, "type": "SaveImage"}), "is not a node id"),
    (lambda w: w["nodes"].append({"id": 1, "type": "SaveImage"}), "node id 1 appears twice"),
    (lambda w: w["nodes"].append({"id": 5}), "node 5 has no type"),
    (lambda w: w["nodes"].append({"id": 5, "type": "x" * 300}), "node 5 has no type"),
    (lambda w: w["nodes"].append({"id": 5, "type": "A", "mode": "muted"}), "node 5's mode is not a number"),
    (lambda w: w["nodes"].append({"id": 5, "type": "A", "inputs": {}}), "inputs and outputs must be lists"),
    (lambda w: w["nodes"].append({"id": 5, "type": "A", "inputs": [{"name": "x", "link": "1"}]}),
     "input 0 has a link that is not a link id"),
    (lambda w: w["nodes"].append({"id": 5, "type": "A", "inputs": [{"link": 1}]}), "node 5's input 0 has no name"),
    (lambda w: w["nodes"].append({"id": 5, "type": "A", "widgets_values": "x"}), "widgets_values must be a list"),
    (lambda w: w["nodes"].append({"id": 5, "type": "A", "widgets_values": [0] * 1001}), "at most 1000 values"),
    (lambda w: w["links"].append([1, 1, 0, 3, 0, "IMAGE"]), "link 1 appears twice"),
    (lambda w: w["links"].append([2, 1, -1, 3, 0, "IMAGE"]), r"links\[1\]'s origin slot is not a slot number"),
    (lambda w: w["links"].append([2, None, 0, 3, 0, "IMAGE"]), r"links\[1\]'s origin is not a node id"),
    (lambda w: w["links"].append({"id": "2"}), r"links\[1\] has no link id"),
    (lambda w: w["links"].append(7), r"links\[1\] is not a link"),
    (lambda w: w.update(nodes=[{"id": i, "type": "Note"} for i in range(MAX_NODES + 1)]), "at most 10000"),
])
def test_bad_shapes_are_refused_with_what_is_wrong(change, message):
    workflow = image_graph().workflow()
    change(workflow)
    with pytest.raises(WorkflowError, match=message):
        parse_ui_workflow(workflow)


def test_links_as_objects_version_1():
    workflow = image_graph(invert_mode=4).workflow()
    workflow["links"] = [dict(zip(("id", "origin_id", "origin_slot", "target_id", "target_slot", "type"), link))
                         for link in workflow["links"]]
    workflow["version"] = 1
    assert convert(workflow)["3"]["inputs"]["images"] == ["1", 0]
