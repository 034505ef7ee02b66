"""The queue mode's node: ``MultiGPURemoteOutput`` stands, in the master's queue, for an output node of a prompt
sent whole to a worker, and delivers what the worker made (or runs the original prompt when no worker could)."""

from __future__ import annotations

import logging
from typing import Any

from .. import events
from ..collector.nodes import INTERNAL_NOTE
from ..host import runtime
from ..errors import JobError
from ..graph.workflow import is_link
from .balancer import FORWARD_POSITION, REMOTE_OUTPUT_CLASS, QueueBalancer

log = logging.getLogger("comfy_distributed")


class MultiGPURemoteOutput:
    """Internal: stands, in the master's queue, for an output node of a prompt sent whole to a worker."""

    CATEGORY = "multigpu/internal"
    DESCRIPTION = INTERNAL_NOTE
    DEPRECATED = True  # ComfyUI's only way to hide a node: the frontend leaves deprecated nodes out of the library
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "deliver"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"forward_id": ("STRING", {"default": ""}), "node": ("STRING", {"default": ""})}}

    def deliver(self, forward_id: str, node: str) -> dict[str, Any]:
        extension = runtime.running()
        host = extension.host
        balancer: QueueBalancer = extension.balancer
        try:
            forward = balancer.wait(forward_id, node, host.interrupted)
        except JobError as exc:
            host.raise_if_interrupted()
            raise RuntimeError(str(exc)) from None
        if forward.state() == "master":  # no worker could run it: the master runs the original prompt
            if forward.expanded:
                return {"ui": {}}
            forward.expanded = True
            causes = forward.record(FORWARD_POSITION).causes
            message = "Multi-GPU queue: no worker could run the prompt, the master runs it: " + "; ".join(causes)
            log.warning("%s", message)
            host.notify(*events.notice(message))
            return {"ui": {}, "result": (), "expand": prefixed(forward.original, f"{node}.multigpu.")}
        output = forward.outputs().get(node)
        if output is None:
            return {"ui": {}}
        ui: dict[str, Any] = dict(output.values)
        for key, files in output.files.items():  # images, latents, audio, a video's file: saved as they came
            ui[key] = [saved.reference for _, saved in files]
        return {"ui": ui}


def prefixed(prompt: dict, prefix: str) -> dict:
    """A copy of ``prompt`` with every node id (and link) under ``prefix``, for a graph expansion."""
    return {
        prefix + node_id: {**node, "inputs": {
            name: [prefix + str(value[0]), value[1]] if is_link(value) else value
            for name, value in node.get("inputs", {}).items()}}
        for node_id, node in prompt.items()
    }


NODE_CLASS_MAPPINGS = {REMOTE_OUTPUT_CLASS: MultiGPURemoteOutput}
NODE_DISPLAY_NAME_MAPPINGS = {REMOTE_OUTPUT_CLASS: "Multi-GPU output from a worker (internal)"}
