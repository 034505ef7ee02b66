"""Tile geometry and the feathered merge (tiles.py)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from comfy_distributed.errors import WorkflowError
from comfy_distributed.collector.codecs import quantize_like_png
from comfy_distributed.tiles.grid import ALIGN, crop, merge, plan_tiles


def gradient(width: int, height: int, frames: int = 1) -> torch.Tensor:
    """A smooth image: red along x, green along y, blue along the diagonal, a shift per frame."""
    ys, xs = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    image = torch.stack([xs, ys, (xs + ys) / 2], dim=-1)
    return torch.stack([(image + f * 0.05).clamp(0, 1) for f in range(frames)])


@settings(max_examples=200, deadline=None)
@given(width=st.integers(1, 3000), height=st.integers(1, 3000), tile=st.sampled_from([64, 128, 256, 512, 1024]),
       padding=st.sampled_from([0, 8, 16, 32, 64]))
def test_cores_partition_the_image_and_crops_stay_inside_it(width, height, tile, padding):
    grid = plan_tiles(width, height, tile, tile, padding)
    crop_width, crop_height = grid.crop_size
    assert crop_width <= width and crop_height <= height
    assert crop_width == width or crop_width % ALIGN == 0
    covered = torch.zeros((height, width), dtype=torch.int32)
    for index, t in enumerate(grid.tiles):
        assert t.index == index and t.box[2:] == (crop_width, crop_height)
        assert 0 <= t.x.start and t.x.start + t.x.size <= width and 0 <= t.y.start and t.y.start + t.y.size <= height
        assert t.x.start <= t.x.core_start < t.x.core_end <= t.x.start + t.x.size  # the crop holds the core
        assert t.y.start <= t.y.core_start < t.y.core_end <= t.y.start + t.y.size
        covered[t.y.core_start:t.y.core_end, t.x.core_start:t.x.core_end] += 1
    assert bool((covered == 1).all())


def test_a_1024_image_with_512_tiles_is_four_tiles_of_576():
    grid = plan_tiles(1024, 1024, 512, 512, 32)
    assert len(grid.tiles) == 4 and grid.crop_size == (576, 576)
    assert [t.box for t in grid.tiles] == [(0, 0, 576, 576), (448, 0, 576, 576), (0, 448, 576, 576),
                                           (448, 448, 576, 576)]
    first = grid.tiles[0]
    assert (first.x.feather_before, first.x.feather_after) == (False, True)


@pytest.mark.parametrize("width, height, tile, padding", [(256, 256, 128, 32), (1000, 600, 256, 32),
                                                          (515, 301, 128, 16), (96, 96, 512, 32), (640, 480, 64, 0)])
def test_a_gradient_through_an_identity_pipeline_comes_back_without_a_seam(width, height, tile, padding):
    """The seam test: every pixel within one level of the input, nowhere shifted."""
    image = gradient(width, height, frames=2)
    grid = plan_tiles(width, height, tile, tile, padding)
    tiles = [quantize_like_png(crop(image, t)) for t in grid.tiles]  # as they travel, as 8-bit PNG
    merged = merge(grid, tiles)
    assert merged.shape == image.shape
    assert float((merged - image).abs().max()) <= 1 / 255 + 1e-6


def test_a_tile_that_differs_fades_into_its_neighbours():
    """Brightening one tile changes the image smoothly across the overlap, never in one step."""
    image = torch.full((1, 256, 256, 3), 0.5)
    grid = plan_tiles(256, 256, 128, 128, 32)
    tiles = [crop(image, t) for t in grid.tiles]
    tiles[0] = tiles[0] + 0.2
    row = merge(grid, tiles)[0, 60, :, 0]
    steps = (row[1:] - row[:-1]).abs()
    assert float(steps.max()) <= 0.2 / 32 + 1e-6  # spread over the feather, 32 px
    assert float(row[0]) == pytest.approx(0.7) and float(row[-1]) == pytest.approx(0.5)


def test_the_merge_follows_an_upscale_inside_the_pipeline():
    image = gradient(300, 200)
    grid = plan_tiles(300, 200, 128, 128, 16)
    upscaled = [torch.nn.functional.interpolate(crop(image, t).movedim(-1, 1), scale_factor=2,
                                                mode="nearest").movedim(1, -1) for t in grid.tiles]
    merged = merge(grid, upscaled)
    whole = torch.nn.functional.interpolate(image.movedim(-1, 1), scale_factor=2, mode="nearest").movedim(1, -1)
    assert merged.shape == (1, 400, 600, 3)
    assert float((merged - whole).abs().max()) < 1e-5


def test_a_tile_of_another_shape_is_refused_with_the_sizes():
    grid = plan_tiles(256, 256, 128, 128, 32)
    tiles = [torch.zeros((1, 192, 184, 3)) for _ in grid.tiles]
    with pytest.raises(WorkflowError, match="184x192 but its crop was 192x192"):
        merge(grid, tiles)
    tiles = [torch.zeros((1, 192, 192, 3)) for _ in grid.tiles]
    tiles[2] = torch.zeros((2, 192, 192, 3))
    with pytest.raises(WorkflowError, match="processed tile 3 is 2 frame"):
        merge(grid, tiles)


@pytest.mark.parametrize("kwargs, message", [
    ({"tile_width": 100}, "tile_width must be a multiple of 8"),
    ({"tile_height": 0}, "tile_height must be a multiple of 8"),
    ({"padding": -8}, "padding must be 0 or more"),
    ({"feather": 64}, r"feather must be between 0 and the padding \(32\)"),
    ({"width": 100000, "tile_width": 8, "tile_height": 8}, "tiles is more than"),
])
def test_settings_that_cannot_work_are_refused_by_name(kwargs, message):
    args = {"width": 512, "height": 512, "tile_width": 128, "tile_height": 128, "padding": 32, **kwargs}
    with pytest.raises(WorkflowError, match=message):
        plan_tiles(**args)


def test_a_crop_is_laid_out_as_loadimage_lays_out_what_a_worker_loads():
    """ImageScale's output is a channels-first tensor seen channels last: its crops must still be contiguous."""
    channels_first = torch.rand(1, 3, 96, 128)
    image = channels_first.movedim(1, -1)
    assert not image.is_contiguous()
    grid = plan_tiles(128, 96, 64, 64, 8)
    for tile in grid.tiles:
        piece = crop(image, tile)
        assert piece.is_contiguous() and quantize_like_png(piece).is_contiguous()
        left, top, width, height = tile.box
        assert torch.equal(piece, image[:, top:top + height, left:left + width, :])
