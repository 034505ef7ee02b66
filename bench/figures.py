"""What a benchmark reports, printed as a table and kept in ``bench/RESULTS.md``.

A figure is one number with what it is compared to. Targets are the issue's goals for
benchmarks, not pass/fail tests: a missed target is reported, never raised.
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


@dataclass(slots=True, frozen=True)
class Target:
    """``value <op> bound``; ``op`` is ">=" or "<="."""

    op: str
    bound: float

    def met(self, value: float) -> bool:
        return value >= self.bound if self.op == ">=" else value <= self.bound

    def __str__(self) -> str:
        return f"{self.op} {self.bound:g}"


@dataclass(slots=True, frozen=True)
class Figure:
    suite: str
    benchmark: str
    mode: str
    value: float
    unit: str  # "ratio", "ms", "MB/s", "s"
    target: Target | None = None
    detail: str = ""

    @property
    def verdict(self) -> str:
        if self.target is None:
            return "-"
        if not math.isfinite(self.value):
            return "no value"
        return "met" if self.target.met(self.value) else "MISSED"

    def shown(self) -> str:
        if not math.isfinite(self.value):
            return "n/a"
        if self.unit == "ratio":
            return f"{self.value:.3f}"
        if self.unit == "MB/s":
            return f"{self.value:.0f} MB/s"
        if self.unit == "ms":
            return f"{self.value:.1f} ms"
        return f"{self.value:.2f} {self.unit}"


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def spread(values: Iterable[float]) -> str:
    """``min-max`` of the runs, so that a noisy median shows as such."""
    items = list(values)
    return f"{min(items):.3f}-{max(items):.3f}" if len(items) > 1 else f"{items[0]:.3f}"


def table(figures: list[Figure]) -> str:
    """A Markdown table, readable in a terminal too."""
    rows = [("suite", "benchmark", "mode", "value", "target", "verdict", "detail")]
    rows += [(f.suite, f.benchmark, f.mode, f.shown(), str(f.target or "-"), f.verdict, f.detail) for f in figures]
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
section. Targets are goals for benchmarks, not pass/fail tests.
"""


def write_results(suite: str, figures: list[Figure], notes: list[str], command: str, load_before: str,
                  path: Path = RESULTS_PATH) -> None:
    """Replace the section of ``suite`` in RESULTS.md (other suites' sections are kept)."""
    text = path.read_text(encoding="utf-8") if path.exists() else HEADER
    info = machine()
    body = [
        f"<!-- suite:{suite} -->",
        f"## {suite} suite",
        "",
        f"- date: {info['date']}",
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
