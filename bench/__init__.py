"""Benchmarks of ComfyUI-Distributed: what a user waits for, measured on loopback; see ``python -m bench.run --help``.

Modules: ``figures`` (a figure: every run, its median and worst, the target; the table and
RESULTS.md), ``workload`` (workflows, ideal makespans and the best whole-unit assignment, config
files, which scheduling modes exist), ``real_cluster`` (real ComfyUI instances started together),
``real_jobs`` (timed jobs on them), ``real_suite`` (the real benchmarks), ``pool`` (stand-in
workers in a process of their own), ``standin_bench`` (the orchestrator in this process, timed),
``standin_suite`` (the stand-in benchmarks), ``run`` (the command line).
"""
