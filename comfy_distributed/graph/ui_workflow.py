"""A workflow in the UI's format turned into the API format, the way ComfyUI's frontend does when it queues.

ComfyUI writes a workflow in two formats. The UI's (Workflow > Save, the templates): ``nodes`` with
positions and ``widgets_values`` (a node's typed-in values, by position, without names), and ``links``
between output and input slots. The API's (Workflow > Export (API), the body of ``POST /prompt``):
``{node_id: {"class_type": ..., "inputs": {name: value | [node_id, output]}}}``. Which value is which
input is known only from the node classes, so :func:`to_api_prompt` needs the ``/object_info`` of the
ComfyUI that will run the workflow (the master's).

It follows the frontend's ``graphToPrompt`` (ComfyUI_frontend 1.27, the one ComfyUI 0.3.64 pins):

* widget values go to the class's widget inputs (INT, FLOAT, STRING, BOOLEAN, combos) in declaration order,
  required then optional, skipping the values the UI keeps for itself (an INT's ``control_after_generate``,
  a combo's control and filter, an upload button); a connected input takes the link instead;
* a ``PrimitiveNode`` gives its value to the widgets it feeds (through ``Reroute`` nodes too);
* a ``Reroute`` node is followed to what feeds it;
* a muted node (mode 2) is left out, and so is every input it fed;
* a bypassed node (mode 4) is left out and its consumers take what feeds its input of the same slot, or
  else its first input of the same type;
* ``Note``, ``MarkdownNote`` and nodes connected to nothing whose class the master lacks are skipped;
* a STRING widget with ``dynamicPrompts`` has its comments removed and ``{a|b}`` choices made.

The workflow is read by :mod:`.ui_format`. What it cannot convert faithfully it refuses with a :class:`~.errors.WorkflowError` that says why and
points to Export (API): subgraphs, group nodes, a connected node whose class the master lacks, an input
only the browser fills in (a webcam, a 3D view), widget values that do not match the class.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import WorkflowError
from .ui_format import (
    BYPASSED,
    EXPORT_HINT,
    MUTED,
    NOTES,
    PRIMITIVE,
    REROUTE,
    UiNode,
    UiWorkflow,
    refuse,
)

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
UPLOAD_OPTIONS = ("image_upload", "video_upload", "animated_image_upload", "audio_upload")
"""A combo with one of these gets an upload button, whose value the UI saves after the required widgets."""
BROWSER_ONLY_TYPES = frozenset({"WEBCAM", "LOAD_3D", "LOAD_3D_ANIMATION", "PREVIEW_3D", "AUDIO_RECORD", "MARKDOWN"})
"""Input types whose value the browser makes when it queues (a capture, a 3D render): not in the file."""
CONTROL, FILTER, UPLOAD = "control_after_generate", "control_filter_list", "upload"


@dataclass(slots=True)
class Converted:
    prompt: dict[str, dict[str, Any]]
    skipped: list[str] = field(default_factory=list)
    """The nodes left out that a user may not expect to be (a node of a class the master lacks)."""


# --- widget values --------------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class WidgetLayout:
    """The values a node of one class saves in ``widgets_values``, in order.

    ``slots`` names the input each value belongs to, or :data:`CONTROL`, :data:`FILTER`, :data:`UPLOAD`
    for values the UI keeps for itself; ``forced`` are widget-typed inputs declared ``forceInput``, which
    older frontends saved a value for (as the frontend's own migration, they are accepted in place).
    """

    slots: tuple[str, ...]
    inputs: frozenset[str]
    forced: frozenset[str]
    dynamic: frozenset[str]
    """STRING inputs with ``dynamicPrompts``."""

    def candidates(self) -> list[tuple[str, ...]]:
        """The orders a file may hold: with or without the upload button's value, with legacy forced inputs."""
        current = tuple(s for s in self.slots if s not in self.forced)
        layouts = [current, tuple(s for s in current if s != UPLOAD),
                   self.slots, tuple(s for s in self.slots if s != UPLOAD)]
        return list(dict.fromkeys(layouts))


def widget_layout(class_type: str, info: Mapping[str, Any]) -> WidgetLayout:
    """How the frontend lays out the widgets of ``class_type`` from its ``/object_info`` entry."""
    slots: list[str] = []
    inputs, forced, dynamic = set(), set(), set()
    groups = _as_dict(info.get("input"))
    order = _as_dict(info.get("input_order"))
    for group in ("required", "optional"):
        specs = _as_dict(groups.get(group))
        upload = False
        for name in _in_order(specs, order.get(group)):
            spec = specs[name]
            kind = spec[0] if isinstance(spec, list) and spec else None
            options = spec[1] if isinstance(spec, list) and len(spec) > 1 and isinstance(spec[1], dict) else {}
            if isinstance(kind, str) and kind in BROWSER_ONLY_TYPES:
                raise refuse(f"the master's {class_type} has an input ({name}, {kind}) that only the browser fills "
                              "in when it queues")
            combo = isinstance(kind, list) or kind == "COMBO"
            if not combo and kind not in WIDGET_TYPES:
                continue
            inputs.add(name)
            slots.append(name)
            if options.get("forceInput"):
                forced.add(name)
                continue
            if kind == "STRING" and options.get("dynamicPrompts"):
                dynamic.add(name)
            control = options.get("control_after_generate")
            if kind == "INT" and (control if control is not None else name in ("seed", "noise_seed")):
                slots.append(CONTROL)
            elif combo and control:
                slots.extend((CONTROL, FILTER))
            upload = upload or (combo and any(options.get(key) for key in UPLOAD_OPTIONS))
        if upload and group == "required":
            slots.append(UPLOAD)
    return WidgetLayout(tuple(slots), frozenset(inputs), frozenset(forced), frozenset(dynamic))


def _as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _in_order(specs: dict[str, Any], order: Any) -> list[str]:
    """The input names as ``input_order`` lists them (when it lists exactly them), else as declared."""
    if isinstance(order, list) and all(isinstance(n, str) for n in order) and sorted(order) == sorted(specs):
        return order
    return list(specs)


def widget_inputs(node: UiNode, layout: WidgetLayout, linked: set[str]) -> dict[str, Any]:
    """The node's widget values by input name; inputs fed by a link may lack one."""
    values = node.widgets_values
    wanted = [s for s in layout.candidates()[0] if s in layout.inputs]
    if isinstance(values, dict):
        missing = [name for name in wanted if name not in values and name not in linked]
        if missing:
            raise refuse(f"{node.label}: its widgets_values has no {', '.join(missing)}")
        return {name: values[name] for name in wanted if name in values}
    values = values or []
    for layout_slots in layout.candidates():
        if len(values) == len(layout_slots):
            break
    else:
        layout_slots = layout.candidates()[0]
        # widgets an extension adds after the node's own save what they hold: nothing, when they hold no value
        if len(values) < len(layout_slots) or any(v not in (None, "") for v in values[len(layout_slots):]):
            names = ", ".join(layout_slots) or "none"
            raise refuse(f"{node.label} has {len(values)} widget value(s), but the master's {node.type} takes "
                          f"{len(layout_slots)} ({names}): the file was saved with another version of the node")
    return {name: value for name, value in zip(layout_slots, values)
            if name in layout.inputs and name not in layout.forced}


def dynamic_prompt(text: str, rng: random.Random) -> str:
    """The frontend's dynamic prompt: ``/* */`` and ``//`` comments removed, each ``{a|b|c}`` one of its choices."""
    text = re.sub(r"/\*[\s\S]*?\*/|//.*", "", text)
    position = 0

    def choice_block() -> str:
        nonlocal position
        options, choice, depth = [], "", 0
        while position < len(text):
            char = text[position]
            position += 1
            if char == "\\":
                choice += "\\" + text[position:position + 1]
                position += 1
                continue
            if char == "{":
                depth += 1
            elif char == "}":
                if not depth:
                    break
                depth -= 1
            elif char == "|" and not depth:
                options.append(choice)
                choice = ""
                continue
            choice += char
        options.append(choice)
        return dynamic_prompt(options[int(rng.random() * len(options))], rng)

    result = ""
    while position < len(text):
        char = text[position]
        position += 1
        if char == "\\":
            result += "\\" + text[position:position + 1]
            position += 1
        elif char == "{":
            result += choice_block()
        else:
            result += char
    return re.sub(r"\\([{}|])", r"\1", result)


# --- links -----------------------------------------------------------------------------------------------


def valid_connection(a: str, b: str) -> bool:
    """LiteGraph's rule: equal types, 'anything' on either side, or comma-separated lists that share one."""
    if a in ("", "*", "0") or b in ("", "*", "0") or a == b:
        return True
    return bool({t.strip() for t in a.lower().split(",")} & {t.strip() for t in b.lower().split(",")})


@dataclass(slots=True, frozen=True)
class Origin:
    """Where an input's value comes from once virtual and bypassed nodes are passed: a node's output."""

    node: str
    slot: int


class Resolver:
    """The frontend's ``resolveInput``/``resolveOutput``: follows links through Reroutes and bypassed nodes."""

    def __init__(self, workflow: UiWorkflow) -> None:
        self.workflow = workflow

    def input(self, node: UiNode, slot: int, seen: set[tuple[str, str, int]], want: str | None = None
              ) -> Origin | None:
        key = (node.id, "in", slot)
        if key in seen:
            raise refuse(f"{node.label}: its input {node.inputs[slot].name} is fed in a circle")
        seen.add(key)
        link_id = node.inputs[slot].link
        if link_id is None:
            return None
        link = self.workflow.links.get(link_id)
        if link is None:
            raise refuse(f"{node.label}: its input {node.inputs[slot].name} names link {link_id}, which the "
                          "workflow's links do not have")
        origin = self.workflow.nodes.get(link.origin)
        if origin is None:
            raise refuse(f"link {link_id} starts at node {link.origin}, which the workflow does not have")
        return self.output(origin, link.origin_slot, want if want is not None else node.inputs[slot].type, seen)

    def output(self, node: UiNode, slot: int, want: str, seen: set[tuple[str, str, int]]) -> Origin | None:
        key = (node.id, "out", slot)
        if key in seen:
            raise refuse(f"{node.label}: its output {slot} is fed in a circle")
        seen.add(key)
        if node.mode == BYPASSED:
            index = self._bypass_input(node, slot, want)
            return None if index < 0 else self.input(node, index, seen)
        if node.type in (REROUTE, PRIMITIVE) or node.type in NOTES:
            return self.input(node, slot, seen, want) if slot < len(node.inputs) else None
        return Origin(node.id, slot)

    @staticmethod
    def _bypass_input(node: UiNode, slot: int, want: str) -> int:
        """The input whose value a bypassed node passes on to its output ``slot`` (-1: none)."""
        if slot >= len(node.outputs):
            raise refuse(f"a link starts at output {slot} of {node.label}, which has no such output")
        output_type = node.outputs[slot]
        if want in ("*", ""):
            return slot if len(node.inputs) > slot else 0 if node.inputs else -1
        if slot < len(node.inputs) and valid_connection(node.inputs[slot].type, output_type) \
                and valid_connection(node.inputs[slot].type, want):
            return slot
        exact = next((i for i, s in enumerate(node.inputs) if s.type == want), -1)
        if exact >= 0:
            return exact
        return next((i for i, s in enumerate(node.inputs)
                     if valid_connection(s.type, output_type) and valid_connection(s.type, want)), -1)


# --- the conversion -----------------------------------------------------------------------------------------


def _primitive_values(workflow: UiWorkflow) -> dict[str, dict[str, Any]]:
    """Per target node, the widget values PrimitiveNodes give it (through Reroutes), as ``applyToGraph`` does."""
    given: dict[str, dict[str, Any]] = {}
    for node in workflow.nodes.values():
        if node.type != PRIMITIVE or not isinstance(node.widgets_values, list) or not node.widgets_values:
            continue
        pending, seen = [node.id], set()
        while pending:
            source = pending.pop()
            seen.add(source)
            for target_id, slot in workflow.fed_by.get(source, []):
                target = workflow.nodes.get(target_id)
                if target is None or slot >= len(target.inputs):
                    continue
                if target.type == REROUTE:
                    if target_id not in seen:
                        pending.append(target_id)
                    continue
                given.setdefault(target_id, {})[target.inputs[slot].name] = node.widgets_values[0]
    return given


def _connected(workflow: UiWorkflow, node: UiNode) -> bool:
    return node.id in workflow.fed_by or any(slot.link is not None for slot in node.inputs)


def to_api_prompt(workflow: UiWorkflow, object_info: Mapping[str, Any], rng: random.Random | None = None
                  ) -> Converted:
    """The API-format prompt of ``workflow`` for a ComfyUI whose ``/object_info`` is ``object_info``."""
    rng = rng or random.Random()
    resolver = Resolver(workflow)
    given = _primitive_values(workflow)
    converted = Converted({})
    for node in workflow.nodes.values():
        if node.type in (REROUTE, PRIMITIVE) or node.type in NOTES or node.mode in (MUTED, BYPASSED):
            continue
        info = object_info.get(node.type)
        if not isinstance(info, dict):
            if _connected(workflow, node):
                raise WorkflowError(f"{node.label}: the master has no node class {node.type!r}. Install its custom "
                                    "nodes on the master, or, if it is a node of the UI only, "
                                    f"{EXPORT_HINT}")
            converted.skipped.append(f"{node.label}: the master has no such class and it is connected to nothing")
            continue
        layout = widget_layout(node.type, info)
        origins = {slot.name: resolver.input(node, index, set()) for index, slot in enumerate(node.inputs)
                   if slot.link is not None}
        inputs: dict[str, Any] = widget_inputs(node, layout, set(origins))
        inputs.update({k: v for k, v in given.get(node.id, {}).items() if k in layout.inputs})
        for name in layout.dynamic & set(inputs):
            if isinstance(inputs[name], str):
                inputs[name] = dynamic_prompt(inputs[name], rng)
        inputs = {k: {"__value__": v} if isinstance(v, list) else v for k, v in inputs.items()}
        inputs.update({name: [origin.node, origin.slot] for name, origin in origins.items() if origin is not None})
        converted.prompt[node.id] = {"class_type": node.type, "inputs": inputs}
    for entry in converted.prompt.values():  # what muted or left-out nodes fed is left out too
        entry["inputs"] = {k: v for k, v in entry["inputs"].items()
                           if not (isinstance(v, list) and len(v) == 2 and v[0] not in converted.prompt)}
    if not converted.prompt:
        raise refuse("the workflow has no node the master can run (every node is muted, bypassed or a note)")
    return converted
