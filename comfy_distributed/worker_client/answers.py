"""What a worker answers, checked for shape: output files, prompt results, and its refusals in one line."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import WorkerProtocolError


MAX_FILES_PER_OUTPUT = 4096
"""Files one output node of one unit may list (frames of a long video included), or images it may send as
websocket frames (:mod:`.image_frames`)."""


MIB = 1024 * 1024


MAX_TEXT = 300
"""Characters kept of each piece of a worker's own text (error messages) that goes into ours."""


@dataclass(slots=True, frozen=True)
class OutputFile:
    """A file a worker wrote, as ComfyUI names it in ``executed`` events and history."""

    filename: str
    subfolder: str
    type: str


@dataclass(slots=True)
class PromptResult:
    prompt_id: str
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per output node, what it reported (checked to be objects by :meth:`WorkerClient.history`)."""
    worker: str = "worker"

    def images(self, node_id: str) -> list[OutputFile]:
        return self.files(node_id, "images")

    def files(self, node_id: str, key: str) -> list[OutputFile]:
        """The files an output node reported under ``key`` (images, latents, audio)."""
        node = self.outputs.get(node_id, {})
        entries = node.get(key, []) if isinstance(node, dict) else None
        if not isinstance(entries, list):
            raise WorkerProtocolError(self.worker, f"history: node {clip_text(node_id, 64)} {key} is not a list")
        return [output_file(self.worker, node_id, key, entry) for entry in entries]


def output_file(worker: str, node_id: str, key: str, entry: Any) -> OutputFile:
    """One file entry of the history, as ComfyUI writes it: strings for filename, subfolder and type."""
    if isinstance(entry, dict):
        filename, subfolder, kind = entry.get("filename"), entry.get("subfolder", ""), entry.get("type", "output")
        if all(isinstance(v, str) and len(v) <= 1024 for v in (filename, subfolder, kind)) and filename:
            return OutputFile(filename, subfolder, kind)
    raise WorkerProtocolError(worker, f"history: node {clip_text(node_id, 64)} {key}: an entry is not a file "
                                      "(filename, subfolder and type as strings)")


def clip_text(text: Any, limit: int = MAX_TEXT) -> str:
    """A worker's text, on one line and at most ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def summarize_rejection(body: Any) -> str:
    """A readable sentence from ComfyUI's 400 body: the error, then each node's errors (each part shortened)."""
    if not isinstance(body, dict):
        return "the prompt was rejected"
    parts = []
    error = body.get("error")
    if isinstance(error, dict):
        parts.append(str(error.get("message") or error.get("type") or "rejected").rstrip("."))
        if error.get("details"):
            parts.append(str(error["details"]))
    elif error:
        parts.append(str(error))
    node_errors = body.get("node_errors") or {}
    if isinstance(node_errors, dict):
        for node_id, info in list(node_errors.items())[:10]:
            if not isinstance(info, dict) or not isinstance(info.get("errors", []), list):
                continue
            messages = "; ".join(
                f"{e.get('message', '')}: {e.get('details', '')}".strip(": ")
                for e in info.get("errors", [])
                if isinstance(e, dict)
            )
            parts.append(f"node {node_id} ({info.get('class_type', '?')}): {messages}")
        if len(node_errors) > 10:
            parts.append(f"and {len(node_errors) - 10} more node(s)")
    return " - ".join(clip_text(p) for p in parts if p) or "the prompt was rejected"


def json_kind(value: Any) -> str:
    """How a JSON value of the wrong shape is named in an error ("a list", "null")."""
    kinds = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return kinds.get(type(value), "something else")


def history_problem(entry: Any) -> str | None:
    """What is wrong with the shape of a history entry (None when it is ComfyUI's)."""
    if not isinstance(entry, dict):
        return f"is {json_kind(entry)}, not an object"
    status, outputs = entry.get("status") or {}, entry.get("outputs") or {}
    if not isinstance(status, dict):
        return f"has a status that is {json_kind(status)}, not an object"
    if not isinstance(status.get("messages", []), list):
        return "has status messages that are not a list"
    if not isinstance(outputs, dict):
        return f"has outputs that are {json_kind(outputs)}, not an object"
    odd = next((node_id for node_id, value in outputs.items() if not isinstance(value, dict)), None)
    return None if odd is None else f"has an output of node {clip_text(odd, 64)} that is not an object"


def execution_error_text(data: dict) -> str:
    """An ``execution_error``'s node and exception, each shortened (they are the worker's text)."""
    return (f"node {clip_text(data.get('node_id'), 64)} ({clip_text(data.get('node_type'), 100)}) failed: "
            f"{clip_text(data.get('exception_type', 'Error'), 100)}: {clip_text(data.get('exception_message', ''))}")


def history_error(status: dict) -> str:
    for message in status.get("messages", []):
        if not (isinstance(message, list) and len(message) == 2):
            continue
        if message[0] == "execution_error":
            return execution_error_text(message[1] if isinstance(message[1], dict) else {})
        if message[0] == "execution_interrupted":
            return "the prompt was interrupted"
    return "the prompt ended with an error"


def json_or_none(body: bytes | str) -> Any:
    try:
        return json.loads(body)
    except (ValueError, TypeError, RecursionError):  # RecursionError: JSON nested too deep to parse
        return None


def node_errors(parsed: Any) -> dict:
    if isinstance(parsed, dict) and isinstance(parsed.get("node_errors"), dict):
        return parsed["node_errors"]
    return {}


def size_text(limit: int) -> str:
    """A cap in words: ``2 MiB``, ``256 KiB``, ``1000 bytes``."""
    if limit % MIB == 0:
        return f"{limit // MIB} MiB"
    return f"{limit // 1024} KiB" if limit % 1024 == 0 else f"{limit} bytes"
