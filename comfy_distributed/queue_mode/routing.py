"""Where a whole prompt runs soonest: the queue mode's ranking of the participants, a pure function.

Each candidate is known by its load (prompts running or waiting there), whether it ran the prompt's checkpoint
last (so it is likely still loaded) and its speed (images per second, measured or configured; None when not
known). ``least_busy`` ranks by load alone; ``smart`` (the default) by load, then a loaded checkpoint, then speed.
Ties keep the given order, the master first: a prompt stays where it needs no transfer.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Candidate:
    load: int
    """Prompts running or waiting there (the balancer adds a penalty for a master that cannot run the prompt)."""
    holds_model: bool = False
    """It ran the prompt's checkpoint last."""
    speed: float | None = None
    """Images per second, measured or configured; None when not known."""


def rank(candidates: list[Candidate], routing: str) -> list[int]:
    """The candidates' indexes, best first. ``candidates[0]`` is the master, the others the workers in config
    order. A worker whose speed is not known counts as the average of those known; the master's own prompts are
    not timed, so an unknown master counts as the fastest, and a tie keeps the prompt there."""
    if routing == "least_busy":
        return sorted(range(len(candidates)), key=lambda i: (candidates[i].load, i))
    known = [c.speed for c in candidates if c.speed]
    average = sum(known) / len(known) if known else 1.0
    speeds = [(c.speed or (max(known, default=1.0) if i == 0 else average)) for i, c in enumerate(candidates)]
    return sorted(range(len(candidates)),
                  key=lambda i: (candidates[i].load, not candidates[i].holds_model, -speeds[i], i))
