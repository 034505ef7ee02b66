"""What a Multi-GPU Tile Merge expands into on the master, and what it shares with the user's tile nodes.

The Merge (:mod:`.nodes`) does the work on the master. Its ``tile`` input is lazy and never asked for, so the
per-tile pipeline never runs on the whole image; instead the Merge expands (ComfyUI graph expansion) into:

- ``MultiGPUTileStart``, fed the Split's own inputs and every image from outside that the pipeline takes: cuts
  the image into tiles (``grid.plan_tiles``), and each of those images that has the image's size the same way
  (a tile ControlNet's hint), quantizes each crop as an 8-bit PNG would, and starts a tile job with the enabled
  workers (:func:`.jobs.start_tiles`);
- ``MultiGPUTileStep``: asks the job what the master does next. Tiles for the master expand into a copy of the
  pipeline per tile fed by a ``MultiGPUTileSource`` (the tile's crop), gathered by ``MultiGPUUnitPart`` nodes,
  then another Step; once every tile is in, the Step blends them (``grid.merge``) and outputs the image.

On a worker neither node runs: its copy holds a core ``LoadImage`` of the tile's crop and a core
``PreviewImage`` (``graph.build_tile_prompt``). Torch is imported lazily so the package imports without it.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from .. import events
from ..host import runtime
from ..errors import ConfigError, JobError, WorkflowError
from ..collector.nodes import INTERNAL_NOTE, PART_CLASS, PARTS_TYPE
from .graph import (
    TilePair,
    build_master_tile,
    outside_inputs,
    tile_pairs,
    tile_pipeline,
)
from .grid import ALIGN, TileGrid, crop, merge, plan_tiles, worker_tile
from .jobs import start_tiles

if TYPE_CHECKING:
    from ..collector.orchestrator import Orchestrator

log = logging.getLogger("comfy_distributed")

START_CLASS = "MultiGPUTileStart"
STEP_CLASS = "MultiGPUTileStep"
SOURCE_CLASS = "MultiGPUTileSource"
TILES_TYPE = "MULTIGPU_TILES"
SPLIT_SETTINGS = ("tile_width", "tile_height", "padding", "feather")


def size_input(default: int, maximum: int, tooltip: str, minimum: int = ALIGN) -> tuple[str, dict]:
    return ("INT", {"default": default, "min": minimum, "max": maximum, "step": ALIGN, "tooltip": tooltip})


def split_inputs() -> dict[str, Any]:
    """The Split's inputs, which the Start is fed the same way."""
    return {
        "image": ("IMAGE",),
        "tile_width": size_input(512, 8192, "width of a tile's core (multiple of 8)"),
        "tile_height": size_input(512, 8192, "height of a tile's core (multiple of 8)"),
        "padding": size_input(32, 1024, "pixels of context added on every side of a tile", minimum=0),
        "feather": size_input(32, 1024, "pixels over which neighbouring tiles fade into each other (at most the "
                                   "padding)", minimum=0),
    }


HINT_INPUT = "image_"
"""Start's inputs (``image_1``...) that take the images from outside the pipeline: cropped per tile when they have
the Split's image's size, shared otherwise. Not declared (their number varies): ComfyUI passes a linked input
whatever its name."""


def link_key(value: Any) -> list | None:
    return [str(value[0]), int(value[1])] if isinstance(value, list) and len(value) == 2 else None


def _natural(name: str) -> tuple:
    digits = "".join(c for c in name if c.isdigit())
    return (len(digits), digits, name)


def output_type(prompt: dict[str, Any], key: tuple[str, int]) -> str | None:
    """The type of a node's output, from ComfyUI's node classes (None outside ComfyUI or when unknown)."""
    node_class = runtime.host().node_class(prompt.get(key[0], {}).get("class_type"))
    try:
        types = tuple(node_class.RETURN_TYPES) if node_class is not None else ()
    except Exception:  # a node pack's class that cannot say: its outputs are shared, never cropped
        return None
    return str(types[key[1]]) if 0 <= key[1] < len(types) else None


def whole_prompt(dynprompt: Any) -> dict[str, Any]:
    """The prompt as it stands now: the user's nodes and those added by expansions (a Tiled Upscale's)."""
    if dynprompt is None:
        raise RuntimeError("Multi-GPU Tile Merge: this ComfyUI gives nodes no DYNPROMPT; it is too old")
    return {node_id: dynprompt.get_node(node_id) for node_id in dynprompt.all_node_ids()}


