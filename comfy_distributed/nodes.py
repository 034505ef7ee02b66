"""The two nodes users place: Multi-GPU Distributor (seed) and Multi-GPU Collector (images).

On the master they run inside ComfyUI; on workers they never run, because each worker
receives a copy in which the Distributor is a literal seed and the Collector a core
``PreviewImage``. Torch is imported lazily so the package imports without it.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from . import runtime
from .errors import JobError
from .workflow import COLLECTOR_CLASS, DISTRIBUTOR_CLASS, JOB_INPUT, SEED_MODULUS

log = logging.getLogger("comfy_distributed")


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
        return {"required": {"images": ("IMAGE",)}, "hidden": {"unique_id": "UNIQUE_ID", "prompt": "PROMPT"}}

    def collect(self, images: Any, unique_id: str | None = None, prompt: dict | None = None) -> tuple[Any]:
        job_id = ((prompt or {}).get(str(unique_id)) or {}).get("inputs", {}).get(JOB_INPUT)
        orchestrator = runtime.orchestrator
        if not job_id or orchestrator is None:
            return (images,)  # no enabled workers: exactly as without this node
        try:
            result = orchestrator.collect(job_id, str(unique_id), runtime.interrupted)
        except JobError as exc:
            runtime.raise_if_interrupted()
            raise RuntimeError(str(exc)) from None
        return (merge_results(images, result, str(unique_id), runtime.notify),)


def merge_results(images: Any, result: Any, collector_id: str, notify: Callable[[str, dict], None]) -> Any:
    """The master's batch followed by each worker's, skipping (and reporting) what cannot join."""
    import torch

    from .images import decode_batch, same_frame

    parts = [images]
    problems = [f"{share.name}: {share.error or 'no result'}" for share in result.failures]
    for share, blobs in result.images:
        batch = decode_batch(blobs).to(device=images.device, dtype=images.dtype)
        if not same_frame(images, batch):
            message = (f"images are {tuple(batch.shape[1:3])} (height, width), the master's "
                       f"{tuple(images.shape[1:3])}; left out")
            problems.append(f"{share.name}: {message}")
            notify("multigpu.worker_failed", {"worker_id": share.worker.id, "worker": share.name,
                                              "reason": "size_mismatch", "message": f"Worker {share.name}: {message}"})
            continue
        parts.append(batch)
    merged = torch.cat(parts, dim=0)
    if problems:
        log.warning("Multi-GPU Collector %s: %d images collected; missing: %s", collector_id,
                    merged.shape[0], "; ".join(problems))
    else:
        log.info("Multi-GPU Collector %s: %d images from %d participants", collector_id, merged.shape[0], len(parts))
    return merged


NODE_CLASS_MAPPINGS = {
    DISTRIBUTOR_CLASS: MultiGPUSeedDistributor,
    COLLECTOR_CLASS: MultiGPUCollector,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    DISTRIBUTOR_CLASS: "Multi-GPU Distributor",
    COLLECTOR_CLASS: "Multi-GPU Collector",
}
