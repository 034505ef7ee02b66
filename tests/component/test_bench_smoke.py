"""The benchmarks still run: ``python -m bench.run --quick`` gives a finite figure for everything.

Only that: the quick figures are too short to mean anything, and targets are for benchmarks,
not tests (see README, Benchmarks). The yardsticks the figures are divided by are checked here
too, since a wrong ideal would make every benchmark say the wrong thing.
"""

from __future__ import annotations

import math

import pytest

from bench import run as bench_run
from bench.figures import Figure, Target, table
from bench.workload import MIXED, Workload


@pytest.mark.timeout(180)
def test_quick_standin_suite_gives_finite_ratios():
    outcome = bench_run.run_suite("standin", quick=True)
    assert outcome is not None
    figures, notes = outcome
    benchmarks = {figure.benchmark for figure in figures}
    for name in ("efficiency, 3 equal", "mixed speeds 1:1:1/3", "overhead per job, zero work",
                 "64 workers, efficiency", "64 workers, master CPU per unit"):
        assert name in benchmarks
    assert any(name.startswith("transfer") for name in benchmarks)
    not_finite = [f"{f.benchmark} [{f.mode}]: {f.runs} ({f.detail})" for f in figures
                  if not f.runs or not all(math.isfinite(run) and run > 0 for run in f.runs)]
    assert not_finite == []
    assert notes


def test_whole_units_cannot_reach_the_fluid_ideal():
    """1 : 1 : 1/3 with 12 units of 0.5 s: 6 s of work over speed 7/3 is 2.57 s, but whole units need 3 s."""
    assert MIXED.ideal == pytest.approx(6 / (7 / 3))
    assert MIXED.best_whole_units() == pytest.approx(3.0)
    equal = Workload((1.0, 1.0, 1.0), images=2, work_per_image=1.0)
    assert equal.best_whole_units() == pytest.approx(equal.ideal) == pytest.approx(2.0)


def test_a_figure_keeps_every_run_and_judges_the_worst():
    figure = Figure("real", "efficiency 512x512", "static", (0.98, 0.92, 0.99), "ratio", Target(0.97, worst=0.93))
    assert (figure.value, figure.worst, figure.verdict) == (0.98, 0.92, "MISSED (worst)")
    slower = Figure("real", "mixed", "dynamic", (1.01, 1.1, 1.02), "ratio", Target(1.05, worst=1.2),
                    lower_is_better=True)
    assert (slower.worst, slower.verdict, slower.target_text()) == (1.1, "met", "<= 1.05, worst <= 1.2")
    assert "0.980 0.920 0.990" in table([figure])


def test_the_best_assignment_of_whole_tiles():
    """12 tiles of 1 s: 3 equal participants need 4 s; at 1 : 1 : 1/3, 6 s (the slow one finishes 2 in 6 s)."""
    from bench.real_tiles import best_whole_tiles

    assert best_whole_tiles(12, (1.0, 1.0, 1.0), 1.0) == pytest.approx(4.0)
    assert best_whole_tiles(12, (1.0, 1.0, 1 / 3), 1.0) == pytest.approx(6.0)
    assert best_whole_tiles(13, (1.0, 1.0, 1.0), 0.5) == pytest.approx(2.5)
    assert best_whole_tiles(1, (1.0, 1 / 3), 2.0) == pytest.approx(2.0)
