"""Workflows with a known amount of work, their ideal makespan, and the configs that run them.

Work is DistributedTestImage's ``delay``: seconds slept per prompt, whatever the batch. In
weighted and dynamic scheduling every unit is a prompt of its own with ``unit_size`` images,
so the delay is set per unit (images in a unit x work per image). The total work is then the
same in every mode, which is what makes makespans comparable across modes.
"""

from __future__ import annotations

import heapq
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from comfy_distributed.config import Settings, WorkerConfig
from comfy_distributed.graph.workflow import COLLECTOR_CLASS, DISTRIBUTOR_CLASS

COLLECTOR = "3"
"""Node id of the Collector in every benchmark workflow."""

MODES = ("static", "weighted", "dynamic")

SEED_STEP = 1 << 16
"""Seeds of two jobs differ by this much. Unit p of a job has seed + p, so nearer seeds would
repeat a unit of an earlier job, which ComfyUI (and the stand-in) serve from cache, skipping its work."""

TOO_FAST = 0.97
"""A job faster than this share of its mode's zero-overhead makespan skipped work: it is refused."""


@dataclass(slots=True, frozen=True)
class Workload:
    speeds: tuple[float, ...]
    """Master first, then each worker; 1 is the reference speed (speed 1/3 takes 3 x as long)."""
    images: int
    """Images per participant: the workflow's batch_size."""
    work_per_image: float
    """Seconds of work for one image at speed 1."""
    unit_size: int = 1
    width: int = 32
    height: int = 24

    def without_work(self) -> "Workload":
        """The same jobs with zero work: a warm-up (first connections, first node calls) that measures nothing."""
        return replace(self, work_per_image=0.0)

    @property
    def workers(self) -> int:
        return len(self.speeds) - 1

    def unit_images(self, mode: str) -> int:
        return self.images if mode == "static" else self.unit_size

    def delay(self, mode: str) -> float:
        """DistributedTestImage's delay for one unit of this mode, at speed 1."""
        return self.unit_images(mode) * self.work_per_image

    @property
    def total_images(self) -> int:
        return self.images * len(self.speeds)

    @property
    def ideal(self) -> float:
        """Ideal makespan: total work / total speed (DESIGN.md, Measuring)."""
        return self.total_images * self.work_per_image / sum(self.speeds)

    def worker_units(self, mode: str) -> int:
        """Units outside the master's own graph run."""
        return self.workers if mode == "static" else self.total_images // self.unit_size - 1

    def policy_makespan(self, mode: str) -> float:
        """The makespan of the mode's assignment with zero overhead: what scheduling alone costs."""
        unit = self.delay(mode)
        if mode == "static":
            return max(unit / speed for speed in self.speeds)
        units = self.total_images // self.unit_size
        if mode == "weighted":
            from comfy_distributed.engine.plan import weighted_plan

            plan = weighted_plan(units, list(self.speeds))
            return max(len(plan.get(k, [])) * unit / speed for k, speed in enumerate(self.speeds))
        # dynamic: the first units are greedy; once the times of this job are known, units go where they
        # finish first. The zero-overhead makespan lies between those two placements.
        return min(_greedy(units, unit, self.speeds), self.earliest_finish_makespan())

    def best_whole_units(self) -> float:
        """The shortest makespan of any assignment of whole units to the participants, with zero overhead.

        Images cannot be split, so a 1 : 1 : 1/3 cluster cannot reach the fluid ideal (``ideal``): this
        is what the best scheduler can reach, the fair yardstick for a scheduling mode.
        """
        units = self.total_images // self.unit_size
        unit = self.delay("dynamic")
        for makespan in sorted({count * unit / speed for speed in self.speeds for count in range(1, units + 1)}):
            if sum(int(makespan * speed / unit + 1e-9) for speed in self.speeds) >= units:
                return makespan
        return units * unit / max(self.speeds)

    def earliest_finish_makespan(self) -> float:
        """Dynamic units given to whoever would finish each one first (speed-aware), with zero overhead."""
        unit = self.delay("dynamic")
        free = [unit / self.speeds[0]] + [0.0] * self.workers
        for _ in range(self.total_images // self.unit_size - 1):
            best = min(range(len(free)), key=lambda k: free[k] + unit / self.speeds[k])
            free[best] += unit / self.speeds[best]
        return max(free)


SLOW_SCALE = 3.0
"""The slow participant of the mixed-speed cluster takes 3 x as long as the others (speed 1/3)."""

MIXED = Workload((1.0, 1.0, 1.0 / SLOW_SCALE), images=4, work_per_image=0.5, width=64, height=48)
"""Mixed speeds 1 : 1 : 1/3, 12 images of 0.5 s (1.5 s on the slow one): the best assignment of whole
units takes 3.0 s, the fluid ideal 2.57 s. The same jobs in both suites."""


def _greedy(units: int, unit: float, speeds: tuple[float, ...]) -> float:
    """Dynamic: the master starts unit 0, then each free participant takes the next unit."""
    free = [(unit / speeds[0], 0)] + [(0.0, k) for k in range(1, len(speeds))]
    heapq.heapify(free)
    finish = unit / speeds[0]
    for _ in range(units - 1):
        at, who = heapq.heappop(free)
        done = at + unit / speeds[who]
        finish = max(finish, done)
        heapq.heappush(free, (done, who))
    return finish


def available_modes() -> list[str]:
    """The scheduling modes the code has now: static always, others once the setting accepts them."""
    if "scheduling_mode" not in Settings.model_fields:
        return ["static"]
    modes = []
    for mode in MODES:
        try:
            Settings.model_validate({"scheduling_mode": mode, "unit_size": 1})
        except ValidationError:
            continue
        modes.append(mode)
    return modes or ["static"]


def has_weights() -> bool:
    return "weight" in WorkerConfig.model_fields


def config(ports: list[int], mode: str, workload: Workload, host: str = "127.0.0.1",
           **settings: Any) -> dict[str, Any]:
    """A gpu_config.json for these workers; weighted mode gets the true speeds as weights."""
    weighted = mode == "weighted" and has_weights()
    workers = []
    for index, port in enumerate(ports):
        worker: dict[str, Any] = {"id": index + 1, "name": f"w{index + 1}", "host": host, "port": port}
        if weighted:
            worker["weight"] = workload.speeds[index + 1]
        workers.append(worker)
    data: dict[str, Any] = {"workers": workers, "settings": {"worker_timeout": 120, "max_retries": 0, **settings}}
    if mode in available_modes() and "scheduling_mode" in Settings.model_fields:
        data["settings"].update(scheduling_mode=mode, unit_size=workload.unit_size)
    if weighted:
        data["master"] = {"weight": workload.speeds[0]}
    return data


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    return path


def workflow(seed: int, workload: Workload, mode: str, output: str = "SaveImage") -> dict[str, Any]:
    """Test image -> Distributor -> Collector -> output node (SaveImage, or PreviewAny: no encoding)."""
    prompt = image_node(seed, workload, workload.delay(mode))
    prompt["1"]["inputs"]["seed"] = ["2", 0]
    prompt["2"] = {"class_type": DISTRIBUTOR_CLASS, "inputs": {"seed": seed}}
    prompt[COLLECTOR] = {"class_type": COLLECTOR_CLASS, "inputs": {"images": ["1", 0]}}
    prompt["4"] = output_node(output, COLLECTOR)
    return prompt


def plain_workflow(seed: int, workload: Workload, delay: float, output: str = "SaveImage") -> dict[str, Any]:
    """The same work on one instance without our nodes: the single-instance baseline."""
    prompt = image_node(seed, workload, delay)
    prompt["4"] = output_node(output, "1")
    return prompt


def image_node(seed: int, workload: Workload, delay: float) -> dict[str, Any]:
    return {"1": {"class_type": "DistributedTestImage",
                  "inputs": {"seed": seed, "batch_size": workload.images, "width": workload.width,
                             "height": workload.height, "delay": delay}}}


def output_node(kind: str, source: str) -> dict[str, Any]:
    if kind == "PreviewAny":
        return {"class_type": "PreviewAny", "inputs": {"source": [source, 0]}}
    if kind == "PreviewImage":
        return {"class_type": "PreviewImage", "inputs": {"images": [source, 0]}}
    return {"class_type": "SaveImage", "inputs": {"images": [source, 0], "filename_prefix": "bench"}}
