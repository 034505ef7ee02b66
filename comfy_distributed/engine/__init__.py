"""The engine every kind of job runs on: plan, schedule, run, re-run.

:mod:`.plan` decides who takes part in a Collector job, with which seed and where its images land;
:mod:`.scheduler` is the pure state machine that owns where each unit stands (events in, actions out, no I/O);
:mod:`.runner` carries its actions out for any job kind (runs a unit on a worker, feeds back what happened);
:mod:`.jobs` holds a job's records (its units and what they brought back) and the :class:`~.jobs.JobKind` each runs
by; a unit reaches its worker through :mod:`..cluster.transport`'s seam (ComfyUI's HTTP + websocket API, or the pool).
"""
