"""An API-format workflow file and the ``--set NODE.INPUT=VALUE`` changes ``run`` makes to it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


from ..errors import RunError


def load_workflow(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The API-format prompt (``{node: ...}`` or ``{"prompt": {...}}``) and extra_data of a workflow file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"{path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise RunError(f"{path} cannot be read as JSON: {exc}") from None
    extra: dict[str, Any] = {}
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict):
        extra = data["extra_data"] if isinstance(data.get("extra_data"), dict) else {}
        data = data["prompt"]
    if isinstance(data, dict) and isinstance(data.get("nodes"), list):
        raise RunError(f"{path} is a workflow in the UI's format; 'run' needs the API format: in ComfyUI use "
                          "Workflow > Export (API) and run the file it saves")
    if not isinstance(data, dict) or not data or not all(isinstance(n, dict) and "class_type" in n
                                                         for n in data.values()):
        raise RunError(f"{path} is not an API-format workflow (an object of nodes, each with a class_type): "
                          "export it from ComfyUI with Workflow > Export (API)")
    return data, extra



def _override_value(text: str, current: Any, where: str) -> Any:
    if isinstance(current, str):
        return text  # a file name, a prompt, a sampler: taken as written
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise RunError(f"--set {where}: expects true or false, not {text!r}")
    elif isinstance(current, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RunError(f"--set {where}: expects a number, not {text!r}")
        if isinstance(current, int) and isinstance(value, float) and not value.is_integer():
            raise RunError(f"--set {where}: expects a whole number, not {text!r}")
        value = int(value) if isinstance(current, int) else value
    elif value is None and text != "null":
        value = text
    return value



def apply_override(prompt: dict[str, Any], override: str) -> None:
    """``NODE.INPUT=VALUE``: set one literal input of the workflow; the value keeps the input's type."""
    key, equals, text = override.partition("=")
    node_id, dot, name = key.strip().rpartition(".")
    if not equals or not dot or not node_id or not name:
        raise RunError(f"--set {override!r}: write NODE.INPUT=VALUE, e.g. --set 3.seed=42 (NODE is the node id "
                          "in the API-format file)")
    node = prompt.get(node_id)
    if node is None:
        raise RunError(f"--set {key}: the workflow has no node {node_id!r}; its nodes: "
                          + ", ".join(f"{n} ({prompt[n].get('class_type')})" for n in list(prompt)[:40]))
    inputs = node.get("inputs")
    if not isinstance(inputs, dict) or name not in inputs:
        known = sorted(inputs) if isinstance(inputs, dict) else []
        raise RunError(f"--set {key}: node {node_id} ({node.get('class_type')}) has no input {name!r}; its "
                          f"inputs: {', '.join(known) or 'none'}")
    current = inputs[name]
    if isinstance(current, list):
        raise RunError(f"--set {key}: that input is connected to node {current[0] if current else '?'}, not "
                          "typed in: set that node's input instead")
    inputs[name] = _override_value(text, current, key)
