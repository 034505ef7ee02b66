"""Tile jobs: the tiles of one image as units of a job the orchestrator runs, a job kind of their own.

A tile job is a Collector job whose units are tiles and whose one "Collector" is the Merge: it is planned,
scheduled, re-run and collected by the same engine, and :class:`TileUnits` says only what differs: each
tile's crops go to the worker's temp folder just before its prompt, and a tile's time says nothing of a
participant's speed in images.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from ..cluster.transport import UnitTransport
from ..collector.orchestrator import CollectorUnits
from ..config import WorkerConfig
from ..engine.jobs import Job, UnitRun
from ..engine.scheduler import JobScheduler, Unit
from ..errors import JobError
from ..graph.workflow import Prompt
from .graph import TEMP_SUFFIX, TilePair, build_tile_prompt

if TYPE_CHECKING:
    from ..collector.orchestrator import Orchestrator


@dataclass(slots=True, kw_only=True)
class TileJob(Job):
    """A tile job: the tiles of one image (every frame of a batch) between a Tile Split and its Merge, each a
    unit that a worker or the master runs through the per-tile pipeline. Its one "Collector" is the Merge."""

    uploads: dict[int, dict[str, "bytes | Callable[[], bytes]"]] = field(default_factory=dict)
    """Per position, by file name in a worker's temp folder: the tile's crop as the worker receives it (a PNG,
    every frame in one animated PNG), then its crops of the other images cropped per tile. A function makes
    the PNG the first time the tile goes to a worker (off the loop), so the first tiles leave before the
    others are encoded and the master's own tiles are never encoded; the PNG is kept for a re-run."""


class TileUnits(CollectorUnits["TileJob"]):
    """A tile job's units: a Collector job's, with the tile's crops uploaded before each tile's prompt."""

    name = "tiles"
    learns_speeds = False

    def synced(self, job: TileJob) -> set[str]:
        """The crops are uploaded as each tile is dispatched: a preflight takes them as present."""
        return {name + TEMP_SUFFIX for named in job.uploads.values() for name in named}

    async def unit_prompt(self, job: TileJob, unit: UnitRun, client: UnitTransport) -> Prompt:
        """A tile's crops go to the worker's temp folder just before the tile's prompt, which loads them under the
        names the worker gave them."""
        named = job.uploads[unit.position]
        for name, data in list(named.items()):
            if callable(data):
                named[name] = await asyncio.to_thread(data)
        answers = await asyncio.gather(*(client.upload_bytes(data, name, folder="temp", overwrite=True)
                                         for name, data in named.items() if isinstance(data, bytes)))
        stored = {}
        for name, answer in zip(named, answers):
            given, subfolder = str(answer["name"]), str(answer.get("subfolder") or "")
            stored[name + TEMP_SUFFIX] = (f"{subfolder}/{given}" if subfolder else given) + TEMP_SUFFIX
        return {node_id: {**node, "inputs": {**node["inputs"], "image": stored[node["inputs"]["image"]]}}
                if node.get("class_type") == "LoadImage" and node.get("inputs", {}).get("image") in stored else node
                for node_id, node in unit.prompt.items()}

    def unit_done(self, job: TileJob, unit: UnitRun, worker: WorkerConfig, seconds: float) -> None:
        """A tile's time says nothing of a worker's time per image: nothing is learnt."""


def start_tiles(orchestrator: "Orchestrator", prompt: Prompt, pair: TilePair,
                files: "list[list[bytes | Callable[[], bytes]]]", frames: int,
                hints: dict[tuple[str, int], int] | None = None) -> TileJob | None:
    """Share the tiles of one image with the enabled workers (execution thread, as the Merge runs): a job
    whose unit at position i + 1 is tile i, begun on the server loop. None when no worker is enabled:
    the master runs every tile itself. Tiles are handed out one at a time to whoever is free, the
    master included, and a tile is never left out (a failed one runs elsewhere, at worst on the master).

    ``files[i]``: tile i's PNGs (or functions that make them), its crop first, then its crops of the images
    cropped per tile; ``hints`` says which of them each such image's output (node, slot) is taken from (0: the
    tile itself)."""
    config = orchestrator.cluster.config()
    if not config.enabled_workers() or not files:
        return None
    if orchestrator.loop is None:
        raise JobError("Multi-GPU Tile Merge: the extension's server loop is not known; restart ComfyUI")
    job_id = uuid.uuid4().hex
    uploads = {i + 1: {(f"multigpu-tile-{job_id}-{i + 1}-{j}.png" if j else f"multigpu-tile-{job_id}-{i + 1}.png"):
                       data for j, data in enumerate(tile)} for i, tile in enumerate(files)}
    units = {}
    for position, named in uploads.items():
        names = list(named)
        units[position] = UnitRun(position, 0, build_tile_prompt(
            prompt, pair, names[0], {key: names[j] for key, j in (hints or {}).items()}), batch=frames)
    workers = {str(w.id): w for w in config.enabled_workers()}
    scheduler = JobScheduler(units=[Unit(p, 0) for p in sorted(units)], workers=list(workers), first_runs=None,
                             max_retries=config.settings.max_retries, skip_unavailable=False,
                             learns_unit_times=True, names={key: w.display_name for key, w in workers.items()})
    job = TileJob(job_id=job_id, kind=TileUnits(orchestrator), collectors=[pair.merge], units=units, workers=workers,
                  settings=config.settings, scheduler=scheduler, mode="dynamic", kinds={pair.merge: ["images"]},
                  batch=frames, uploads=uploads)
    orchestrator.begin_soon(job)
    return job
