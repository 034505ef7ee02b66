"""Run the benchmarks and print their ratios; ``--write`` keeps them in bench/RESULTS.md.

    python -m bench.run                        # stand-in suite (about a minute, no ComfyUI needed)
    python -m bench.run --suite all --write    # and real ComfyUI when COMFYUI_PATH is set (real, then the pool)
    python -m bench.run --suite pool           # the pool: 256 stand-in agents (redis-server), then real ComfyUI
    python -m bench.run --quick                # the stand-in suite in seconds (CI smoke)
    python -m bench.run --profile              # where the master spends its CPU with 64 workers
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

from .figures import Figure, machine, table, write_results

SUITES = ("standin", "real", "pool")


def run_suite(suite: str, quick: bool) -> tuple[list[Figure], list[str]] | None:
    """The suite's figures and notes; None when it cannot run here (the reason is printed)."""
    if suite == "standin":
        from . import standin_suite

        return standin_suite.run(quick)
    if suite == "pool":
        return pool_suite(quick)
    from . import real_suite
    from .real_cluster import unavailable

    if why := unavailable():
        print(f"{suite} suite skipped: {why}", file=sys.stderr)
        return None
    return real_suite.run(quick)


def pool_suite(quick: bool) -> tuple[list[Figure], list[str]] | None:
    """The pool at scale on stand-in agents (a redis-server is enough), then on real ComfyUI (COMFYUI_PATH)."""
    from harness.redis_server import redis_server_path

    from . import pool_scale, real_pool
    from .real_cluster import unavailable

    if redis_server_path() is None:
        print("pool suite skipped: redis-server is not installed (apt install redis-server)", file=sys.stderr)
        return None
    figures = pool_scale.run(1 if quick else 3, 0.25 if quick else 2.0)
    notes = list(pool_scale.NOTES)
    if why := unavailable():
        print(f"pool suite on real ComfyUI skipped: {why}", file=sys.stderr)
    else:
        figures += real_pool.run(1 if quick else 3)
        notes += real_pool.NOTES
    return figures, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=(*SUITES, "all"), default="standin")
    parser.add_argument("--quick", action="store_true", help="short runs: finite figures, not meaningful ones")
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md with the figures")
    parser.add_argument("--profile", action="store_true", help="cProfile the master with 32 stand-in workers")
    args = parser.parse_args(argv)
    if args.profile:
        from .standin_suite import profile_scale

        print(profile_scale(quick=args.quick))
        return 0
    command = "python -m bench.run " + shlex.join(argv if argv is not None else sys.argv[1:])
    for suite in SUITES if args.suite == "all" else (args.suite,):
        started, load = time.monotonic(), machine()["load"]
        outcome = run_suite(suite, args.quick)
        if outcome is None:
            continue
        figures, notes = outcome
        seconds = time.monotonic() - started
        print(f"\n{suite} suite ({seconds:.0f} s, {os.cpu_count()} CPUs, "
              f"load average {load} before, {machine()['load']} after)\n")
        print(table(figures))
        if args.write:
            write_results(suite, figures, notes, command.strip(), load, seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
