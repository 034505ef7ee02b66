"""The master's participants, as the jobs see them: who answers, what each can run, how fast, what it loaded.

:mod:`.core` (the :class:`~.core.Cluster` every owner of jobs shares: one of each of the things below, one
session per worker, one preview relay, one upload bound), :mod:`.health` (a heartbeat per worker and the
status derived from it), :mod:`.preflight` (can a worker run a prompt: its cached ``/object_info``; the
master's input files uploaded once per content), :mod:`.speeds` (images per second learnt from finished
units), :mod:`.loaded_models` (the checkpoint each participant ran last), :mod:`.previews` (workers' preview
frames relayed to a watching panel), :mod:`.view` (the cluster in one line: queues, running units, time left;
pure functions of the status).
"""