def pair_of(prompt: dict[str, Any], merge_id: str) -> TilePair:
    try:
        pairs = tile_pairs(prompt)
    except WorkflowError as exc:
        raise RuntimeError(str(exc)) from None
    for pair in pairs:
        if pair.merge == merge_id:
            return pair
    raise RuntimeError(f"Multi-GPU Tile Merge {merge_id}: not found in the prompt")


def grid_of(image: Any, tile_width: int, tile_height: int, padding: int, feather: int, who: str) -> TileGrid:
    if image is None or getattr(image, "ndim", 0) != 4:
        raise RuntimeError(f"{who}: expected an IMAGE batch (frames, height, width, channels)")
    try:
        return plan_tiles(int(image.shape[2]), int(image.shape[1]), tile_width, tile_height, padding, feather)
    except WorkflowError as exc:
        raise RuntimeError(f"{who}: {exc}") from None


def quantized_crops(image: Any, grid: TileGrid) -> list[Any]:
    """Each tile's crop as a worker loads it: through an 8-bit PNG, so the master's tiles match the workers'."""
    from ..collector.codecs import quantize_like_png

    return [quantize_like_png(crop(image, tile)) for tile in grid.tiles]


def encode_crop(frames: Any) -> bytes:
    """A crop (every frame) as one PNG; several frames make an animated PNG, which ComfyUI's LoadImage reads
    back as a batch. Quick to write (compression level 1); the pixels are exact."""
    import numpy as np
    from PIL import Image

    import torch

    pixels = (frames * 255.0).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
    images = [Image.fromarray(np.ascontiguousarray(frame)) for frame in pixels]
    buffer = io.BytesIO()
    if len(images) == 1:
        images[0].save(buffer, format="PNG", compress_level=1)
    else:
        images[0].save(buffer, format="PNG", compress_level=1, save_all=True, append_images=images[1:])
    return buffer.getvalue()


@dataclass(slots=True)
class TileRun:
    """What the Start node hands its Steps: the grid, the crops as the master runs them, the job if any."""

    merge: str
    pair: TilePair
    grid: TileGrid
    crops: list[Any]
    job_id: str | None
    hints: dict[tuple[str, int], list[Any]]
    """Images from outside the pipeline cropped per tile, by the output they come from: each tile's crop."""
    received: dict[int, Any] = field(default_factory=dict)
    """The tiles in once the job ended, kept while the master runs those a worker sent wrong (see ``_job_step``)."""

    def hint_links(self, position: int, source_prefix: str, start_link: list) -> tuple[dict, dict]:
        """For the master's copy of tile ``position``: Source nodes giving its crop of each cropped image, and the
        links the pipeline takes them from."""
        nodes: dict[str, Any] = {}
        links: dict[tuple[str, int], list] = {}
        for index, key in enumerate(self.hints, start=1):
            node_id = f"{source_prefix}{index}"
            nodes[node_id] = {"class_type": SOURCE_CLASS,
                              "inputs": {"tiles": start_link, "position": position, "hint": index}}
            links[key] = [node_id, 0]
        return nodes, links


class InternalNode:
    """A node the Merge expands into: hidden from the node library, as the Collector's internal nodes."""

    CATEGORY = "multigpu/internal"
    DESCRIPTION = INTERNAL_NOTE
    DEPRECATED = True


