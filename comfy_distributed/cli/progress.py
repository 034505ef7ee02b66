"""What ``run`` shows while the master works: the progress of one prompt, drawn on one line."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import IO, Any


from .. import events
from ..errors import RunError


@dataclass(slots=True)
class Progress:
    """What the master reported so far about one prompt; ``line()`` draws it."""

    prompt: dict[str, Any]
    done: set[str] = field(default_factory=set)
    current: str | None = None
    step: tuple[int, int] | None = None
    cluster: float | None = None
    units: tuple[int, int] | None = None
    """Worker units finished, of all units, from ``multigpu.job_progress``."""
    cached: set[str] = field(default_factory=set)
    """Nodes the master took from its cache (``execution_cached``)."""

    def fraction(self) -> float:
        total = max(len(self.prompt), 1)
        current = self.step[0] / self.step[1] if self.step and self.step[1] else 0.0
        master = min((len(self.done) + (current if self.current not in self.done else 0.0)) / total, 1.0)
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
        return text



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
        if job_id is None or data.get("job_id") != job_id:
            return False
        if kind == events.JOB_PROGRESS:
            units = data.get("units") or []
            progress.cluster = float(data.get("progress") or 0.0)
            progress.units = (sum(u.get("state") in ("done", "skipped", "given_up") for u in units), len(units))
        elif kind == events.WORKER_FAILED:
            display.note(f"warning: {data.get('message')}")
        elif kind == events.NOTICE:
            display.note(f"note: {data.get('message')}")
        return False
    if data.get("prompt_id") not in (None, prompt_id):
        return False
    if kind == "execution_cached":
        progress.cached.update(str(n) for n in data.get("nodes") or [])
        progress.done.update(str(n) for n in data.get("nodes") or [])
    elif kind == "executing":
        if progress.current is not None:
            progress.done.add(progress.current)
        node = data.get("node")
        if node is None and data.get("prompt_id") == prompt_id:
            progress.current, progress.step = None, None
            return True
        progress.current, progress.step = (None if node is None else str(node)), None
    elif kind == "progress":
        progress.current = str(data.get("node")) if data.get("node") is not None else progress.current
        progress.step = (int(data.get("value") or 0), int(data.get("max") or 0))
    elif kind == "execution_error":
        display.end()
        raise RunError(f"the workflow failed on the master in node {data.get('node_id')} "
                          f"({data.get('node_type')}): {str(data.get('exception_message', '')).strip()}")
    elif kind == "execution_interrupted":
        display.end()
        raise RunError(f"the workflow was interrupted on the master (in node {data.get('node_id')})")
    return False
