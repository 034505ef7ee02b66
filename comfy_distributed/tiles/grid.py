"""Tiles of one image: the grid a Tile Split cuts, each tile's crop, and the feathered merge.

A tile has a *core* (the part of the image it answers for; the cores partition the image) and a
*crop* (the core widened by the padding on every side, shifted to stay inside the image, always the
same size), which is what the per-tile pipeline sees. The merge is a weighted average of the
processed crops: a weight is 1 over a tile's core and falls off linearly over ``feather`` pixels
towards a crop edge that lies inside the image (an edge on the image's border keeps weight 1), so
neighbouring tiles fade into each other and leave no seam. The sum runs over the tiles in index
order once all of them are in, so the result never depends on which tile arrived first.

The geometry is plain Python (the master plans with it before any tensor exists); cropping and
merging take ComfyUI IMAGE tensors (batch, height, width, channels), torch imported lazily.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Sequence

from ..errors import WorkflowError

if TYPE_CHECKING:
    import torch

ALIGN = 8
"""Tile sizes and cores are multiples of this (a VAE works on 8 x 8 pixel blocks)."""
MAX_TILES = 4096
"""More tiles than this is a mistake (a 64 px tile over a huge image), refused before any work."""


@dataclass(frozen=True, slots=True)
class Span:
    """One axis of a tile: its core [core_start, core_end) and its crop [start, start + size)."""

    core_start: int
    core_end: int
    start: int
    size: int
    feather_before: bool
    """The crop's first edge lies inside the image, so the weight falls off towards it."""
    feather_after: bool


@dataclass(frozen=True, slots=True)
class Tile:
    index: int
    x: Span
    y: Span

    @property
    def box(self) -> tuple[int, int, int, int]:
        """The crop as (left, top, width, height) in the input image."""
        return self.x.start, self.y.start, self.x.size, self.y.size


@dataclass(frozen=True, slots=True)
class TileGrid:
    width: int
    height: int
    feather: int
    tiles: tuple[Tile, ...]

    @property
    def crop_size(self) -> tuple[int, int]:
        """(width, height) of every crop."""
        return self.tiles[0].x.size, self.tiles[0].y.size


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def _spans(length: int, tile: int, padding: int) -> list[Span]:
    count = max(1, math.ceil(length / tile))
    # cores of nearly equal size on the alignment (the last takes the remainder), so the work is even
    bounds = [0] + [min(length, round(i * length / count / ALIGN) * ALIGN) for i in range(1, count)] + [length]
    widest = max(end - start for start, end in zip(bounds, bounds[1:]))  # the tile, give or take the alignment
    size = min(_round_up(widest + 2 * padding, ALIGN), length)
    spans = []
    for core_start, core_end in zip(bounds, bounds[1:]):
        start = core_start - (size - (core_end - core_start)) // 2
        start = max(0, min(start, length - size))
        spans.append(Span(core_start, core_end, start, size, start > 0, start + size < length))
    return spans


def plan_tiles(width: int, height: int, tile_width: int, tile_height: int, padding: int,
               feather: int | None = None) -> TileGrid:
    """The grid for an image of ``width`` x ``height``; WorkflowError names a setting that cannot work."""
    for name, value in (("tile_width", tile_width), ("tile_height", tile_height)):
        if value < ALIGN or value % ALIGN:
            raise WorkflowError(f"{name} must be a multiple of {ALIGN} of at least {ALIGN}, not {value}")
    if padding < 0:
        raise WorkflowError(f"padding must be 0 or more, not {padding}")
    feather = padding if feather is None else feather
    if not 0 <= feather <= padding:
        raise WorkflowError(f"feather must be between 0 and the padding ({padding}), not {feather}")
    if width < 1 or height < 1:
        raise WorkflowError(f"the image to tile is empty ({width}x{height})")
    columns, rows = _spans(width, tile_width, padding), _spans(height, tile_height, padding)
    if len(columns) * len(rows) > MAX_TILES:
        raise WorkflowError(f"{len(columns)} x {len(rows)} tiles is more than {MAX_TILES}: use bigger tiles")
    tiles = tuple(Tile(r * len(columns) + c, x, y) for r, y in enumerate(rows) for c, x in enumerate(columns))
    return TileGrid(width, height, feather, tiles)


def crop(images: "torch.Tensor", tile: Tile) -> "torch.Tensor":
    """The tile's crop of every frame of an IMAGE batch: a contiguous copy, laid out in memory as ComfyUI's
    LoadImage lays out what a worker loads. The layout matters: an image made by a node that works channels
    first (ImageScale) is a view with channels-first strides, and convolutions on the two layouts differ in the
    last bit, so the master's tiles would differ from the workers' by a level here and there."""
    import torch

    left, top, width, height = tile.box
    return images[:, top:top + height, left:left + width, :].clone(memory_format=torch.contiguous_format)


MAX_TILE_SCALE = 8
"""Largest scale a worker's processed tile is taken at (an upscale model inside the pipeline: 2, 4)."""


