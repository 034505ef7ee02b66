"""The shared GPU pool on Redis: agents beside plain ComfyUIs dial out to Redis; masters put units there.

Nothing here imports redis-py until a pool is used (:mod:`.connection` does, and says how to install it when it is
missing). The map, from the wire up:

- :mod:`.keys`: every Redis key of a pool, its lifetime and refresh interval (the protocol's table);
- :mod:`.protocol`: every value stored there (heartbeat, caps, job record, unit entry, replies): its shape, its
  size cap, and its encoding; everything read is decoded through it;
- :mod:`.caps`: an agent's caps from ``/object_info``, a job's needs from its prompt, and whether they fit;
- :mod:`.fairness`: the order in which an agent serves the open jobs (a weighted round robin, no I/O);
- :mod:`.settings`: which pool a master uses (``settings.pool`` or ``COMFY_DISTRIBUTED_POOL``);
- :mod:`.connection`: redis-py's client and its errors converted into ours, and backoff;
- :mod:`.broker`: :class:`~.broker.PoolBroker`, the master's side (jobs, leases, files, units, reclaim), with
  :mod:`.inbox` reading its replies;
- :mod:`.agent`: :class:`~.agent.Agent`, the agent's loops, with :mod:`.unit_run` running one unit on its ComfyUI;
- :mod:`.member`: the master in its pool for the engine: :class:`~.member.PoolMember` (the live agents as slots, one
  participant each) and :class:`~.member.PoolTransport` (a :class:`~..cluster.transport.UnitTransport` over the
  broker), which :meth:`..cluster.core.Cluster.client` hands out for a slot.
"""
