"""Multi-GPU Value: one value for the master, another for each worker (a prompt, a CFG, a checkpoint...).

The node holds a ``default`` and, in ``values``, a JSON object of values by worker id. The master's own run
uses ``default``; each worker unit's copy of the prompt gets the literal value of the participant that unit
belongs to (its *home*: the participant the plan gives it to in static and weighted jobs, participant
``position mod participants`` in dynamic ones), wherever it finally runs, so a re-run elsewhere makes the
same images. A worker without an entry gets ``default``.

The value is typed by what the node feeds: every input it is linked to must have the same type (INT, FLOAT,
STRING, BOOLEAN or a choice list such as ``ckpt_name``); a number typed for a choice input stays the text it
is. Types come from node classes (``describe``: a class type -> its ``INPUT_TYPES()``), ComfyUI's on the
master; without them (tests, tools) a value stays the text typed.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable, Mapping

from ..config.models import MASTER as MASTER  # a Value's key for the master
from ..errors import WorkflowError
from .workflow import VALUE_CLASS, Prompt, is_link, _node_sort_key

VALUES_INPUT = "values"
DEFAULT_INPUT = "default"
MAX_VALUES_CHARS = 64 * 1024

Describe = Callable[[str], "Mapping[str, Any] | None"]
"""A node class type -> its INPUT_TYPES() dict, None when unknown."""


class AnyType(str):
    """A type that ComfyUI's validation accepts on any input (its ``!=`` is never true)."""

    def __ne__(self, other: object) -> bool:
        return False

    __hash__ = str.__hash__


ANY = AnyType("*")


def no_description(class_type: str) -> Mapping[str, Any] | None:
    """Outside ComfyUI no node class says what it takes: every value stays text."""
    return None


def value_nodes(prompt: Prompt) -> list[str]:
    return sorted((n for n, node in prompt.items() if node.get("class_type") == VALUE_CLASS), key=_node_sort_key)


def read_values(prompt: Prompt, node_id: str) -> tuple[Any, dict[str, Any]]:
    """The node's default and its per-worker values, checked: WorkflowError naming the node otherwise."""
    inputs = prompt[node_id].get("inputs", {})
    default = inputs.get(DEFAULT_INPUT, "")
    if is_link(default):
        raise WorkflowError(f"Multi-GPU Value {node_id}: type its default into the node (a link cannot differ "
                            "per worker)")
    raw = inputs.get(VALUES_INPUT, "{}")
    if isinstance(raw, str):
        if len(raw) > MAX_VALUES_CHARS:
            raise WorkflowError(f"Multi-GPU Value {node_id}: its values are {len(raw)} characters, more than "
                                f"{MAX_VALUES_CHARS}")
        try:
            raw = json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError as exc:
            raise WorkflowError(f"Multi-GPU Value {node_id}: its values are not JSON ({exc.msg} at character "
                                f"{exc.pos}); write them as {{\"worker id\": value}}") from None
    if not isinstance(raw, dict):
        raise WorkflowError(f"Multi-GPU Value {node_id}: its values must be a JSON object of values by worker id, "
                            f"not {type(raw).__name__}")
    for key, value in raw.items():
        if not isinstance(value, (str, int, float, bool)) or (isinstance(value, float) and not math.isfinite(value)):
            raise WorkflowError(f"Multi-GPU Value {node_id}: the value for worker {key!r} must be text, a number or "
                                f"true/false, not {json.dumps(value)[:60]}")
    return default, {str(key): value for key, value in raw.items()}


def consumer_spec(prompt: Prompt, node_id: str, describe: Describe) -> Any:
    """The input spec of what the node feeds (None when no class says); WorkflowError when they differ."""
    specs: dict[str, Any] = {}
    for consumer_id in sorted(prompt, key=_node_sort_key):
        node = prompt[consumer_id]
        for name, value in node.get("inputs", {}).items():
            if not (is_link(value) and str(value[0]) == node_id):
                continue
            described = describe(str(node.get("class_type")))
            declared = {**(described or {}).get("required", {}), **(described or {}).get("optional", {})}
            spec = declared.get(name)
            if spec is not None:
                specs[f"{name} (node {consumer_id})"] = spec
    kinds = {_kind(spec) for spec in specs.values()}
    if len(kinds) > 1:
        raise WorkflowError(f"Multi-GPU Value {node_id}: it feeds inputs of different types "
                            f"({', '.join(f'{where}: {_kind(s)}' for where, s in specs.items())}); use one Value "
                            "node per type")
    return next(iter(specs.values()), None)


def _kind(spec: Any) -> str:
    head = spec[0] if isinstance(spec, (list, tuple)) and spec else spec
    if isinstance(head, (list, tuple)) or head == "COMBO":
        return "choice"
    return str(head)


def choices_of(spec: Any) -> list | None:
    """The allowed values of a choice input spec (old and new COMBO forms; JSON lists or INPUT_TYPES() tuples)."""
    head = spec[0] if isinstance(spec, (list, tuple)) and spec else None
    if isinstance(head, (list, tuple)):
        return list(head)
    if head == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
        options = spec[1].get("options")
        return list(options) if isinstance(options, (list, tuple)) else None
    return None


def typed(value: Any, spec: Any, where: str) -> Any:
    """``value`` as the input ``spec`` takes it; WorkflowError naming ``where`` when it cannot be."""
    kind = _kind(spec) if spec is not None else None
    text = value if isinstance(value, str) else json.dumps(value)
    try:
        if kind == "INT":
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if not number.is_integer():
                raise ValueError
            return int(number)
        if kind == "FLOAT":
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if not math.isfinite(number):
                raise ValueError
            return number
        if kind == "BOOLEAN":
            if isinstance(value, bool):
                return value
            lowered = str(value).strip().lower()
            if lowered in ("true", "1", "yes", "on"):
                return True
            if lowered in ("false", "0", "no", "off"):
                return False
            raise ValueError
    except ValueError:
        raise WorkflowError(f"{where}: {text[:80]!r} is not a valid {kind}") from None
    if kind == "choice":
        return value if isinstance(value, str) else text  # preflight checks it against each worker's list
    return value if isinstance(value, str) or kind is None else text


def value_for(prompt: Prompt, node_id: str, owner: str | None, describe: Describe) -> Any:
    """The typed value of ``node_id`` for the participant ``owner`` (``master`` or a worker id)."""
    default, per_worker = read_values(prompt, node_id)
    raw = per_worker.get(owner, default) if owner not in (None, MASTER) else default
    who = "the master" if owner in (None, MASTER) else f"worker {owner}"
    return typed(raw, consumer_spec(prompt, node_id, describe), f"Multi-GPU Value {node_id} ({who})")


def literals(prompt: Prompt, owner: str | None, describe: Describe) -> dict[str, Any]:
    """Every Value node's literal for ``owner``: what a unit of that participant gets."""
    return {node_id: value_for(prompt, node_id, owner, describe) for node_id in value_nodes(prompt)}
