"""Which job an agent serves next: a fair share of the pool for every job, with no I/O (tested by feeding it).

Each agent keeps its own credit per job and runs a smooth weighted round robin (the one nginx uses): each time it
serves a unit, every eligible job earns its weight and the served job pays the total. With equal weights that is a
plain round robin that starts after the job served last, so two masters' jobs each get about half of the agents.
A tie goes to a job the agent has not booked yet, so a small job submitted behind a big one is served on the next
turn of whichever agent frees first, not after the big one (nor a turn later). A weight
(the job record's, default 1) gives a job that much more of the pool. An agent tries the jobs in :func:`order`;
the first that has a unit for it is served and :func:`charge` books it.

Among jobs of equal credit, one whose units load the checkpoint the agent's ComfyUI ran last comes first (its model
is likely still loaded, as queue routing prefers): that costs no fairness, since only ties are reordered.
"""

from __future__ import annotations

from typing import Collection, Mapping, Sequence

Credit = Mapping[str, float]


def order(eligible: Sequence[tuple[str, float]], credit: Credit, loaded: Collection[str] = ()) -> list[str]:
    """The eligible jobs (``(job_id, weight)``, oldest first) in the order to try them: most credit after this
    turn's earnings first; a tie goes to a job not booked in ``credit`` yet (new work starts at once), then to one
    in ``loaded`` (its checkpoint is the agent's last), then to the older."""
    ranked = sorted(enumerate(eligible), key=lambda item: (-(credit.get(item[1][0], 0.0) + item[1][1]),
                                                           item[1][0] in credit, item[1][0] not in loaded, item[0]))
    return [job_id for _, (job_id, _) in ranked]


def charge(eligible: Sequence[tuple[str, float]], credit: Credit, served: str,
           empty: Collection[str] = ()) -> dict[str, float]:
    """The credit after serving ``served``: every eligible job earns its weight but those found ``empty`` (tried
    first, nothing for this agent), the served one pays the total. Credit stays within one turn's total either way,
    so a job idle for long does not come back owed a burst. Jobs no longer eligible are forgotten."""
    total = sum(weight for _, weight in eligible)
    after = {job_id: credit.get(job_id, 0.0) + (0.0 if job_id in empty else weight) for job_id, weight in eligible}
    if served in after:
        after[served] -= total
    return {job_id: max(-total, min(total, value)) for job_id, value in after.items()}
