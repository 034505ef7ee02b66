"""What an agent's ComfyUI can run (its caps) and what a job needs, and whether the one covers the other.

Caps come from the agent's ``/object_info``: every node class, and for each choice input (checkpoints, LoRAs,
samplers...) its allowed values; nothing else of ``/object_info`` is kept (it may be 32 MiB). Their digest (sha256
of the canonical JSON) names them in Redis, so agents with the same install share one copy and a heartbeat stays
small. A job's needs come from its prompt: its node classes and every short literal string input, by class and
input; which of those inputs are choices is the agent's ComfyUI's to say, so :func:`lacks` judges only the inputs
that are choices there, as preflight does for a configured worker (:mod:`..cluster.preflight`).
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable

from ..cluster.preflight import _declared_inputs
from ..graph.values import choices_of
from .protocol import Caps, Needs, canonical

MAX_CHOICE_TEXT = 4096
"""Longer literal strings are prompt texts, never choice values: they are left out of needs and caps."""


def caps_of(object_info: dict[str, Any]) -> Caps:
    """The caps of an instance from its ``/object_info`` (already checked to have ComfyUI's shape)."""
    classes: dict[str, dict[str, list[str]]] = {}
    for name, info in object_info.items():
        if not isinstance(name, str) or not 0 < len(name) <= 256 or not isinstance(info, dict):
            continue
        combos: dict[str, list[str]] = {}
        for input_name, spec in _declared_inputs(info).items():
            values = choices_of(spec)
            if values is not None and isinstance(input_name, str) and 0 < len(input_name) <= 256:
                combos[input_name] = [v for v in values if isinstance(v, str) and len(v) <= MAX_CHOICE_TEXT]
        classes[name] = combos
    return Caps.model_construct(classes=classes)


def caps_json(caps: Caps) -> bytes:
    return canonical(caps.model_dump(mode="json"))


def digest_of(data: bytes) -> str:
    """The sha256 (hex) of ``data``: a caps digest, a file's address."""
    return hashlib.sha256(data).hexdigest()


def needs_of(prompt: dict[str, Any], uploaded: Iterable[str] = ()) -> Needs:
    """What ``prompt`` needs of an agent: its node classes and its short literal strings by class and input.

    ``uploaded``: the values that name input files the unit brings along (an agent need not have them)."""
    skip = set(uploaded)
    classes: set[str] = set()
    choices: dict[str, dict[str, set[str]]] = {}
    for node in prompt.values():
        class_type = node.get("class_type") if isinstance(node, dict) else None
        if not isinstance(class_type, str):
            continue
        classes.add(class_type)
        inputs = node.get("inputs")
        for name, value in (inputs.items() if isinstance(inputs, dict) else ()):
            if isinstance(value, str) and len(value) <= MAX_CHOICE_TEXT and value not in skip:
                choices.setdefault(class_type, {}).setdefault(name, set()).add(value)
    return Needs(classes=sorted(classes),
                 choices={c: {i: sorted(v) for i, v in inputs.items()} for c, inputs in sorted(choices.items())})


def lacks(caps: Caps, needs: Needs) -> list[str]:
    """What an agent with ``caps`` lacks to run units with ``needs`` (empty: nothing), in preflight's words."""
    problems = [f"node class {name}" for name in needs.classes if name not in caps.classes]
    for class_type, inputs in needs.choices.items():
        offered = caps.classes.get(class_type)
        if offered is None:
            continue  # the class itself is reported missing
        for input_name, values in inputs.items():
            allowed = offered.get(input_name)
            if allowed is None:
                continue  # not a choice there: any text will do
            allowed_set = set(allowed)
            problems += [f"{input_name} {value!r} ({class_type})" for value in values if value not in allowed_set]
    return problems


def tags_fit(required: Iterable[str], offered: Iterable[str]) -> bool:
    """Whether an agent's tags include every tag a job requires."""
    return set(required) <= set(offered)
