"""Benchmarks of ComfyUI-Distributed: ratios measured on loopback, see ``python -m bench.run --help``.

Modules: ``figures`` (what a benchmark reports, the table and RESULTS.md), ``workload``
(workflows, ideal makespans, config files, which scheduling modes exist), ``pool`` (stand-in
workers in a process of their own), ``standin_suite`` (the orchestrator in this process
against stand-ins), ``real_suite`` (real ComfyUI processes), ``run`` (the command line).
"""