class MultiGPUTileStart(InternalNode):
    """Internal: cuts the image into tiles and shares them out (see the module doc)."""

    RETURN_TYPES = (TILES_TYPE,)
    FUNCTION = "start"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {**split_inputs(), "merge": ("STRING", {"default": ""})},
                "hidden": {"unique_id": "UNIQUE_ID", "dynprompt": "DYNPROMPT"}}

    @classmethod
    def IS_CHANGED(cls, **_inputs: Any) -> float:
        return float("nan")  # never from ComfyUI's cache: each run is a new job (an old job's id is gone)

    def start(self, image: Any, tile_width: int, tile_height: int, padding: int, feather: int, merge: str,
              unique_id: str | None = None, dynprompt: Any = None, **images: Any) -> tuple[TileRun]:
        who = f"Multi-GPU Tile Merge {merge}"
        prompt = whole_prompt(dynprompt)
        pair = pair_of(prompt, merge)
        grid = grid_of(image, tile_width, tile_height, padding, feather, who)
        crops = quantized_crops(image, grid)
        own = prompt.get(str(unique_id), {}).get("inputs", {})
        same_size: dict[tuple[str, int], Any] = {}  # the outside images to crop per tile; None: the tile itself
        tile_key = link_key(own.get("image"))
        if tile_key is not None and tuple(tile_key) in outside_inputs(prompt, pair):
            same_size[(tile_key[0], tile_key[1])] = None
        for name, value in sorted(images.items(), key=lambda item: _natural(item[0])):
            link = link_key(own.get(name))
            if name.startswith(HINT_INPUT) and link is not None and getattr(value, "ndim", 0) == 4 \
                    and tuple(value.shape[1:3]) == tuple(image.shape[1:3]):
                same_size[(link[0], link[1])] = value
        hints: dict[tuple[str, int], list[Any]] = {}
        index: dict[tuple[str, int], int] = {}  # which of a tile's files holds the crop: 0 is the tile
        cropped: list[list[Any]] = [crops]
        for key in tile_pipeline(prompt, pair, same_size)[1]:  # those not all of whose uses are made from crops
            if same_size[key] is None:
                hints[key], index[key] = crops, 0
            else:
                hints[key], index[key] = quantized_crops(same_size[key], grid), len(cropped)
                cropped.append(hints[key])
        job_id = None
        if runtime.current is not None:
            files = [[partial(encode_crop, c) for c in each] for each in cropped]  # encoded as each tile leaves
            try:
                job = start_tiles(runtime.current.orchestrator, prompt, pair, [list(f) for f in zip(*files)],
                                  int(image.shape[0]), hints=index)
            except (WorkflowError, JobError, ConfigError) as exc:  # ConfigError: the file broke after queueing
                raise RuntimeError(f"{who}: {exc}") from None
            job_id = job.job_id if job is not None else None
        log.info("%s: %d tile(s) of %dx%d%s%s", who, len(grid.tiles), *grid.crop_size,
                 f", {len(cropped) - 1} more image(s) cropped per tile" if len(cropped) > 1 else "",
                 " shared with the workers" if job_id else " on the master")
        return (TileRun(merge, pair, grid, crops, job_id, hints),)


class MultiGPUTileSource(InternalNode):
    """Internal: one tile's crop, as the master's copy of the pipeline gets it."""

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "source"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"tiles": (TILES_TYPE,), "position": ("INT", {"default": 1, "min": 1, "max": 1 << 20})},
                "optional": {"hint": ("INT", {"default": 0, "min": 0, "max": 1 << 10})}}

    def source(self, tiles: TileRun, position: int, hint: int = 0) -> tuple:
        """The tile's crop (``hint`` 0), or its crop of the ``hint``-th image cropped per tile."""
        if hint:
            return (list(tiles.hints.values())[hint - 1][position - 1],)
        return (tiles.crops[position - 1],)


class MultiGPUTileStep(InternalNode):
    """Internal: the master's next step for a tile job: run tiles here, or blend them all (see the module doc)."""

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "step"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"tiles": (TILES_TYPE,)}, "optional": {"parts": (PARTS_TYPE,)},
                "hidden": {"unique_id": "UNIQUE_ID", "dynprompt": "DYNPROMPT"}}

    def step(self, tiles: TileRun, parts: tuple | None = None, unique_id: str | None = None,
             dynprompt: Any = None) -> Any:
        have = {**tiles.received, **{position: values["images"] for position, values in (parts or ())}}
        if tiles.job_id is None:
            todo = [p for p in range(1, len(tiles.grid.tiles) + 1) if p not in have]
            if todo:
                return _run_here(whole_prompt(dynprompt), tiles, todo, str(unique_id), parts)
            return (_blend(tiles, have),)
        return _job_step(whole_prompt(dynprompt), tiles, have, str(unique_id), parts)


