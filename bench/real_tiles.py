"""Tile jobs on the real cluster: one image's tiles over every participant (issue 15's measures).

The per-tile work is ``DistributedTestTileWork``'s delay, slept, so the machine's cores do not decide the
speed-up; everything else (cutting, PNG crops, uploads, worker prompts, fetching, blending, saving) is real.
Each run has a new source seed, so ComfyUI's cache never answers it.
"""

from __future__ import annotations

import math
from typing import Any

from .figures import Figure, Target, median, seconds_list
from .real_jobs import BenchError, RealBench
from .workload import SLOW_SCALE, Workload

SUITE = "real"
TILES = 12
"""A 1024x768 image in 256x256 tiles (4 x 3)."""
IMAGE = (1024, 768)
TILE = 256
TILE_WORK = 1.0
"""Seconds of simulated work per tile (speed-up and mixed speeds)."""
ANY = Workload((1.0, 1.0, 1.0), images=1, work_per_image=0.0)
"""Only for the config's scheduling settings (tiles are always handed out one at a time)."""


def tile_prompt(seed: int, width: int, height: int, tile: int, delay: float) -> dict[str, Any]:
    """Test image -> Tile Split -> the test tile node -> Tile Merge -> Save Image."""
    return {
        "1": {"class_type": "DistributedTestImage", "inputs": {"seed": seed, "batch_size": 1, "width": width,
                                                                "height": height, "delay": 0.0}},
        "2": {"class_type": "MultiGPUTileSplit", "inputs": {"image": ["1", 0], "tile_width": tile,
                                                           "tile_height": tile, "padding": 16, "feather": 16}},
        "3": {"class_type": "DistributedTestTileWork", "inputs": {"image": ["2", 0], "gain": 1.0, "scale": 1,
                                                                 "delay": delay}},
        "4": {"class_type": "MultiGPUTileMerge", "inputs": {"tile": ["3", 0]}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "bench-tiles"}},
    }


def plain_prompt(seed: int, width: int, height: int) -> dict[str, Any]:
    """The same image made and saved without tiles (the overhead's baseline)."""
    return {
        "1": {"class_type": "DistributedTestImage", "inputs": {"seed": seed, "batch_size": 1, "width": width,
                                                                "height": height, "delay": 0.0}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "bench-tiles"}},
    }


def timed_tiles(bench: RealBench, width: int, height: int, tile: int, delay: float,
                workers_expected: bool) -> tuple[float, list[str], list[int]]:
    """One tiled job: its seconds, the workers that delivered tiles and the tiles the master ran."""
    seconds, entry, events = bench.timed(tile_prompt(next(bench.seeds), width, height, tile, delay))
    if len(entry.get("outputs", {}).get("5", {}).get("images", [])) != 1:
        raise BenchError("the tiled job saved no image")
    done = [e["data"] for e in events if e["type"] == "multigpu.job_done"]
    if workers_expected and not done:
        raise BenchError("the tiled job ran without a tile job: were the workers enabled?")
    workers = list(done[-1]["workers_done"]) if done else []
    return seconds, workers, list(done[-1]["master_units"]) if done else []


def speed_up(bench: RealBench, workers: tuple[str, ...], repeats: int) -> list[Figure]:
    """12 tiles of 1 s on 3 equal participants against the master alone; ideal 3x."""
    bench.use((), "dynamic", ANY)
    timed_tiles(bench, *IMAGE, TILE, 0.0, False)  # warm-up
    alone = [timed_tiles(bench, *IMAGE, TILE, TILE_WORK, False)[0] for _ in range(repeats)]
    bench.use(workers, "dynamic", ANY)
    timed_tiles(bench, *IMAGE, TILE, 0.0, True)
    runs = [timed_tiles(bench, *IMAGE, TILE, TILE_WORK, True) for _ in range(repeats)]
    reference = median(alone)
    return [Figure(SUITE, f"tiles: speed-up, {TILES} tiles, 3 equal", "dynamic",
                   tuple(reference / seconds for seconds, _, _ in runs), "ratio", Target(2.7),
                   detail=f"the master alone {seconds_list(alone)} s / master + 2 workers "
                          f"{seconds_list(s for s, _, _ in runs)} s; {TILE_WORK:.1f} s of work per tile; tiles the "
                          f"master ran per run {[len(m) for _, _, m in runs]}")]


def best_whole_tiles(tiles: int, speeds: tuple[float, ...], work: float) -> float:
    """The shortest makespan of ``tiles`` equal tiles over participants of these speeds (tiles / second)."""
    span = work / max(speeds)
    while sum(math.floor(span * s / work + 1e-9) for s in speeds) < tiles:
        span = min((math.floor(span * s / work + 1e-9) + 1) * work / s for s in speeds)
    return span


def mixed(bench: RealBench, workers: tuple[str, ...], repeats: int) -> list[Figure]:
    """The same job with w2 three times slower (restarted so by the caller): against the best assignment."""
    bench.use((), "dynamic", ANY)
    floor = median(timed_tiles(bench, *IMAGE, TILE, 0.0, False)[0] for _ in range(repeats))
    bench.use(workers, "dynamic", ANY)
    timed_tiles(bench, *IMAGE, TILE, 0.0, True)
    runs = [timed_tiles(bench, *IMAGE, TILE, TILE_WORK, True)[0] for _ in range(repeats)]
    best = best_whole_tiles(TILES, (1.0, 1.0, 1.0 / SLOW_SCALE), TILE_WORK) + floor
    return [Figure(SUITE, f"tiles: mixed speeds 1:1:1/3, {TILES} tiles", "dynamic",
                   tuple(seconds / best for seconds in runs), "ratio", Target(1.15), lower_is_better=True,
                   detail=f"measured {seconds_list(runs)} s / best whole-tile assignment {best:.2f} s "
                          f"({best - floor:.2f} s + the master alone with zero work {floor:.2f} s)")]


def overhead(bench: RealBench, workers: tuple[str, ...], repeats: int) -> list[Figure]:
    """Zero work, a 2048x2048 image in 1024x1024 tiles (4): (tiled job - the plain image job) / tiles."""
    bench.use(workers, "dynamic", ANY)
    timed_tiles(bench, 2048, 2048, 1024, 0.0, True)
    runs = [timed_tiles(bench, 2048, 2048, 1024, 0.0, True)[0] for _ in range(repeats)]
    plain = median(bench.timed(plain_prompt(next(bench.seeds), 2048, 2048))[0] for _ in range(repeats))
    return [Figure(SUITE, "tiles: overhead per 1024x1024 tile, zero work", "dynamic",
                   tuple((seconds - plain) / 4 * 1000 for seconds in runs), "ms", Target(40), lower_is_better=True,
                   detail=f"tiled jobs {seconds_list(runs)} s - the same image made and saved without tiles "
                          f"{plain:.2f} s, / 4 tiles (crop 1056x1056: cut, PNG, upload, worker prompt, fetch, "
                          "decode, blend)")]
