"""Multi-GPU Tiled Upscale: upscale, then an img2img pass over tiles shared by every GPU, as one node.

It expands (ComfyUI graph expansion) into the nodes a user would place by hand: an optional model upscale, a
resize to exactly ``upscale_by``, then Tile Split -> VAE Encode -> KSampler -> VAE Decode -> Tile Merge, so the
tiles run as a tile job like any other (:mod:`.nodes`, :mod:`.jobs`).
"""

from __future__ import annotations

from typing import Any

from ..host import runtime
from ..graph.workflow import TILED_UPSCALE_CLASS
from .graph import TILE_MERGE_CLASS, TILE_SPLIT_CLASS
from .expanded import size_input


class MultiGPUTiledUpscale:
    """Upscale, then an img2img pass over tiles shared by every GPU: Split -> VAE Encode -> KSampler -> VAE Decode
    -> Merge, made by graph expansion (the same machinery as placing those nodes by hand)."""

    CATEGORY = "multigpu"
    DESCRIPTION = (
        "Multi-GPU Tiled Upscale: upscales the image (with an upscale model when one is connected, then to exactly "
        "upscale_by), and refines it tile by tile with the sampler, the tiles shared by the master and every enabled "
        "worker. The inputs are Ultimate SD Upscale's; the result does not depend on which GPU ran which tile."
    )
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    FUNCTION = "upscale"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        samplers, schedulers = runtime.host().sampler_choices()
        return {
            "required": {
                "image": ("IMAGE",), "model": ("MODEL",), "positive": ("CONDITIONING",),
                "negative": ("CONDITIONING",), "vae": ("VAE",),
                "upscale_by": ("FLOAT", {"default": 2.0, "min": 0.05, "max": 8.0, "step": 0.05}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True}),
                "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
                "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
                "sampler_name": (samplers,), "scheduler": (schedulers,),
                "denoise": ("FLOAT", {"default": 0.2, "min": 0.0, "max": 1.0, "step": 0.01}),
                "tile_width": size_input(512, 8192, "width of a tile's core (multiple of 8)"),
                "tile_height": size_input(512, 8192, "height of a tile's core (multiple of 8)"),
                "padding": size_input(32, 1024, "pixels of context added on every side of a tile", minimum=0),
                "mask_blur": size_input(8, 1024, "pixels over which tiles fade into each other (at most the padding)",
                                   minimum=0),
            },
            "optional": {"upscale_model": ("UPSCALE_MODEL",)},
            "hidden": {"unique_id": "UNIQUE_ID", "dynprompt": "DYNPROMPT"},
        }

    def upscale(self, image: Any, upscale_by: float, unique_id: str | None = None, dynprompt: Any = None,
                **settings: Any) -> dict[str, Any]:
        node_id = str(unique_id)
        if dynprompt is None:
            raise RuntimeError("Multi-GPU Tiled Upscale: this ComfyUI gives nodes no DYNPROMPT; it is too old")
        links = dynprompt.get_node(node_id).get("inputs", {})
        height, width = int(image.shape[1]), int(image.shape[2])
        target = (max(8, round(width * upscale_by)), max(8, round(height * upscale_by)))
        p = f"{node_id}.multigpu.upscale."
        graph: dict[str, Any] = {}
        source = links["image"]
        if settings.get("upscale_model") is not None:
            graph[p + "model_upscale"] = {"class_type": "ImageUpscaleWithModel",
                                          "inputs": {"upscale_model": links["upscale_model"], "image": source}}
            source = [p + "model_upscale", 0]
        graph[p + "resize"] = {"class_type": "ImageScale", "inputs": {
            "image": source, "upscale_method": "lanczos", "width": target[0], "height": target[1], "crop": "disabled"}}
        graph[p + "split"] = {"class_type": TILE_SPLIT_CLASS, "inputs": {
            "image": [p + "resize", 0], "tile_width": settings["tile_width"], "tile_height": settings["tile_height"],
            "padding": settings["padding"], "feather": min(settings["mask_blur"], settings["padding"])}}
        graph[p + "encode"] = {"class_type": "VAEEncode", "inputs": {"pixels": [p + "split", 0], "vae": links["vae"]}}
        graph[p + "sample"] = {"class_type": "KSampler", "inputs": {
            "model": links["model"], "positive": links["positive"], "negative": links["negative"],
            "latent_image": [p + "encode", 0], "seed": links["seed"], "steps": links["steps"], "cfg": links["cfg"],
            "sampler_name": links["sampler_name"], "scheduler": links["scheduler"], "denoise": links["denoise"]}}
        graph[p + "decode"] = {"class_type": "VAEDecode", "inputs": {"samples": [p + "sample", 0], "vae": links["vae"]}}
        graph[p + "merge"] = {"class_type": TILE_MERGE_CLASS, "inputs": {"tile": [p + "decode", 0]},
                              "override_display_id": node_id}
        return {"result": ([p + "merge", 0],), "expand": graph}


NODE_CLASS_MAPPINGS = {TILED_UPSCALE_CLASS: MultiGPUTiledUpscale}
NODE_DISPLAY_NAME_MAPPINGS = {TILED_UPSCALE_CLASS: "Multi-GPU Tiled Upscale"}