def _job_step(prompt: dict, tiles: TileRun, have: dict[int, Any], step_id: str, parts: tuple | None) -> Any:
    """The job's next step for the master; once it ended, its tiles checked and blended. A tile a worker sent
    wrong (not its size, not a PNG...) is run on the master instead: the job is over, the tile job goes on here."""
    assert runtime.current is not None and tiles.job_id is not None
    orchestrator: Orchestrator = runtime.current.orchestrator
    host = runtime.current.host
    try:
        step = orchestrator.master_step(tiles.job_id, tiles.merge, set(have), host.interrupted)
    except JobError as exc:
        host.raise_if_interrupted()
        raise RuntimeError(str(exc)) from None
    if isinstance(step, list):
        return _run_here(prompt, tiles, [unit.position for unit in step], step_id, parts)
    refused = _take_worker_tiles(tiles, step.outputs, have, host.notify)
    if refused:
        tiles.received, tiles.job_id = dict(have), None
        return _run_here(prompt, tiles, refused, step_id, parts)
    missing = [p for p in range(1, len(tiles.grid.tiles) + 1) if p not in have]
    if missing:  # a tile job never skips a tile; this would be a bug, said plainly rather than a hole in the image
        raise RuntimeError(f"Multi-GPU Tile Merge {tiles.merge}: tile(s) {missing} came back from nowhere")
    return (_blend(tiles, have),)


def _take_worker_tiles(tiles: TileRun, outputs: list, have: dict[int, Any], notify: Any) -> list[int]:
    """Each worker tile into ``have``, checked from its headers before it is decoded; the positions refused."""
    from ..collector.codecs import MediaRefused

    refused = []
    for unit, files in sorted(outputs, key=lambda item: item[0].position):
        reference = next(iter(have.values()), None)
        try:
            have[unit.position] = worker_tile(tiles.grid, int(tiles.crops[0].shape[0]), files["images"],
                                              unit.decoded.get(tiles.merge), reference)
        except MediaRefused as exc:
            message = f"sent {exc}; the master runs its tile"
            notify(*events.worker_failed(unit.worker_id, unit.name, exc.reason, message, rerun=True,
                                         job_id=tiles.job_id, unit=unit.position))
            log.warning("Multi-GPU Tile Merge %s: worker %s: %s", tiles.merge, unit.name, message)
            refused.append(unit.position)
    return refused


def _run_here(prompt: dict, tiles: TileRun, positions: list[int], step_id: str, parts: tuple | None) -> dict:
    """Expand into the pipeline once per tile at ``positions``, then the next Step."""
    graph: dict[str, Any] = {}
    start_link = _step_input(prompt, step_id, "tiles")
    previous = _step_input(prompt, step_id, "parts") if parts else None  # the tiles this master ran so far
    for position in positions:
        prefix = f"{tiles.merge}.multigpu.tile.{position}."
        source = prefix + "source"
        graph[source] = {"class_type": SOURCE_CLASS, "inputs": {"tiles": start_link, "position": position}}
        hint_nodes, hint_links = tiles.hint_links(position, prefix + "hint.", start_link)
        graph.update(hint_nodes)
        nodes, link = build_master_tile(prompt, tiles.pair, prefix, [source, 0], hint_links)
        graph.update(nodes)
        part_inputs: dict[str, Any] = {"position": position, "images": link}
        if previous is not None:
            part_inputs["parts"] = previous
        graph[prefix + "part"] = {"class_type": PART_CLASS, "inputs": part_inputs}
        previous = [prefix + "part", 0]
    next_step = f"{tiles.merge}.multigpu.tiles.step.{min(positions)}"
    step_inputs: dict[str, Any] = {"tiles": start_link, "parts": previous}
    graph[next_step] = {"class_type": STEP_CLASS, "inputs": step_inputs, "override_display_id": tiles.merge}
    return {"result": ([next_step, 0],), "expand": graph}


def _step_input(prompt: dict, step_id: str, name: str) -> list:
    """The link feeding a Step's input, as the (dynamic) prompt holds it."""
    link = prompt.get(step_id, {}).get("inputs", {}).get(name)
    if not (isinstance(link, list) and len(link) == 2):
        raise RuntimeError(f"Multi-GPU: tile step {step_id} has no link on its '{name}' input")
    return list(link)


def _blend(tiles: TileRun, have: dict[int, Any]) -> Any:
    try:
        return merge(tiles.grid, [have[p] for p in range(1, len(tiles.grid.tiles) + 1)])
    except WorkflowError as exc:
        raise RuntimeError(f"Multi-GPU Tile Merge {tiles.merge}: {exc}") from None
