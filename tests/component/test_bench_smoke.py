"""The benchmarks still run: ``python -m bench.run --quick`` gives a finite figure for everything.

Only that: the quick figures are too short to mean anything, and targets are for benchmarks,
not tests (see README, Benchmarks).
"""

from __future__ import annotations

import math

import pytest

from bench import run as bench_run

pytestmark = pytest.mark.timeout(180)


def test_quick_standin_suite_gives_finite_ratios():
    outcome = bench_run.run_suite("standin", quick=True)
    assert outcome is not None
    figures, notes = outcome
    benchmarks = {figure.benchmark for figure in figures}
    for name in ("efficiency, 3 equal", "heterogeneous 1:1:1/3", "overhead per job, zero work",
                 "32 workers, efficiency", "32 workers, master CPU per job"):
        assert name in benchmarks
    assert any(name.startswith("transfer") for name in benchmarks)
    not_finite = [f"{f.benchmark} [{f.mode}]: {f.value} ({f.detail})" for f in figures
                  if not math.isfinite(f.value) or f.value <= 0]
    assert not_finite == []
    assert notes
