"""Prompt validation with the rules, error types and messages of ComfyUI 0.3.64.

``validate_prompt`` returns ``(ok, error, outputs_to_execute, node_errors)``; on failure the
server answers 400 ``{"error": error, "node_errors": node_errors}``. Like ComfyUI, validation
converts INT/FLOAT/STRING/BOOLEAN widget values in place in the prompt, so the prompt stored in
history and given to nodes carries the converted values.
"""

from __future__ import annotations

import inspect
import traceback
from typing import Any


def is_link(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], (int, float))
    )


def input_info(class_def: type, name: str, declared: dict | None = None):
    """(type, category, options) of input ``name``, or (None, None, None)."""
    declared = declared or class_def.INPUT_TYPES()
    for category in ("required", "optional", "hidden"):
        section = declared.get(category) or {}
        if name in section:
            spec = section[name]
            if category == "hidden":
                return spec, category, {}
            options = spec[1] if len(spec) > 1 else {}
            return spec[0], category, options
    return None, None, None


def types_compatible(received: Any, expected: Any) -> bool:
    if not received != expected:
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    return bool({t.strip() for t in received.split(",")} & {t.strip() for t in expected.split(",")})


def qualified_type_name(exc_type: type) -> str:
    if exc_type.__module__ == "builtins":
        return exc_type.__qualname__
    return f"{exc_type.__module__}.{exc_type.__qualname__}"


def _error(kind: str, message: str, details: str, **extra) -> dict:
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


def _call_validator(class_def: type, prompt: dict, node_id: str, received_types: dict, wanted: list[str], any_kwargs: bool):
    """Run VALIDATE_INPUTS once per list element of the constant inputs; returns the results."""
    inputs = prompt[node_id]["inputs"]
    declared = class_def.INPUT_TYPES()
    values: dict[str, list] = {}
    for name, value in inputs.items():
        _, category, _ = input_info(class_def, name, declared)
        if is_link(value):
            values[name] = [None]
        elif category is not None:
            values[name] = [value]
    hidden = declared.get("hidden") or {}
    for name, kind in hidden.items():
        if kind == "UNIQUE_ID":
            values[name] = [node_id]
        elif kind == "PROMPT":
            values[name] = [{}]
        elif kind in ("EXTRA_PNGINFO", "AUTH_TOKEN_COMFY_ORG", "API_KEY_COMFY_ORG"):
            values[name] = [None]
    chosen = {k: v for k, v in values.items() if k in wanted or any_kwargs}
    if "input_types" in wanted:
        chosen["input_types"] = [received_types]
    count = max((len(v) for v in chosen.values()), default=0)
    results = []
    for index in range(max(count, 1) if chosen else 1):
        call = {k: v[index if len(v) > index else -1] for k, v in chosen.items()}
        results.append(class_def.VALIDATE_INPUTS(**call))
    return chosen, results


