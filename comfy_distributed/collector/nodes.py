"""The nodes users place: Multi-GPU Distributor (seed), Multi-GPU Collector (images) and Multi-GPU Value.

On the master they run inside ComfyUI; on workers they never run, because each worker
receives a copy in which the Distributor is a literal seed and the Collector a core
``PreviewImage``. Two internal nodes (``MultiGPUUnitPart``, ``MultiGPUAssemble``) only
appear in the graph a Collector expands into when the master re-runs a failed worker's
unit itself. Torch is imported lazily so the package imports without it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

from .. import events
from ..graph import media
from ..host import runtime
from ..errors import JobError, WorkflowError
from ..graph.workflow import (
    COLLECTOR_CLASS,
    DISTRIBUTOR_CLASS,
    JOB_INPUT,
    MASTER_ROLE_INPUT,
    MASTER_ROLES,
    SCHEDULING_INPUT,
    SCHEDULING_MODES,
    SEED_MODULUS,
    VALUE_CLASS,
    build_master_rerun,
    output_key,
)
from ..graph.values import ANY, DEFAULT_INPUT, MASTER, VALUES_INPUT, read_values, value_for

if TYPE_CHECKING:
    from .codecs import Codec
    from .orchestrator import Orchestrator

log = logging.getLogger("comfy_distributed")

PART_CLASS = "MultiGPUUnitPart"
ASSEMBLE_CLASS = "MultiGPUAssemble"
PARTS_TYPE = "MULTIGPU_PARTS"


def _codec(kind: str) -> Codec:
    """The codec of a media kind (:mod:`.codecs`, imported when a value is first decoded: planning needs no torch)."""
    from .codecs import CODECS

    return CODECS[kind]


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
    """Images (or a latent, or audio) in and out: the master's batch, then worker 1's, worker 2's, ..."""

    CATEGORY = "multigpu"
    DESCRIPTION = (
        "Runs the part of the workflow above it on every enabled worker too, and outputs everything: "
        "the master's batch first, then each worker's in config order. Connect images, a latent or audio "
        "(or several); each output carries what came in on the input of the same kind."
    )
    RETURN_TYPES = tuple(kind.comfy_type for kind in media.KINDS)
    RETURN_NAMES = media.NAMES
    FUNCTION = "collect"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        optional: dict[str, Any] = {kind.name: (kind.comfy_type,) for kind in media.KINDS if kind.name != "images"}
        optional[SCHEDULING_INPUT] = (["default", *SCHEDULING_MODES], {
            "default": "default", "tooltip": "how the work is shared out; default follows settings.scheduling_mode"})
        optional[MASTER_ROLE_INPUT] = (["default", *MASTER_ROLES], {
            "default": "default", "tooltip": "whether the master makes images too or only coordinates; default "
                                             "follows master.participates"})
        return {"required": {}, "optional": {"images": ("IMAGE",), **optional},
                "hidden": {"unique_id": "UNIQUE_ID", "prompt": "PROMPT"}}

    def collect(self, images: Any = None, latent: Any = None, audio: Any = None, scheduling: str = "default",
                master_role: str = "default", unique_id: str | None = None, prompt: dict | None = None) -> Any:
        collector_id = str(unique_id)
        own = {kind: value for kind, value in (("images", images), ("latent", latent), ("audio", audio))
               if value is not None}
        job_id = ((prompt or {}).get(collector_id) or {}).get("inputs", {}).get(JOB_INPUT)
        if not own:
            if job_id and runtime.current is not None:  # a coordinator-only master: the workers make it all
                return next_step(prompt or {}, job_id, collector_id, {})
            raise RuntimeError(f"Multi-GPU Collector {collector_id}: connect images, a latent or audio")
        if not job_id or runtime.current is None:
            return as_outputs(own)  # no enabled workers: exactly as without this node
        return next_step(prompt or {}, job_id, collector_id, {0: own})


def as_outputs(values: dict[str, Any]) -> tuple:
    """The Collector's outputs in the media registry's order; a kind not collected is None."""
    return tuple(values.get(kind) for kind in media.NAMES)


def next_step(prompt: dict, job_id: str, collector_id: str, parts: dict[int, dict[str, Any]]) -> Any:
    """Ask the orchestrator what the master does next: run units here, or assemble the output."""
    extension = runtime.running()
    orchestrator: Orchestrator = extension.orchestrator
    host = extension.host
    job = orchestrator.job(job_id)
    batch = job.batch if job is not None else None  # read now: the job is forgotten once its result is taken
    try:
        step = orchestrator.master_step(job_id, collector_id, set(parts), host.interrupted)
    except JobError as exc:
        host.raise_if_interrupted()
        raise RuntimeError(str(exc)) from None
    if isinstance(step, list):
        return run_on_master(prompt, job_id, collector_id, parts, step, orchestrator)
    reference = parts[min(parts)] if parts else None  # None: coordinator only, the first worker unit sets it
    parts = {**parts, **decode_parts(reference, step, collector_id, host.notify, job_id=job_id, batch=batch)}
    if not parts:
        raise RuntimeError(f"Multi-GPU Collector {collector_id}: no unit brought anything back")
    return as_outputs(assemble(parts, collector_id))


