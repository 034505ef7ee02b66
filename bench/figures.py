"""What a benchmark reports, printed as a table and kept in ``bench/RESULTS.md``.

A figure is the value of every run of one benchmark (in the order they ran), with its median
and its worst run, and the goal for each. Every run is printed because a user waits for the
run they get, not for the median. Targets are the issue's goals for benchmarks, not
pass/fail tests: a missed target is reported, never raised.
"""

from __future__ import annotations

import math
import os
import platform
import re
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

RESULTS_PATH = Path(__file__).resolve().parent / "RESULTS.md"
DECIMALS = {"ratio": 3, "ms": 1, "MB/s": 0, "s": 2, "units": 2}


@dataclass(slots=True, frozen=True)
class Target:
    """The goal for the median run and, where one is set, for the worst run."""

    bound: float
    worst: float | None = None


@dataclass(slots=True, frozen=True)
class Figure:
    suite: str
    benchmark: str
    mode: str
    runs: tuple[float, ...]
    """The figure of each measured run, in the order they ran (empty: nothing valid was measured)."""
    unit: str  # a key of DECIMALS
    target: Target | None = None
    detail: str = ""
    lower_is_better: bool = False

    @property
    def value(self) -> float:
        """The median run."""
        return statistics.median(self.runs) if self.runs else math.nan

    @property
    def worst(self) -> float:
        if not self.runs:
            return math.nan
        return max(self.runs) if self.lower_is_better else min(self.runs)

    @property
    def op(self) -> str:
        return "<=" if self.lower_is_better else ">="

    def _met(self, value: float, bound: float) -> bool:
        return value <= bound if self.lower_is_better else value >= bound

    @property
    def verdict(self) -> str:
        if self.target is None:
            return "-"
        if not self.runs or not all(map(math.isfinite, self.runs)):
            return "no value"
        if not self._met(self.value, self.target.bound):
            return "MISSED"
        if self.target.worst is not None and not self._met(self.worst, self.target.worst):
            return "MISSED (worst)"
        return "met"

    def target_text(self) -> str:
        if self.target is None:
            return "-"
        unit = "" if self.unit == "ratio" else f" {self.unit}"
        text = f"{self.op} {self.target.bound:g}{unit}"
        return text + (f", worst {self.op} {self.target.worst:g}{unit}" if self.target.worst is not None else "")

    def shown(self, value: float) -> str:
        if not math.isfinite(value):
            return "n/a"
        number = f"{value:.{DECIMALS.get(self.unit, 3)}f}"
        return number if self.unit == "ratio" else f"{number} {self.unit}"

    def runs_text(self) -> str:
        digits = DECIMALS.get(self.unit, 3)
        return " ".join(f"{run:.{digits}f}" for run in self.runs) or "-"


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def spread(values: Iterable[float]) -> str:
    """``min-max`` of the runs, so that a noisy median shows as such."""
    items = list(values)
    return f"{min(items):.3f}-{max(items):.3f}" if len(items) > 1 else f"{items[0]:.3f}"


def seconds_list(values: Iterable[float]) -> str:
    """Every run's seconds, in the order they ran."""
    return " ".join(f"{value:.2f}" for value in values) + " s"


def table(figures: list[Figure]) -> str:
    """A Markdown table, readable in a terminal too."""
    rows = [("suite", "benchmark", "mode", "median", "worst", "target", "verdict", "every run", "detail")]
    rows += [(f.suite, f.benchmark, f.mode, f.shown(f.value), f.shown(f.worst), f.target_text(), f.verdict,
              f.runs_text(), f.detail) for f in figures]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for index, row in enumerate(rows):
        cells = [cell.ljust(width) for cell, width in zip(row, widths)] + [row[-1]]
        lines.append("| " + " | ".join(cells) + " |")
        if index == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|---|")
    return "\n".join(lines)


def machine() -> dict[str, str]:
    """Where the figures were measured (they mean little without it)."""
    try:
        uname = subprocess.run(["uname", "-a"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        uname = " ".join(platform.uname())
    try:
        load = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        load = "unknown"
    return {
        "load": load,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": uname,
        "cpus": str(os.cpu_count()),
        "python": platform.python_version(),
    }


HEADER = """# Benchmark results

Written by `python -m bench.run --write` (see README, Benchmarks). Each suite's section is
replaced when that suite runs; definitions and targets are in the README's Benchmarks
section. Targets are goals for benchmarks, not pass/fail tests. Every run is listed, in
the order it ran, besides the median and the worst run.
"""


def write_results(suite: str, figures: list[Figure], notes: list[str], command: str, load_before: str,
                  seconds: float, path: Path = RESULTS_PATH) -> None:
    """Replace the section of ``suite`` in RESULTS.md (other suites' sections are kept)."""
    text = path.read_text(encoding="utf-8") if path.exists() else HEADER
    info = machine()
    body = [
        f"<!-- suite:{suite} -->",
        f"## {suite} suite",
        "",
        f"- date: {info['date']}; the suite took {seconds:.0f} s",
        f"- machine: `{info['machine']}`",
        f"- CPUs: {info['cpus']}; Python {info['python']}; load average (1, 5, 15 min) before {load_before}, "
        f"after {info['load']}",
        f"- command: `{command}`",
        "",
        table(figures),
        "",
        *[f"- {note}" for note in notes],
        "- A load average above the CPU count means other processes competed for the CPUs during the run; "
        "the figures are then lower than on an idle machine.",
        f"<!-- /suite:{suite} -->",
    ]
    section = "\n".join(body)
    pattern = re.compile(rf"<!-- suite:{re.escape(suite)} -->.*?<!-- /suite:{re.escape(suite)} -->", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text, encoding="utf-8")