def validate_node(prompt: dict, node_id: str, classes: dict[str, type], done: dict) -> tuple:
    """Validate one node and, through its links, its ancestors. Results are memoised in ``done``."""
    if node_id in done:
        return done[node_id]
    node = prompt[node_id]
    inputs = node["inputs"]
    class_def = classes[node["class_type"]]
    declared = class_def.INPUT_TYPES()
    names = set(declared.get("required", {})) | set(declared.get("optional", {}))
    errors: list[dict] = []
    valid = True

    validator = getattr(class_def, "VALIDATE_INPUTS", None)
    wanted: list[str] = []
    any_kwargs = False
    if validator is not None:
        spec = inspect.getfullargspec(validator)
        wanted = spec.args
        any_kwargs = spec.varkw is not None
    received_types: dict[str, Any] = {}

    for name in names:
        kind, category, options = input_info(class_def, name, declared)
        if name not in inputs:
            if category == "required":
                errors.append(_error("required_input_missing", "Required input is missing", f"{name}", input_name=name))
            continue
        value = inputs[name]
        config = [kind, options]
        if isinstance(value, list):
            if len(value) != 2:
                errors.append(_error(
                    "bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]", f"{name}",
                    input_name=name, input_config=config, received_value=value,
                ))
                continue
            source_id = value[0]
            source_types = classes[prompt[source_id]["class_type"]].RETURN_TYPES
            received = source_types[value[1]]
            received_types[name] = received
            if "input_types" not in wanted and not types_compatible(received, kind):
                errors.append(_error(
                    "return_type_mismatch", "Return type mismatch between linked nodes",
                    f"{name}, received_type({received}) mismatch input_type({kind})",
                    input_name=name, input_config=config, received_type=received, linked_node=value,
                ))
                continue
            try:
                upstream = validate_node(prompt, source_id, classes, done)
                if upstream[0] is False:
                    valid = False
                    continue
            except Exception as ex:
                valid = False
                done[source_id] = (False, [_error(
                    "exception_during_inner_validation", "Exception when validating inner node", str(ex),
                    input_name=name, input_config=config, exception_message=str(ex),
                    exception_type=qualified_type_name(type(ex)), traceback=traceback.format_tb(ex.__traceback__),
                    linked_node=value,
                )], source_id)
                continue
            continue

        try:
            if isinstance(value, dict) and "__value__" in value:
                value = value["__value__"]
                inputs[name] = value
            converter = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}.get(kind) if isinstance(kind, str) else None
            if converter is not None:
                value = converter(value)
                inputs[name] = value
        except Exception as ex:
            errors.append(_error(
                "invalid_input_type", f"Failed to convert an input value to a {kind} value", f"{name}, {value}, {ex}",
                input_name=name, input_config=config, received_value=value, exception_message=str(ex),
            ))
            continue

        if name in wanted or any_kwargs:
            continue
        if "min" in options and value < options["min"]:
            errors.append(_error(
                "value_smaller_than_min", f"Value {value} smaller than min of {options['min']}", f"{name}",
                input_name=name, input_config=config, received_value=value,
            ))
            continue
        if "max" in options and value > options["max"]:
            errors.append(_error(
                "value_bigger_than_max", f"Value {value} bigger than max of {options['max']}", f"{name}",
                input_name=name, input_config=config, received_value=value,
            ))
            continue
        if isinstance(kind, list) and value not in kind:
            shown_config: Any = config
            if len(kind) > 20:
                listing = f"(list of length {len(kind)})"
                shown_config = None
            else:
                listing = str(kind)
            errors.append(_error(
                "value_not_in_list", "Value not in list", f"{name}: '{value}' not in {listing}",
                input_name=name, input_config=shown_config, received_value=value,
            ))
            continue

    if wanted or any_kwargs:
        chosen, results = _call_validator(class_def, prompt, node_id, received_types, wanted, any_kwargs)
        for name in chosen:
            for result in results:
                if result is not True:
                    details = f"{name}" if result is False else f"{name} - {result}"
                    errors.append(_error("custom_validation_failed", "Custom validation failed for node", details, input_name=name))

    outcome = (False, errors, node_id) if errors or valid is not True else (True, [], node_id)
    done[node_id] = outcome
    return outcome


def validate_prompt(prompt: dict, classes: dict[str, type], partial_targets: list[str] | None = None):
    outputs: list[str] = []
    for node_id, node in prompt.items():
        if "class_type" not in node:
            return False, _error(
                "invalid_prompt", "Cannot execute because a node is missing the class_type property.", f"Node ID '#{node_id}'",
            ), [], {}
        class_def = classes.get(node["class_type"])
        if class_def is None:
            return False, _error(
                "invalid_prompt", f"Cannot execute because node {node['class_type']} does not exist.", f"Node ID '#{node_id}'",
            ), [], {}
        if getattr(class_def, "OUTPUT_NODE", False) is True and (partial_targets is None or node_id in partial_targets):
            outputs.append(node_id)

    if not outputs:
        return False, _error("prompt_no_outputs", "Prompt has no outputs", ""), [], {}

    good: list[str] = []
    failures: list[tuple[str, list]] = []
    node_errors: dict[str, dict] = {}
    done: dict[str, tuple] = {}
    for output_id in outputs:
        try:
            ok, reasons, _ = validate_node(prompt, output_id, classes, done)
        except Exception as ex:
            ok = False
            reasons = [_error(
                "exception_during_validation", "Exception when validating node", str(ex),
                exception_type=qualified_type_name(type(ex)), traceback=traceback.format_tb(ex.__traceback__),
            )]
            done[output_id] = (False, reasons, output_id)
        if ok is True:
            good.append(output_id)
            continue
        failures.append((output_id, reasons))
        for node_id, (node_ok, node_reasons, _) in done.items():
            if node_ok is not True and node_reasons:
                entry = node_errors.setdefault(node_id, {
                    "errors": node_reasons, "dependent_outputs": [], "class_type": prompt[node_id]["class_type"],
                })
                entry["dependent_outputs"].append(output_id)

    if not good:
        lines = [f"{e['message']}: {e['details']}" for _, reasons in failures for e in reasons]
        return False, _error("prompt_outputs_failed_validation", "Prompt outputs failed validation", "\n".join(lines)), [], node_errors
    return True, None, good, node_errors
