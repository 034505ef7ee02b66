"""Every Redis key of a pool, its lifetime, and how often each side refreshes it: written once, here.

All keys of the pool named ``name`` are under ``cdp:{name}:``, so several pools share one Redis (or one database)
and ``redis-cli --scan --pattern 'cdp:NAME:*'`` shows a pool whole:

==========================  ===========  ===========================================================================
key                         type         what, who writes it, how long it lives
==========================  ===========  ===========================================================================
``agent:{agent_id}``        string       an agent's heartbeat (JSON), SET EX :data:`HEARTBEAT_TTL` every
                                         :data:`HEARTBEAT_INTERVAL` by the agent: gone means the agent is gone
``caps:{digest}``           string       what an agent's ComfyUI can run (JSON), keyed by the sha256 of its canonical
                                         JSON, so identical installs share one; EX :data:`CAPS_TTL`, refreshed
``jobs``                    sorted set   open job ids, score = submit time: the agents' list of work
``job:{job_id}``            string       a job's record (JSON: master, reply stream, needs, tags, weight)
``lease:{job_id}``          string       the job's lease, SET EX :data:`LEASE_TTL` every :data:`LEASE_INTERVAL` by its
                                         master: gone means the master is gone, and agents drop the job's units
``units:{job_id}``          stream       one entry per unit attempt; consumer group :data:`GROUP` (agents)
``file:{sha256}``           string       an input file's bytes, SET NX EX :data:`FILE_TTL` (content-addressed)
``reply:{master_id}``       stream       what agents send back to one master (progress, done, failed, preview),
                                         read with plain XREAD; EX :data:`REPLY_TTL` after each entry
``wake``                    stream       one small entry per unit attempt a master adds (its job id), trimmed to about
                                         :data:`WAKE_MAXLEN`: an idle agent blocks on it (``XREAD BLOCK``) instead of
                                         asking every job again and again
==========================  ===========  ===========================================================================

Delivery: an agent takes an entry with ``XREADGROUP GROUP agents {agent_id} COUNT 1 ... >`` and, while it runs the
unit, resets the entry's idle time every :data:`CLAIM_INTERVAL` (``XCLAIM ... 0 {id} JUSTID``); an entry idle for
longer than :data:`DEAD_AFTER` belongs to an agent that died, and the master reclaims it (XACK + XDEL, and the engine
runs the unit again with the next attempt number).
"""

from __future__ import annotations

PREFIX = "cdp"
GROUP = "agents"
"""The consumer group of every units stream: each agent is one consumer in it, named by its id."""

HEARTBEAT_INTERVAL = 5.0
HEARTBEAT_TTL = 15
"""Seconds a heartbeat lives: three missed beats and the agent is gone."""
CLAIM_INTERVAL = 5.0
"""Seconds between an agent's resets of its running entry's idle time."""
DEAD_AFTER = 20.0
"""Seconds a pending entry may stay idle before the master counts its agent dead (four missed resets)."""
LEASE_INTERVAL = 5.0
LEASE_TTL = 20
CAPS_TTL = 3600
CAPS_REREAD = 60.0
"""Seconds between an agent's readings of its ComfyUI's ``/object_info`` (also re-read when it comes back)."""
FILE_TTL = 3600
REPLY_TTL = 3600
"""Seconds a reply stream outlives its last entry: a master gone for good leaves nothing behind for long."""

UNITS_MAXLEN = 100_000
"""Approximate trim of a units stream on each add: a safety net only (finished entries are deleted), so the engine
must not keep more open units than this in one job."""
REPLY_MAXLEN = 10_000
"""Approximate trim of a reply stream on each add; the master also deletes each entry it has read."""
WAKE_MAXLEN = 1000
"""Approximate trim of the wake-up stream: only its newest entries matter."""
WAKE_WAIT = 2.0
"""Seconds an idle agent waits for a wake-up before it looks at the open jobs again anyway."""


class PoolKeys:
    """The key names of one pool."""

    def __init__(self, pool: str) -> None:
        self.base = f"{PREFIX}:{pool}:"

    @property
    def jobs(self) -> str:
        return self.base + "jobs"

    @property
    def agent_pattern(self) -> str:
        """For ``SCAN MATCH``: every heartbeat of the pool."""
        return self.base + "agent:*"

    def agent(self, agent_id: str) -> str:
        return f"{self.base}agent:{agent_id}"

    def caps(self, digest: str) -> str:
        return f"{self.base}caps:{digest}"

    def job(self, job_id: str) -> str:
        return f"{self.base}job:{job_id}"

    def lease(self, job_id: str) -> str:
        return f"{self.base}lease:{job_id}"

    def units(self, job_id: str) -> str:
        return f"{self.base}units:{job_id}"

    def file(self, sha256: str) -> str:
        return f"{self.base}file:{sha256}"

    def reply(self, master_id: str) -> str:
        return f"{self.base}reply:{master_id}"

    @property
    def wake(self) -> str:
        return self.base + "wake"