def decode_parts(reference: dict[str, Any] | None, result: Any, collector_id: str,
                 notify: Callable[[str, dict], None], *, job_id: str | None = None,
                 batch: int | None = None) -> dict[int, dict[str, Any]]:
    """Position -> {kind: value} for each worker unit, decoded like ComfyUI's loaders, each file checked before.

    ``reference`` is what every unit must fit (the master's own part); None when the master made nothing itself
    (coordinator only): the first unit that decodes on its own, within the caps of such a decode, is then the
    reference. A unit whose files are refused or do not fit is left out, and the UI told which worker sent what.
    """
    from .codecs import MediaRefused

    parts = {}
    for unit, files in sorted(result.outputs, key=lambda item: item[0].position):
        expected = getattr(unit, "batch", None) or batch  # the unit's images, as the job planned them
        try:
            decoded = _decode_unit(unit, collector_id, files, reference, expected)
        except MediaRefused as exc:
            _left_out(unit, collector_id, exc.reason, f"sent {exc}", notify, job_id)
            continue
        problem = None if reference is None else next(
            (why for kind, value in decoded.items() if (why := _codec(kind).fits(reference[kind], value))),
            None)
        if problem:
            _left_out(unit, collector_id, "size_mismatch", problem, notify, job_id)
            continue
        reference = decoded if reference is None else reference
        parts[unit.position] = decoded
    for unit in result.failures:
        log.warning("Multi-GPU Collector %s: unit %s left out: %s", collector_id, unit.position, unit.error)
    return parts


def _left_out(unit: Any, collector_id: str, reason: str, problem: str, notify: Callable[[str, dict], None],
              job_id: str | None) -> None:
    message = f"{problem}; left out"
    notify(*events.worker_failed(unit.worker_id, unit.name, reason, message, rerun=False, job_id=job_id,
                                 unit=unit.position))
    log.warning("Multi-GPU Collector %s: worker %s: %s", collector_id, unit.name, message)


def _decode_unit(unit: Any, collector_id: str, files: dict[str, list[bytes]], reference: dict[str, Any] | None,
                 batch: int | None) -> dict[str, Any]:
    """A unit's value of each kind: decoded as its files arrived when it could be, else now (against the
    reference, or alone when there is none yet)."""
    decoded = {}
    for kind, blobs in files.items():
        codec = _codec(kind)
        early = unit.decoded.get(output_key(collector_id, kind))
        if reference is None:
            decoded[kind] = early if early is not None else codec.alone(blobs, batch)
        elif kind in reference:
            decoded[kind] = codec.decode(blobs, reference[kind], batch) if early is None \
                else codec.adopt(early, reference[kind])
    return decoded


def assemble(parts: dict[int, dict[str, Any]], collector_id: str) -> dict[str, Any]:
    """Every kind, all positions in order."""
    joined = {kind: _codec(kind).join([parts[p][kind] for p in sorted(parts) if kind in parts[p]])
              for kind in parts[min(parts)]}
    log.info("Multi-GPU Collector %s: %s from %d units", collector_id,
             ", ".join(f"{kind}" for kind in joined), len(parts))
    return joined


def run_on_master(prompt: dict, job_id: str, collector_id: str, parts: dict[int, dict[str, Any]], units: list,
                  orchestrator: Any) -> dict[str, Any]:
    """Expand into a graph that runs ``units`` here, then asks for the next step (MultiGPUAssemble)."""
    orchestrator.stash(job_id, collector_id, parts)
    graph: dict[str, Any] = {}
    previous: list | None = None
    round_id = f"{collector_id}.multigpu.{min(u.position for u in units)}"
    for unit in units:
        prefix = f"{collector_id}.multigpu.{unit.position}."
        nodes, links = build_master_rerun(prompt, collector_id, unit.seed_offset, prefix, unit.batch, unit.values)
        graph.update(nodes)
        part_inputs: dict[str, Any] = {**links, "position": unit.position}
        if previous is not None:
            part_inputs["parts"] = previous
        graph[prefix + "part"] = {"class_type": PART_CLASS, "inputs": part_inputs}
        previous = [prefix + "part", 0]
    assemble_id = f"{round_id}.assemble"
    graph[assemble_id] = {"class_type": ASSEMBLE_CLASS,
                          "inputs": {"parts": previous, "job_id": job_id, "collector": collector_id},
                          "override_display_id": collector_id}
    log.debug("Multi-GPU Collector %s: running unit(s) %s on the master", collector_id, [u.position for u in units])
    return {"result": tuple([assemble_id, index] for index in range(len(media.KINDS))), "expand": graph}


