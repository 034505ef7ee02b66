"""The nodes users place: Multi-GPU Distributor (seed) and Multi-GPU Collector (images).

On the master they run inside ComfyUI; on workers they never run, because each worker
receives a copy in which the Distributor is a literal seed and the Collector a core
``PreviewImage``. Two internal nodes (``MultiGPUUnitPart``, ``MultiGPUAssemble``) only
appear in the graph a Collector expands into when the master re-runs a failed worker's
unit itself. Torch is imported lazily so the package imports without it.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from . import runtime
from .errors import JobError
from .workflow import (
    COLLECTOR_CLASS,
    DISTRIBUTOR_CLASS,
    JOB_INPUT,
    SCHEDULING_INPUT,
    SCHEDULING_MODES,
    SEED_MODULUS,
    build_master_rerun,
)

log = logging.getLogger("comfy_distributed")

REMOTE_OUTPUT_CLASS = "MultiGPURemoteOutput"
PART_CLASS = "MultiGPUUnitPart"
ASSEMBLE_CLASS = "MultiGPUAssemble"
PARTS_TYPE = "MULTIGPU_PARTS"


class MultiGPUSeedDistributor:
    """Seed in, seed out: the master keeps the seed, worker k gets seed + k + 1."""

    CATEGORY = "multigpu"
    DESCRIPTION = (
        "Multi-GPU Seed: gives every GPU its own seed. The master uses this seed; "
        "worker k (enabled workers in config order, from 0) uses seed + k + 1."
    )
    RETURN_TYPES = ("INT",)
    RETURN_NAMES = ("seed",)
    FUNCTION = "distribute"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": SEED_MODULUS - 1,
                                              "control_after_generate": True})}}

    def distribute(self, seed: int) -> tuple[int]:
        return (seed,)


class MultiGPUCollector:
    """IMAGE in, IMAGE out: the master's batch, then worker 1's, worker 2's, ..."""

    CATEGORY = "multigpu"
    DESCRIPTION = (
        "Runs the part of the workflow above it on every enabled worker too, and outputs all "
        "images: the master's first, then each worker's in config order."
    )
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "collect"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {"images": ("IMAGE",)},
            "optional": {SCHEDULING_INPUT: (["default", *SCHEDULING_MODES], {
                "default": "default",
                "tooltip": "how the images are shared out; default follows settings.scheduling_mode"})},
            "hidden": {"unique_id": "UNIQUE_ID", "prompt": "PROMPT"},
        }

    def collect(self, images: Any, scheduling: str = "default", unique_id: str | None = None,
                prompt: dict | None = None) -> Any:
        collector_id = str(unique_id)
        job_id = ((prompt or {}).get(collector_id) or {}).get("inputs", {}).get(JOB_INPUT)
        if not job_id or runtime.orchestrator is None:
            return (images,)  # no enabled workers: exactly as without this node
        return next_step(prompt or {}, job_id, collector_id, {0: images})


def next_step(prompt: dict, job_id: str, collector_id: str, parts: dict[int, Any]) -> Any:
    """Ask the orchestrator what the master does next: run units here, or assemble the output."""
    orchestrator = runtime.orchestrator
    try:
        step = orchestrator.master_step(job_id, collector_id, set(parts), runtime.interrupted)
    except JobError as exc:
        runtime.raise_if_interrupted()
        raise RuntimeError(str(exc)) from None
    if isinstance(step, list):
        return run_on_master(prompt, job_id, collector_id, parts, step, orchestrator)
    parts = {**parts, **decode_parts(parts[0], step, collector_id, runtime.notify)}
    return (assemble(parts, collector_id),)


def decode_parts(reference: Any, result: Any, collector_id: str,
                 notify: Callable[[str, dict], None]) -> dict[int, Any]:
    """Position -> batch for each worker unit, decoded like ComfyUI's LoadImage."""
    from .images import decode_batch, same_frame

    parts = {}
    for unit, blobs in result.images:
        batch = decode_batch(blobs).to(device=reference.device, dtype=reference.dtype)
        if not same_frame(reference, batch):
            message = (f"images are {tuple(batch.shape[1:3])} (height, width), the master's "
                       f"{tuple(reference.shape[1:3])}; left out")
            notify("multigpu.worker_failed", {"worker_id": unit.worker.id, "worker": unit.name, "unit": unit.position,
                                              "reason": "size_mismatch", "rerun": False,
                                              "message": f"Worker {unit.name}: {message}"})
            log.warning("Multi-GPU Collector %s: worker %s: %s", collector_id, unit.name, message)
            continue
        parts[unit.position] = batch
    for unit in result.failures:
        log.warning("Multi-GPU Collector %s: unit %s left out: %s", collector_id, unit.position, unit.error)
    return parts


def assemble(parts: dict[int, Any], collector_id: str) -> Any:
    import torch

    merged = torch.cat([parts[position] for position in sorted(parts)], dim=0)
    log.info("Multi-GPU Collector %s: %d images from %d units", collector_id, merged.shape[0], len(parts))
    return merged


