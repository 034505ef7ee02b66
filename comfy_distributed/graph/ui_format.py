"""A workflow in the UI's format, read and checked: nodes, their slots and widget values, and the links.

ComfyUI writes a workflow in two formats. The UI's (Workflow > Save, the templates): ``nodes`` with
positions and ``widgets_values`` (a node's typed-in values, by position, without names), and ``links``
between output and input slots. :func:`parse_ui_workflow` reads that format into :class:`UiWorkflow`, every
field checked for shape and size, and refuses what cannot be converted faithfully (subgraphs, group nodes)
with a message that points to Export (API); :mod:`.ui_workflow` turns it into the API format.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import WorkflowError

EXPORT_HINT = "open the workflow in ComfyUI, use Workflow > Export (API) and run the file it saves"

MAX_NODES = 10_000
MAX_LINKS = 50_000
MAX_SLOTS = 1_000
"""Inputs, outputs or widget values of one node: far more than any node class declares."""
MAX_NAME = 256

MUTED, BYPASSED = 2, 4
REROUTE, PRIMITIVE = "Reroute", "PrimitiveNode"
NOTES = frozenset({"Note", "MarkdownNote"})
"""Nodes of the UI only that never reach a prompt."""


@dataclass(slots=True, frozen=True)
class Slot:
    """An input of a node in the file: its name, its type and the link that feeds it, if any."""

    name: str
    type: str
    link: int | None


@dataclass(slots=True, frozen=True)
class Link:
    origin: str
    origin_slot: int


@dataclass(slots=True, frozen=True)
class UiNode:
    id: str
    type: str
    mode: int
    inputs: tuple[Slot, ...]
    outputs: tuple[str, ...]
    """The type of each output."""
    widgets_values: list[Any] | dict[str, Any] | None

    @property
    def label(self) -> str:
        return f"node {self.id} ({self.type})"


@dataclass(slots=True, frozen=True)
class UiWorkflow:
    """A UI-format workflow whose shape has been checked; node ids as the API writes them (strings)."""

    nodes: dict[str, UiNode]
    links: dict[int, Link]
    fed_by: dict[str, list[tuple[str, int]]]
    """Per node id, the (target node, input slot) of each link that starts at it."""


def is_ui_workflow(data: Any) -> bool:
    """Whether ``data`` claims to be in the UI's format (it has a list of nodes)."""
    return isinstance(data, dict) and isinstance(data.get("nodes"), list)


def refuse(problem: str) -> WorkflowError:
    return WorkflowError(f"{problem}. To run it: {EXPORT_HINT}")


