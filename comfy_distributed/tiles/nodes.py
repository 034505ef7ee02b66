"""The tile nodes users place: Multi-GPU Tile Split and Multi-GPU Tile Merge.

Everything between a Split and its Merge runs once per tile, the tiles shared out over the master and every
enabled worker. The Merge does the work: it expands into the internal nodes of :mod:`.expanded`, which cut the
image, run a tile job and blend the tiles back. This module also lists every tile node class for ComfyUI.
"""

from __future__ import annotations

from typing import Any

from ..errors import WorkflowError
from .expanded import (
    HINT_INPUT,
    SOURCE_CLASS,
    SPLIT_SETTINGS,
    START_CLASS,
    STEP_CLASS,
    MultiGPUTileSource,
    MultiGPUTileStart,
    MultiGPUTileStep,
    grid_of,
    link_key,
    output_type,
    pair_of,
    quantized_crops,
    split_inputs,
    whole_prompt,
)
from .graph import TILE_MERGE_CLASS, TILE_SPLIT_CLASS, outside_inputs, tile_pairs


class MultiGPUTileSplit:
    """Image in, one tile out: marks where the per-tile pipeline begins (its Merge does the work)."""

    CATEGORY = "multigpu"
    DESCRIPTION = (
        "Multi-GPU Tile Split: everything between this node and a Multi-GPU Tile Merge runs once per tile, the "
        "tiles shared out over the master and every enabled worker. Each tile is a crop of the image, padded on "
        "every side; the Merge blends them back, fading over 'feather' pixels. A batch of frames is tiled as a "
        "whole (a tile carries every frame)."
    )
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("tile",)
    FUNCTION = "split"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": split_inputs(), "hidden": {"dynprompt": "DYNPROMPT"}}

    def split(self, image: Any, tile_width: int, tile_height: int, padding: int, feather: int,
              dynprompt: Any = None) -> tuple:
        """The Merge never runs its Split: this runs only when a node outside the pipeline takes the tile output
        (it gets the first tile, a preview of the cut), or when the Split has no Merge (refused, saying so)."""
        if dynprompt is not None:
            try:
                tile_pairs(whole_prompt(dynprompt))
            except WorkflowError as exc:
                raise RuntimeError(str(exc)) from None
        grid = grid_of(image, tile_width, tile_height, padding, feather, "Multi-GPU Tile Split")
        return (quantized_crops(image, grid)[0],)


class MultiGPUTileMerge:
    """The processed tiles in, the whole image out."""

    CATEGORY = "multigpu"
    DESCRIPTION = (
        "Multi-GPU Tile Merge: blends the tiles of the pipeline that starts at its Multi-GPU Tile Split into the "
        "whole image. The result is the same pixel for pixel whatever GPUs ran which tile."
    )
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    FUNCTION = "merge"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"tile": ("IMAGE", {"lazy": True, "tooltip": "the end of the per-tile pipeline"})},
                "hidden": {"unique_id": "UNIQUE_ID", "dynprompt": "DYNPROMPT"}}

    def check_lazy_status(self, tile: Any = None, unique_id: str | None = None, dynprompt: Any = None) -> list[str]:
        return []  # the pipeline runs per tile, in the graph this node expands into, never on the whole image

    def merge(self, tile: Any = None, unique_id: str | None = None, dynprompt: Any = None) -> dict[str, Any]:
        merge_id = str(unique_id)
        prompt = whole_prompt(dynprompt)
        pair = pair_of(prompt, merge_id)
        split = prompt[pair.split].get("inputs", {})
        prefix = f"{merge_id}.multigpu.tiles."
        start, step = prefix + "start", prefix + "step"
        images = [key for key in outside_inputs(prompt, pair) if output_type(prompt, key) == "IMAGE"
                  and list(key) != link_key(split.get("image"))]  # the Split's own image is the tile
        graph = {
            start: {"class_type": START_CLASS, "inputs": {
                **{name: split.get(name) for name in ("image", *SPLIT_SETTINGS)}, "merge": merge_id,
                **{f"{HINT_INPUT}{i}": list(key) for i, key in enumerate(images, start=1)}}},
            step: {"class_type": STEP_CLASS, "inputs": {"tiles": [start, 0]}, "override_display_id": merge_id},
        }
        return {"result": ([step, 0],), "expand": graph}


NODE_CLASS_MAPPINGS = {
    TILE_SPLIT_CLASS: MultiGPUTileSplit,
    TILE_MERGE_CLASS: MultiGPUTileMerge,
    START_CLASS: MultiGPUTileStart,
    SOURCE_CLASS: MultiGPUTileSource,
    STEP_CLASS: MultiGPUTileStep,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    TILE_SPLIT_CLASS: "Multi-GPU Tile Split",
    TILE_MERGE_CLASS: "Multi-GPU Tile Merge",
    START_CLASS: "Multi-GPU tile start (internal)",
    SOURCE_CLASS: "Multi-GPU tile source (internal)",
    STEP_CLASS: "Multi-GPU tile step (internal)",
}
