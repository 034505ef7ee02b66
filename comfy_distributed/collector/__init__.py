"""Collector jobs: one prompt's batch spread over the master and the workers, and collected in order.

:mod:`.orchestrator` plans a job in the prompt hook, preflights the workers and holds :class:`CollectorUnits`,
the job kind the engine's runner runs; :mod:`.job_book` keeps the jobs by id (reservations, the Collectors'
stash, results posted by workers, cancelling); :mod:`.reports` tells the UI a job's progress and outcome; :mod:`.bridge` is the Collector's side on ComfyUI's execution
thread (wait, run units on the master, collect). The nodes users place: :mod:`.nodes` (Distributor, Collector, Value)
and :mod:`.clip_nodes` (one clip per participant). What a Collector collects: :mod:`.media` (the registry of
kinds: images, latent, audio) and :mod:`.codecs` (worker results decoded as ComfyUI's loaders do, each decode
measured first).
"""