def _node_id(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not 0 < len(str(value)) <= 64:
        raise refuse(f"{where} is not a node id")
    return str(value)


def _slot_index(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_SLOTS:
        raise refuse(f"{where} is not a slot number")
    return value


def _type_name(value: Any) -> str:
    """A slot's type: a name, or LiteGraph's numbers for events and 'anything'."""
    return value if isinstance(value, str) else str(value) if isinstance(value, int) else ""


def _name(value: Any, where: str) -> str:
    """A slot's name ("" on a Reroute)."""
    if not isinstance(value, str) or len(value) > MAX_NAME:
        raise refuse(f"{where} has no name")
    return value


def parse_ui_workflow(data: Any) -> UiWorkflow:
    """The workflow's nodes and links, each checked for shape and size; refusals that need no node classes."""
    if not is_ui_workflow(data):
        raise refuse("the file is not a workflow in the UI's format (an object with a list of nodes)")
    definitions = data.get("definitions")
    if isinstance(definitions, dict) and definitions.get("subgraphs"):
        raise refuse("the workflow has subgraphs (definitions.subgraphs), which this conversion does not expand")
    extra = data.get("extra")
    if isinstance(extra, dict) and extra.get("groupNodes"):
        raise refuse("the workflow has group nodes (extra.groupNodes), which this conversion does not expand")
    raw_nodes, raw_links = data["nodes"], data.get("links", [])
    if not raw_nodes:
        raise refuse("the workflow has no nodes")
    if len(raw_nodes) > MAX_NODES or not isinstance(raw_links, list) or len(raw_links) > MAX_LINKS:
        raise refuse(f"the workflow's nodes and links must be lists of at most {MAX_NODES} and {MAX_LINKS}")
    links: dict[int, Link] = {}
    fed_by: dict[str, list[tuple[str, int]]] = {}
    for index, raw in enumerate(raw_links):
        link_id, link, target, slot = _parse_link(raw, f"links[{index}]")
        if link_id in links:
            raise refuse(f"links[{index}]: link {link_id} appears twice")
        links[link_id] = link
        fed_by.setdefault(link.origin, []).append((target, slot))
    nodes: dict[str, UiNode] = {}
    for index, raw in enumerate(raw_nodes):
        node = _parse_node(raw, f"nodes[{index}]")
        if node.id in nodes:
            raise refuse(f"nodes[{index}]: node id {node.id} appears twice")
        if node.type.startswith(("workflow>", "workflow/")):
            raise refuse(f"{node.label} is a group node, which this conversion does not expand")
        nodes[node.id] = node
    return UiWorkflow(nodes, links, fed_by)


def _parse_link(raw: Any, where: str) -> tuple[int, Link, str, int]:
    """A link as a list ``[id, origin, origin_slot, target, target_slot, type]`` (version 0.4) or an object (1)."""
    if isinstance(raw, list) and len(raw) >= 5:
        link_id, origin, origin_slot, target, target_slot = raw[:5]
    elif isinstance(raw, dict):
        link_id, origin, origin_slot = raw.get("id"), raw.get("origin_id"), raw.get("origin_slot")
        target, target_slot = raw.get("target_id"), raw.get("target_slot")
    else:
        raise refuse(f"{where} is not a link ([id, from node, from slot, to node, to slot, type])")
    if isinstance(link_id, bool) or not isinstance(link_id, int):
        raise refuse(f"{where} has no link id")
    link = Link(_node_id(origin, f"{where}'s origin"), _slot_index(origin_slot, f"{where}'s origin slot"))
    return link_id, link, _node_id(target, f"{where}'s target"), _slot_index(target_slot, f"{where}'s target slot")


def _parse_node(raw: Any, where: str) -> UiNode:
    if not isinstance(raw, dict):
        raise refuse(f"{where} is not an object")
    node_id = _node_id(raw.get("id"), f"{where}'s id")
    where = f"node {node_id}"
    node_type = raw.get("type")
    if not isinstance(node_type, str) or not 0 < len(node_type) <= MAX_NAME:
        raise refuse(f"{where} has no type")
    mode = raw.get("mode", 0)
    if isinstance(mode, bool) or not isinstance(mode, int):
        raise refuse(f"{where}'s mode is not a number")
    inputs = [] if raw.get("inputs") is None else raw["inputs"]
    outputs = [] if raw.get("outputs") is None else raw["outputs"]
    values = raw.get("widgets_values")
    if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) > MAX_SLOTS \
            or len(outputs) > MAX_SLOTS:
        raise refuse(f"{where}'s inputs and outputs must be lists of at most {MAX_SLOTS}")
    if values is not None and (not isinstance(values, (list, dict)) or len(values) > MAX_SLOTS):
        raise refuse(f"{where}'s widgets_values must be a list or an object of at most {MAX_SLOTS} values")
    slots = []
    for index, item in enumerate(inputs):
        if not isinstance(item, dict):
            raise refuse(f"{where}'s input {index} is not an object")
        link = item.get("link")
        if link is not None and (isinstance(link, bool) or not isinstance(link, int)):
            raise refuse(f"{where}'s input {index} has a link that is not a link id")
        slots.append(Slot(_name(item.get("name"), f"{where}'s input {index}"), _type_name(item.get("type")), link))
    kinds = tuple(_type_name(item.get("type")) if isinstance(item, dict) else "" for item in outputs)
    return UiNode(node_id, node_type, mode, tuple(slots), kinds, values)