def run_on_master(prompt: dict, job_id: str, collector_id: str, parts: dict[int, Any], units: list,
                  orchestrator: Any) -> dict[str, Any]:
    """Expand into a graph that runs ``units`` here, then asks for the next step (MultiGPUAssemble)."""
    orchestrator.stash(job_id, collector_id, parts)
    graph: dict[str, Any] = {}
    previous: list | None = None
    round_id = f"{collector_id}.multigpu.{min(u.position for u in units)}"
    for unit in units:
        prefix = f"{collector_id}.multigpu.{unit.position}."
        nodes, images = build_master_rerun(prompt, collector_id, unit.seed_offset, prefix, unit.batch)
        graph.update(nodes)
        part_inputs: dict[str, Any] = {"images": images, "position": unit.position}
        if previous is not None:
            part_inputs["parts"] = previous
        graph[prefix + "part"] = {"class_type": PART_CLASS, "inputs": part_inputs}
        previous = [prefix + "part", 0]
    assemble_id = f"{round_id}.assemble"
    graph[assemble_id] = {"class_type": ASSEMBLE_CLASS,
                          "inputs": {"parts": previous, "job_id": job_id, "collector": collector_id},
                          "override_display_id": collector_id}
    log.debug("Multi-GPU Collector %s: running unit(s) %s on the master", collector_id, [u.position for u in units])
    return {"result": ([assemble_id, 0],), "expand": graph}


class MultiGPUUnitPart:
    """Internal: carries a unit re-run on the master to the assembly, with its position."""

    CATEGORY = "multigpu/internal"
    RETURN_TYPES = (PARTS_TYPE,)
    FUNCTION = "add"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"images": ("IMAGE",), "position": ("INT", {"default": 1, "min": 1, "max": 1 << 20})},
                "optional": {"parts": (PARTS_TYPE,)}}

    def add(self, images: Any, position: int, parts: tuple | None = None) -> tuple[tuple]:
        from .images import quantize_like_png

        return ((*(parts or ()), (position, quantize_like_png(images))),)


class MultiGPUAssemble:
    """Internal: joins the units the master just ran, then takes the Collector's next step."""

    CATEGORY = "multigpu/internal"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "assemble"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"parts": (PARTS_TYPE,), "job_id": ("STRING", {"default": ""}),
                             "collector": ("STRING", {"default": ""})},
                "hidden": {"prompt": "PROMPT"}}

    def assemble(self, parts: tuple, job_id: str, collector: str, prompt: dict | None = None) -> Any:
        orchestrator = runtime.orchestrator
        if orchestrator is None:
            raise RuntimeError("Multi-GPU: the extension is not running")
        collected = dict(orchestrator.take_stash(job_id, collector))
        base = collected[0]
        for position, images in parts:
            collected[position] = images.to(device=base.device, dtype=base.dtype)
        return next_step(prompt or {}, job_id, collector, collected)


class MultiGPURemoteOutput:
    """Internal: stands, in the master's queue, for an output node of a prompt sent whole to a worker."""

    CATEGORY = "multigpu/internal"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "deliver"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"forward_id": ("STRING", {"default": ""}), "node": ("STRING", {"default": ""})}}

    def deliver(self, forward_id: str, node: str) -> dict[str, Any]:
        balancer = runtime.balancer
        if balancer is None:
            raise RuntimeError("Multi-GPU: the extension is not running")
        try:
            forward = balancer.wait(forward_id, node, runtime.interrupted)
        except JobError as exc:
            runtime.raise_if_interrupted()
            raise RuntimeError(str(exc)) from None
        if forward.state == "master":  # no worker could run it: the master runs the original prompt
            if forward.expanded:
                return {"ui": {}}
            forward.expanded = True
            log.warning("Multi-GPU queue: running the prompt on the master: %s", "; ".join(forward.causes))
            return {"ui": {}, "result": (), "expand": prefixed(forward.original, f"{node}.multigpu.")}
        tag = f"worker-{forward.worker.id}" if forward.worker is not None else "worker"
        images = [runtime.save_output(file, data, tag) for file, data in forward.outputs.get(node, [])]
        return {"ui": {"images": images}}


def prefixed(prompt: dict, prefix: str) -> dict:
    """A copy of ``prompt`` with every node id (and link) under ``prefix``, for a graph expansion."""
    from .workflow import is_link

    return {
        prefix + node_id: {**node, "inputs": {
            name: [prefix + str(value[0]), value[1]] if is_link(value) else value
            for name, value in node.get("inputs", {}).items()}}
        for node_id, node in prompt.items()
    }


NODE_CLASS_MAPPINGS = {
    DISTRIBUTOR_CLASS: MultiGPUSeedDistributor,
    COLLECTOR_CLASS: MultiGPUCollector,
    PART_CLASS: MultiGPUUnitPart,
    ASSEMBLE_CLASS: MultiGPUAssemble,
    REMOTE_OUTPUT_CLASS: MultiGPURemoteOutput,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    DISTRIBUTOR_CLASS: "Multi-GPU Distributor",
    COLLECTOR_CLASS: "Multi-GPU Collector",
    PART_CLASS: "Multi-GPU unit part (internal)",
    ASSEMBLE_CLASS: "Multi-GPU assemble (internal)",
    REMOTE_OUTPUT_CLASS: "Multi-GPU output from a worker (internal)",
}
