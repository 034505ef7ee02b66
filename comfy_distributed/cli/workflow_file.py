"""A workflow file for ``run`` and the ``--set NODE.INPUT=VALUE`` changes ``run`` makes to it.

A file holds a bare API-format graph (what Workflow > Export (API) saves), a ``{"prompt": {...},
"extra_data": {...}}`` request body, or a workflow in the UI's format (what Workflow > Save and the
templates hold), which becomes the API format with the master's node definitions
(:mod:`~comfy_distributed.graph.ui_workflow`), as the UI makes it when it queues.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import RunError, WorkerError, WorkerUnreachable, WorkflowError
from ..config.json_limits import loads_bounded
from ..launcher import command_name
from ..graph.ui_format import UiWorkflow, is_ui_workflow, parse_ui_workflow
from ..graph.ui_workflow import to_api_prompt
from ..worker_client import ComfyClient, MIB
from ..cluster.preflight import object_info_problem

MAX_WORKFLOW_BYTES = 32 * MIB
"""Largest workflow file read: far beyond any graph, small enough to hold in memory."""

API_HINT = "export it from ComfyUI with Workflow > Export (API)"


@dataclass(slots=True, frozen=True)
class WorkflowFile:
    """A workflow file as read: its API-format prompt, or its UI-format workflow still to convert (``ui``)."""

    path: Path
    prompt: dict[str, Any] | None
    extra_data: dict[str, Any]
    ui: UiWorkflow | None = None
    source: dict[str, Any] | None = None
    """The UI-format file as written, for the images' metadata (``extra_pnginfo``), as the UI sends it."""


def _read_json(path: Path) -> Any:
    try:
        size = path.stat().st_size
        if size > MAX_WORKFLOW_BYTES:
            raise RunError(f"{path} is {size / MIB:.0f} MiB: larger than any workflow ({MAX_WORKFLOW_BYTES // MIB} MiB "
                           "at most)")
        return loads_bounded(path.read_bytes())
    except FileNotFoundError:
        raise RunError(f"{path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise RunError(f"{path} cannot be read as JSON: {exc}") from None


def _api_prompt(data: Any, path: Path) -> dict[str, Any]:
    if not isinstance(data, dict) or not data or not all(isinstance(n, dict) and "class_type" in n
                                                         for n in data.values()):
        raise RunError(f"{path} is not an API-format workflow (an object of nodes, each with a class_type) nor one "
                       f"in the UI's format (with a list of nodes): {API_HINT}")
    return data


def read_workflow(path: Path) -> WorkflowFile:
    """The workflow in ``path``, in any of the three forms; a UI-format one checked for shape, not yet converted."""
    data = _read_json(path)
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict):
        extra = data["extra_data"] if isinstance(data.get("extra_data"), dict) else {}
        return WorkflowFile(path, _api_prompt(data["prompt"], path), extra)
    if is_ui_workflow(data):
        try:
            return WorkflowFile(path, None, {}, parse_ui_workflow(data), data)
        except WorkflowError as exc:
            raise RunError(f"{path}: {exc}") from None
    return WorkflowFile(path, _api_prompt(data, path), {})


def load_workflow(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The API-format prompt and extra_data of a file in the API format (a UI-format one needs a master)."""
    workflow = read_workflow(path)
    if workflow.prompt is None:
        raise RunError(f"{path} is a workflow in the UI's format: it takes the master's node definitions to run "
                       f"('{command_name()} run' uses them), or {API_HINT}")
    return workflow.prompt, workflow.extra_data


async def master_prompt(workflow: WorkflowFile, url: str, headers: Mapping[str, str],
                        note: Callable[[str], None]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The prompt and extra_data to queue: a UI-format workflow converted with the master's ``/object_info``."""
    if workflow.ui is None:
        return workflow.prompt or {}, workflow.extra_data
    async with ComfyClient(url, name="the master", headers=headers) as client:
        try:
            info = await client.object_info()
        except WorkerUnreachable as exc:
            raise RunError(f"the master at {url} does not answer ({exc.message}): start it with '{command_name()} "
                           "master', or pass --master URL") from None
        except WorkerError as exc:
            raise RunError(f"{workflow.path} is in the UI's format, and the master's node definitions, which convert "
                           f"it, cannot be read: {exc.message}; or {API_HINT}") from None
    problem = object_info_problem(info)
    if problem:
        raise RunError(f"{workflow.path} is in the UI's format, and the master's node definitions, which convert "
                       f"it, are not ComfyUI's (GET {url}/object_info: {problem}); or {API_HINT}")
    try:
        converted = to_api_prompt(workflow.ui, info)
    except WorkflowError as exc:
        raise RunError(f"{workflow.path}: {exc}") from None
    for skipped in converted.skipped:
        note(f"note: left out {skipped}")
    note(f"Converted {workflow.path.name} from the UI's format with the master's node definitions "
         f"({len(converted.prompt)} nodes)")
    return converted.prompt, {**workflow.extra_data, "extra_pnginfo": {"workflow": workflow.source}}



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
        raise RunError(f"--set {override!r}: write NODE.INPUT=VALUE, e.g. --set 3.seed=42 (NODE is a node's id: "
                          "a key of the API-format file, or the #N the UI shows on the node)")
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
