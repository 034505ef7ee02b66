"""What ``run`` shows while the master works: the progress of one prompt, drawn on one line."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import IO, Any


from .. import events
from ..errors import RunError


FINISHED_UNITS = ("done", "master", "skipped", "given_up")
"""Unit states after which a unit changes no more, once its job is over (``master``: the master re-ran it)."""
DONE_UNITS = ("done", "skipped", "given_up")
"""Unit states counted as finished while the job runs (a unit the master re-runs finishes with its prompt)."""


@dataclass(slots=True)
class Progress:
    """What the master reported so far about one prompt; ``line()`` draws it.

    Nodes count once each, and only the prompt's own: a node ComfyUI took from its cache
    (``execution_cached``) counts as run, and the nodes a Collector expands into when the master re-runs a
    unit (ids such as ``3.multigpu.2.5``) move the bar of their Collector, not the count.
    """

    prompt: dict[str, Any]
    done: set[str] = field(default_factory=set)
    """Nodes of ``prompt`` that ran or came from the cache: never more than the prompt has."""
    current: str | None = None
    """The node of ``prompt`` that runs now (for an expanded node: the prompt's node it belongs to)."""
    step: tuple[int, int] | None = None
    cluster: float | None = None
    """The workers' share, 0-1, from ``multigpu.job_progress``; 1 once the job is over."""
    units: tuple[int, int] | None = None
    """Units finished, of all units: from ``multigpu.job_progress``, then final from ``multigpu.job_done``."""
    cached: set[str] = field(default_factory=set)
    """Nodes the master took from its cache (``execution_cached``)."""
    left_out: int = 0
    """Units the job left out (given up or skipped), from ``multigpu.job_done``."""
    job_over: bool = False
    """The job's outcome arrived (or the master's prompt ended): nothing moves its units back any more."""
    unit_states: list[str] = field(default_factory=list)
    """Every unit's state in the last ``multigpu.job_progress``."""

    def fraction(self) -> float:
        total = max(len(self.prompt), 1)
        current = self.step[0] / self.step[1] if self.step and self.step[1] else 0.0
        running = current if self.current is not None and self.current not in self.done else 0.0
        master = min((len(self.done) + running) / total, 1.0)
        return master if self.cluster is None else (master + self.cluster) / 2

    def line(self, width: int = 30, floor: float = 0.0) -> str:
        fraction = max(self.fraction(), floor)
        filled = int(fraction * width)
        text = f"[{'#' * filled}{'.' * (width - filled)}] {int(fraction * 100):3d}%  master: " \
               f"{len(self.done)}/{len(self.prompt)} nodes"
        if self.current is not None and self.current in self.prompt:
            text += f", {self.prompt[self.current].get('class_type', '?')}"
            if self.step:
                text += f" {self.step[0]}/{self.step[1]}"
        if self.units is not None:
            text += f" | cluster: {self.units[0]}/{self.units[1]} units done"
            if self.left_out:
                text += f", {self.left_out} left out"
        elif self.job_over and self.cluster is not None:
            text += " | cluster: done"
        return text

    def prompt_node(self, node: Any, display: Any = None) -> str | None:
        """The node of the prompt that ``node`` is or was expanded from; None when it is none of them."""
        for candidate in (node, display):
            if candidate is not None and str(candidate) in self.prompt:
                return str(candidate)
        text = "" if node is None else str(node)
        while "." in text:  # ids of expanded nodes begin with their parent's id and a dot
            text = text.rsplit(".", 1)[0]
            if text in self.prompt:
                return text
        return None

    def ran(self, nodes: Any) -> None:
        """``nodes`` ran (or came from the cache): the prompt's own count once each."""
        self.done.update(str(n) for n in nodes if str(n) in self.prompt)

    def track_units(self, states: list[str]) -> None:
        """A ``multigpu.job_progress``'s units; ignored once the job is over (a late report moves nothing back)."""
        if self.job_over:
            return
        self.unit_states = states
        self.units = (sum(state in DONE_UNITS for state in states), len(states))

    def end_job(self, left_out: int | None = None) -> None:
        """The job is over: every unit finished, those the master re-ran included. ``left_out``: the units it
        left out, as ``multigpu.job_done`` lists them (None: counted from the last unit states)."""
        missing = sum(state in ("skipped", "given_up") for state in self.unit_states) if left_out is None \
            else left_out
        total = self.units[1] if self.units is not None else None
        if total is not None:
            self.units = (max(total - missing, 0), total)
        self.left_out = missing
        self.cluster = 1.0
        self.job_over = True



class ProgressDisplay:
    """One self-rewriting line on a terminal; otherwise a line per 10 % and per finished node."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.last = (-1, -1)
        self.shown = 0.0
        """The bar never moves back (it would when the first cluster event adds the workers' share)."""

    def show(self, progress: Progress) -> None:
        self.shown = max(self.shown, progress.fraction())
        if self.tty:
            self.stream.write("\r" + progress.line(floor=self.shown).ljust(100)[:120])
        else:
            key = (int(self.shown * 10), len(progress.done))
            if key == self.last:
                return
            self.last = key
            self.stream.write(progress.line(floor=self.shown) + "\n")
        self.stream.flush()

    def note(self, message: str) -> None:
        self.stream.write(("\n" if self.tty else "") + message + "\n")
        self.stream.flush()

    def end(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()



def apply_event(kind: str, data: dict[str, Any], prompt_id: str, job_id: str | None, progress: Progress,
                display: ProgressDisplay) -> bool:
    """Update ``progress`` from one event; True when the prompt has finished successfully."""
    if kind.startswith("multigpu."):
        if job_id is not None and data.get("job_id") == job_id:
            _apply_job_event(kind, data, progress, display)
        return False
    if data.get("prompt_id") not in (None, prompt_id):
        return False
    if kind == "execution_cached":
        nodes = [str(n) for n in data.get("nodes") or []]
        progress.cached.update(n for n in nodes if n in progress.prompt)
        progress.ran(nodes)
    elif kind == "executing":
        if progress.current is not None:
            progress.ran([progress.current])
        node = data.get("node")
        if node is None and data.get("prompt_id") == prompt_id:
            progress.current, progress.step = None, None
            if progress.cluster is not None and not progress.job_over:
                progress.end_job()  # the prompt ended, so its Collector had every unit: the job is over
            return True
        progress.current, progress.step = progress.prompt_node(node, data.get("display_node")), None
    elif kind == "progress":
        node = progress.prompt_node(data.get("node"))
        progress.current = node if node is not None else progress.current
        progress.step = (int(data.get("value") or 0), int(data.get("max") or 0))
    elif kind == "execution_error":
        display.end()
        raise RunError(f"the workflow failed on the master in node {data.get('node_id')} "
                       f"({data.get('node_type')}): {str(data.get('exception_message', '')).strip()}")
    elif kind == "execution_interrupted":
        display.end()
        raise RunError(f"the workflow was interrupted on the master (in node {data.get('node_id')})")
    return False


def _apply_job_event(kind: str, data: dict[str, Any], progress: Progress, display: ProgressDisplay) -> None:
    """One ``multigpu.*`` event of our job."""
    if kind == events.JOB_PROGRESS:
        units = [u for u in data.get("units") or [] if isinstance(u, dict)]
        if not progress.job_over:
            progress.cluster = float(data.get("progress") or 0.0)
        progress.track_units([str(u.get("state")) for u in units])
    elif kind == events.JOB_DONE and not data.get("cancelled"):
        missing = data.get("units_missing")
        progress.end_job(len(missing) if isinstance(missing, list) else None)
    elif kind == events.WORKER_FAILED:
        display.note(f"warning: {data.get('message')}")
    elif kind == events.NOTICE:
        display.note(f"note: {data.get('message')}")
