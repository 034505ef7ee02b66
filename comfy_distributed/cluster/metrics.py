"""What the cluster did, as counters, and ``GET /multigpu/metrics`` in Prometheus' text format (version 0.0.4).

Counters grow for the life of the master (jobs by kind and outcome, units finished by how, re-runs by reason,
each worker's busy seconds and images); gauges are read when scraped (units of running jobs by state, each
worker's health and the age of its last heartbeat; a worker disabled in the config is not down, so it is left
out of ``worker_up``). Every series is written by hand: the format is a few lines of text, and the exporter
needs no dependency.
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Mapping

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "comfy_distributed_"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _disabled(worker: Mapping) -> bool:
    """Whether a health entry is a worker switched off in the config (not a worker that is down)."""
    return worker.get("enabled") is False or worker.get("status") == "disabled"


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


@dataclass(frozen=True)
class Series:
    """One metric family: its samples by label values."""

    name: str
    kind: str  # counter or gauge
    help: str
    labels: tuple[str, ...]
    samples: Mapping[tuple[str, ...], float]

    def render(self) -> list[str]:
        name = PREFIX + self.name
        lines = [f"# HELP {name} {self.help}", f"# TYPE {name} {self.kind}"]
        for values, number in sorted(self.samples.items()):
            labels = ",".join(f'{label}="{_escape(value)}"' for label, value in zip(self.labels, values))
            lines.append(f"{name}{{{labels}}} {_number(number)}" if labels else f"{name} {_number(number)}")
        return lines


@dataclass
class Metrics:
    """The master's counters; thread-safe (the execution thread and the server loop both count)."""

    jobs_started: dict[tuple[str, ...], float] = field(default_factory=lambda: defaultdict(float))
    jobs_ended: dict[tuple[str, ...], float] = field(default_factory=lambda: defaultdict(float))
    units_ended: dict[tuple[str, ...], float] = field(default_factory=lambda: defaultdict(float))
    reruns: dict[tuple[str, ...], float] = field(default_factory=lambda: defaultdict(float))
    busy_seconds: dict[tuple[str, ...], float] = field(default_factory=lambda: defaultdict(float))
    images: dict[tuple[str, ...], float] = field(default_factory=lambda: defaultdict(float))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def job_started(self, kind: str) -> None:
        with self._lock:
            self.jobs_started[(kind,)] += 1

    def job_ended(self, kind: str, outcome: str) -> None:
        with self._lock:
            self.jobs_ended[(kind, outcome)] += 1

    def units_finished(self, states: Iterable[str]) -> None:
        with self._lock:
            for state in states:
                self.units_ended[(state,)] += 1

    def rerun(self, reason: str) -> None:
        with self._lock:
            self.reruns[(reason,)] += 1

    def unit_done(self, worker: str, seconds: float, images: int) -> None:
        with self._lock:
            self.busy_seconds[(worker,)] += max(0.0, seconds)
            self.images[(worker,)] += max(0, images)

    def render(self, unit_states: Mapping[str, int], workers: list[dict]) -> str:
        """The text a scrape gets: the counters, then gauges of ``unit_states`` (units of running jobs by
        state) and ``workers`` (health entries: id, status, ``last_seen`` seconds ago)."""
        with self._lock:
            counters = [
                Series("jobs_started_total", "counter", "Jobs started, by kind (collector, tiles, queue)",
                       ("kind",), dict(self.jobs_started)),
                Series("jobs_ended_total", "counter", "Jobs ended, by kind and outcome (done, cancelled, error)",
                       ("kind", "outcome"), dict(self.jobs_ended)),
                Series("units_ended_total", "counter",
                       "Units of ended jobs, by final state (done, master, given_up, skipped, pending)",
                       ("state",), dict(self.units_ended)),
                Series("reruns_total", "counter", "Units re-run after a worker failed them, by reason",
                       ("reason",), dict(self.reruns)),
                Series("worker_busy_seconds_total", "counter", "Seconds workers spent on units they delivered",
                       ("worker",), dict(self.busy_seconds)),
                Series("worker_images_total", "counter", "Images (or frames, tiles) workers delivered",
                       ("worker",), dict(self.images)),
            ]
        watched = [w for w in workers if not _disabled(w)]  # switched off on purpose: not down, so not in worker_up
        up: dict[tuple[str, ...], float] = {(str(w["id"]),): 1.0 if w.get("status") in ("idle", "busy") else 0.0
                                            for w in watched}
        ages: dict[tuple[str, ...], float] = {(str(w["id"]),): float(w["last_seen"]) for w in workers
                if isinstance(w.get("last_seen"), (int, float)) and not isinstance(w.get("last_seen"), bool)}
        gauges = [
            Series("units", "gauge", "Units of running jobs, by state", ("state",),
                   {(state,): float(count) for state, count in unit_states.items()}),
            Series("worker_up", "gauge", "1 when the worker answered its last health check, 0 when it did not; "
                   "a disabled worker (enabled: false) is left out, as it is not down", ("worker",), up),
            Series("worker_heartbeat_age_seconds", "gauge", "Seconds since the worker last answered a health check",
                   ("worker",), ages),
        ]
        return "\n".join(line for series in counters + gauges for line in series.render()) + "\n"