INTERNAL_NOTE = "Internal to ComfyUI-Distributed: the Collector adds it to a running prompt itself. Do not place it."


class MultiGPUUnitPart:
    """Internal: carries a unit run on the master to the assembly, with its position."""

    CATEGORY = "multigpu/internal"
    DESCRIPTION = INTERNAL_NOTE
    DEPRECATED = True  # ComfyUI's only way to hide a node: the frontend leaves deprecated nodes out of the library
    RETURN_TYPES = (PARTS_TYPE,)
    FUNCTION = "add"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        optional: dict[str, Any] = {kind.name: (kind.comfy_type,) for kind in media.KINDS}
        return {"required": {"position": ("INT", {"default": 1, "min": 0, "max": 1 << 20})},
                "optional": {**optional, "parts": (PARTS_TYPE,)}}

    def add(self, position: int, parts: tuple | None = None, **values: Any) -> tuple[tuple]:
        from .codecs import quantize_like_png

        own = {kind: value for kind, value in values.items() if value is not None}
        if "images" in own:  # as if it had travelled as a worker's PNG
            own["images"] = quantize_like_png(own["images"])
        return ((*(parts or ()), (position, own)),)


class MultiGPUAssemble:
    """Internal: joins the units the master just ran, then takes the Collector's next step."""

    CATEGORY = "multigpu/internal"
    DESCRIPTION = INTERNAL_NOTE
    DEPRECATED = True  # ComfyUI's only way to hide a node: the frontend leaves deprecated nodes out of the library
    RETURN_TYPES = tuple(kind.comfy_type for kind in media.KINDS)
    FUNCTION = "assemble"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"parts": (PARTS_TYPE,), "job_id": ("STRING", {"default": ""}),
                             "collector": ("STRING", {"default": ""})},
                "hidden": {"prompt": "PROMPT"}}

    def assemble(self, parts: tuple, job_id: str, collector: str, prompt: dict | None = None) -> Any:
        collected = dict(runtime.running().orchestrator.take_stash(job_id, collector))
        for position, values in parts:
            collected[position] = values
        return next_step(prompt or {}, job_id, collector, collected)


class MultiGPUValue:
    """One value per GPU: ``default`` for the master (and workers without their own), ``values`` by worker id."""

    CATEGORY = "multigpu"
    DESCRIPTION = (
        "Multi-GPU Value: gives each GPU its own value for whatever it feeds (a prompt text, a CFG, a LoRA "
        "strength, a checkpoint...). The master uses 'default'; 'values' holds a value per worker id, as JSON "
        "such as {\"1\": 6.5, \"2\": 8}; a worker without one uses 'default'. Every input it feeds must have the "
        "same type."
    )
    RETURN_TYPES = (ANY,)
    RETURN_NAMES = ("value",)
    FUNCTION = "value"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            DEFAULT_INPUT: ("STRING", {"default": "", "tooltip": "the master's value (and that of workers without "
                                                                 "their own)"}),
            VALUES_INPUT: ("STRING", {"default": "{}", "multiline": True,
                                      "tooltip": "JSON: a value per worker id, such as {\"1\": 6.5, \"2\": 8}"}),
        }, "hidden": {"unique_id": "UNIQUE_ID", "prompt": "PROMPT"}}

    @classmethod
    def VALIDATE_INPUTS(cls, **_inputs: Any) -> bool:
        return True  # checked when the prompt is planned, with what the node feeds

    def value(self, default: Any, values: str = "{}", unique_id: str | None = None,
              prompt: dict | None = None) -> tuple[Any]:
        node_id = str(unique_id)
        try:
            if prompt and node_id in prompt:
                return (value_for(prompt, node_id, MASTER, runtime.host().describe),)
            read_values({node_id: {"inputs": {DEFAULT_INPUT: default, VALUES_INPUT: values}}}, node_id)
        except WorkflowError as exc:
            raise RuntimeError(str(exc)) from None
        return (default,)


NODE_CLASS_MAPPINGS = {
    DISTRIBUTOR_CLASS: MultiGPUSeedDistributor,
    COLLECTOR_CLASS: MultiGPUCollector,
    PART_CLASS: MultiGPUUnitPart,
    ASSEMBLE_CLASS: MultiGPUAssemble,
    VALUE_CLASS: MultiGPUValue,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    DISTRIBUTOR_CLASS: "Multi-GPU Distributor",
    COLLECTOR_CLASS: "Multi-GPU Collector",
    PART_CLASS: "Multi-GPU unit part (internal)",
    ASSEMBLE_CLASS: "Multi-GPU assemble (internal)",
    VALUE_CLASS: "Multi-GPU Value",
}