def worker_tile(grid: TileGrid, frames: int, blobs: list[bytes], early: "torch.Tensor | None",
                reference: "torch.Tensor | None") -> "torch.Tensor":
    """A worker's processed tile (its PNG files, or what they gave as they arrived): decoded only once their
    headers say it is one of ``grid``'s tiles of ``frames`` frames, like ``reference`` (a tile already in, the
    master's or an earlier worker's: every tile must come out alike). MediaRefused otherwise."""
    from ..collector.codecs import MAX_PIXELS, MediaRefused, checked_sizes, decode_images

    wanted = None if reference is None else (int(reference.shape[0]), int(reference.shape[1]), int(reference.shape[2]))
    if early is not None:
        shape = (int(early.shape[0]), int(early.shape[1]), int(early.shape[2]))
    else:  # a tile as large as one already in is no bomb (the master's own pipeline made that one)
        sizes = checked_sizes(blobs, frames, MAX_PIXELS if wanted is None else max(MAX_PIXELS, wanted[1] * wanted[2]))
        shape = (len(sizes), *sizes[0]) if sizes else (0, 0, 0)
    problem = _worker_tile_problem(grid, frames, shape, wanted)
    if problem:
        raise MediaRefused(problem, "size_mismatch")
    return early if early is not None else decode_images(blobs)


def _worker_tile_problem(grid: TileGrid, frames: int, shape: tuple[int, int, int],
                         reference: tuple[int, int, int] | None) -> str | None:
    """Why a tile of ``shape`` (frames, height, width) cannot be one of ``grid``'s (None: it can); said to follow
    "worker 2 sent ..."."""
    count, height, width = shape
    if reference is not None and shape != reference:
        return (f"a tile of {count} frame(s) of {width}x{height}, the job's tiles are {reference[0]} frame(s) of "
                f"{reference[2]}x{reference[1]}")
    if count != frames:
        return f"a tile of {count} frame(s), the job's have {frames}"
    crop_width, crop_height = grid.crop_size
    scale = Fraction(width, crop_width)
    if Fraction(height, crop_height) != scale or not 0 < scale <= MAX_TILE_SCALE:
        return (f"a {width}x{height} tile, not its {crop_width}x{crop_height} crop at one scale of at most "
                f"{MAX_TILE_SCALE}")
    return None


def output_scale(grid: TileGrid, processed: "torch.Tensor") -> Fraction:
    """How much bigger the per-tile pipeline made a crop (an upscale model inside it: 2, 4); WorkflowError
    when the processed tile is not the crop at one scale that keeps every tile on whole pixels."""
    crop_width, crop_height = grid.crop_size
    height, width = int(processed.shape[1]), int(processed.shape[2])
    scale = Fraction(width, crop_width)
    if Fraction(height, crop_height) != scale or scale <= 0:
        raise WorkflowError(f"a processed tile is {width}x{height} but its crop was {crop_width}x{crop_height}: "
                            "the pipeline between Tile Split and Tile Merge must keep the tile's shape "
                            "(scaling both sides alike is fine); a VAE crops sizes that are not multiples of 8")
    for tile in grid.tiles:
        for value in (tile.x.start, tile.y.start, tile.x.core_start, tile.y.core_start, grid.width, grid.height):
            if (value * scale).denominator != 1:
                raise WorkflowError(f"a processed tile at {float(scale):g}x its crop puts the tiles between pixels; "
                                    "use a whole scale factor")
    return scale


def _ramp(span: Span, feather: int, scale: Fraction, device: "torch.device") -> "torch.Tensor":
    """The weight along one axis of a processed crop: 1, falling towards an edge inside the image."""
    import torch

    size = int(span.size * scale)
    weight = torch.ones(size, dtype=torch.float64, device=device)
    if feather <= 0:
        return weight
    centres = (torch.arange(size, dtype=torch.float64, device=device) + 0.5) / float(scale)  # in crop pixels
    if span.feather_before:
        weight = torch.minimum(weight, centres / feather)
    if span.feather_after:
        weight = torch.minimum(weight, (span.size - centres) / feather)
    return weight


def merge(grid: TileGrid, processed: Sequence["torch.Tensor"]) -> "torch.Tensor":
    """The full image from every processed tile (``processed[i]`` is tile i's, all frames), blended in
    index order: the same tiles give the same pixels whatever order they arrived in."""
    import torch

    if len(processed) != len(grid.tiles):
        raise WorkflowError(f"{len(processed)} processed tiles for a grid of {len(grid.tiles)}")
    first = processed[0]
    scale = output_scale(grid, first)
    frames, channels = int(first.shape[0]), int(first.shape[3])
    height, width = int(grid.height * scale), int(grid.width * scale)
    # float32 sums in tile order: the same tiles give the same bits; the rounding is far below a level of 8 bits
    total = torch.zeros((frames, height, width, channels), dtype=torch.float32, device=first.device)
    weights = torch.zeros((height, width), dtype=torch.float32, device=first.device)
    for tile, image in zip(grid.tiles, processed):
        if tuple(image.shape) != tuple(first.shape):
            raise WorkflowError(f"processed tile {tile.index + 1} is {_shape(image)}, tile 1 was {_shape(first)}: "
                                "every tile must come out alike")
        weight = torch.outer(_ramp(tile.y, grid.feather, scale, first.device),
                             _ramp(tile.x, grid.feather, scale, first.device)).to(torch.float32)
        left, top = int(tile.x.start * scale), int(tile.y.start * scale)
        rows, cols = slice(top, top + weight.shape[0]), slice(left, left + weight.shape[1])
        total[:, rows, cols, :].addcmul_(image.to(torch.float32), weight[None, :, :, None])
        weights[rows, cols] += weight
    return total.div_(weights[None, :, :, None]).to(first.dtype)


def _shape(image: "torch.Tensor") -> str:
    frames, height, width, channels = (int(n) for n in image.shape)
    return f"{frames} frame(s) of {width}x{height}x{channels}"
