"""The modes that start, stop, restart, watch and report the instances of the config."""

from __future__ import annotations

import argparse
import signal
import sys
import textwrap
import time
from dataclasses import dataclass, field


from ..config import GpuConfig, unknown_key_warnings
from ..errors import WorkerError
from ..launcher import InstanceStatus, Launcher, Outcome, command_name, cpu_hints
from ..worker_client import Limits, run_blocking
from .site import Setup, auth_headers, config_warnings, say, setup


def cmd_launch(args: argparse.Namespace) -> int:
    site = setup(args)
    launcher = site.launcher()
    everything = launcher.instances()
    chosen = [] if args.mode == "workers" else [everything[0]]
    if args.mode != "master":
        for instance in everything[1:]:
            if not instance.enabled:
                continue
            if instance.kind == "external":
                say(f"{instance.label}: on {instance.url}, not started here (no ssh block): start it on its machine")
                continue
            chosen.append(instance)
    if not chosen:
        say("Nothing to start: no enabled worker in the config.")
        return 0
    for hint in cpu_hints(chosen):
        say(f"warning: {hint}")
    outcomes = launcher.launch(chosen, mode="fast" if args.mode == "all-fast" else "slow")
    maybe_watch(site, launcher, outcomes)
    return summarize(site, outcomes)



def maybe_watch(site: Setup, launcher: Launcher, outcomes: list[Outcome]) -> None:
    """With settings.stop_workers_on_exit, a detached watcher stops the started workers when the master exits."""
    if not site.config.settings.stop_workers_on_exit:
        return
    master = launcher.find("master")
    if launcher.local.record(master) is None:
        return
    pid = launcher.start_watcher()
    if pid is not None:
        say(f"When the master exits, the workers the launcher started are stopped too (settings.stop_workers_on_exit;"
            f" watcher pid {pid}).")



def summarize(site: Setup, outcomes: list[Outcome]) -> int:
    started = sum(o.action == "started" for o in outcomes)
    running = sum(o.action == "running" for o in outcomes)
    failed = [o for o in outcomes if o.error]
    say(f"\n{len(outcomes)} instance(s): {started} started, {running} already running, {len(failed)} failed.")
    for outcome in failed:
        print(f"error: {outcome.error}", file=sys.stderr, flush=True)
    if any(o.instance.worker is None and not o.error for o in outcomes):
        say(f"Master: {site.master_url}")
    return 1 if failed else 0



def cmd_stop(args: argparse.Namespace) -> int:
    site = setup(args)
    launcher = site.launcher()
    if args.names:
        chosen = [launcher.find(name) for name in args.names]
    else:  # workers first: the master's jobs then see them go through its own health checks
        chosen = [i for i in launcher.instances()[1:] if i.kind != "external"] + [launcher.instances()[0]]
    if not args.names or any(i.worker is None for i in chosen):
        launcher.stop_watcher()
    outcomes = [launcher.stop(instance) for instance in chosen]
    failed = [o for o in outcomes if o.error]
    for outcome in failed:
        print(f"error: {outcome.error}", file=sys.stderr, flush=True)
    return 1 if failed else 0



def cmd_restart(args: argparse.Namespace) -> int:
    site = setup(args)
    launcher = site.launcher()
    instance = launcher.find(args.name)
    is_master = instance.worker is None
    if is_master:
        launcher.stop_watcher()  # or it would stop the workers when the master goes down for the restart
    outcome = launcher.restart(instance)
    if is_master:
        maybe_watch(site, launcher, [outcome])
    return summarize(site, [outcome])



def cmd_watch(args: argparse.Namespace) -> int:
    site = setup(args, quiet=True)
    outcomes = site.launcher().watch_master()
    return 1 if any(o.error for o in outcomes) else 0



LOGS_MAX_LINES = 1000
FOLLOW_INTERVAL = 1.0


def cmd_logs(args: argparse.Namespace) -> int:
    """The last lines of a launched instance's log; with ``--follow``, then what it writes next (Ctrl+C ends)."""
    site = setup(args, quiet=True)
    launcher = site.launcher()
    instance = launcher.find(args.name)
    lines = max(1, min(int(args.lines), LOGS_MAX_LINES))
    where, text = launcher.log_tail(instance, lines)
    if not text.strip():
        print(f"{instance.label}: its log {where} is empty or missing: was it started by "
              f"'{command_name()}'?", file=sys.stderr, flush=True)
        if not args.follow:
            return 1
    say(f"==> {instance.label}: {where} <==")
    if text:
        say(text)
    if not args.follow:
        return 0
    shown = text.splitlines()
    ctrl_c_ends()
    try:
        while True:
            time.sleep(FOLLOW_INTERVAL)
            _, text = launcher.log_tail(instance, LOGS_MAX_LINES)
            fresh = new_lines(shown, text.splitlines())
            if fresh:
                say("\n".join(fresh))
                shown = (shown + fresh)[-LOGS_MAX_LINES:]
    except KeyboardInterrupt:
        return 0


def ctrl_c_ends() -> None:
    """Ctrl+C (SIGINT) ends ``logs -f`` however it was started: a process inherits an ignored or blocked SIGINT
    from whatever started it (a script's background job, a test runner's thread), and Python then never raises
    KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if hasattr(signal, "pthread_sigmask"):  # POSIX
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def new_lines(shown: list[str], now: list[str]) -> list[str]:
    """The lines of ``now`` (a log's tail) that come after what was ``shown``: found by the last lines shown;
    everything when the log restarted (its earlier lines are gone from the tail)."""
    for width in range(min(len(shown), 5), 0, -1):
        tail = shown[-width:]
        for start in range(len(now) - width, -1, -1):
            if now[start:start + width] == tail:
                return now[start + width:]
    return now


STATUS_WIDTH = 100
"""Columns ``status`` keeps within: its table clips long names, its sentences wrap."""


def cmd_status(args: argparse.Namespace) -> int:
    site = setup(args, quiet=True)
    statuses = site.launcher().status()
    view = master_view(site.master_url) if statuses[0].state == "ready" else MasterView()
    say(format_status(statuses, view.workers))
    if view.line:
        say(wrapped(f"cluster: {view.line}"))
    for warning in status_warnings(site.config, view.warnings):
        say(wrapped(f"warning: {warning}"))
    down = [s for s in statuses if s.down]
    for status in down:
        hint = status.hint or status.detail or "see the table above"
        print(wrapped(f"{status.instance.label} is {status.state}: {hint}"), file=sys.stderr, flush=True)
    return 1 if down else 0


def wrapped(text: str, width: int = STATUS_WIDTH) -> str:
    """A sentence in lines of at most ``width`` columns, the lines after the first indented; commands and paths
    are never split (a word longer than a line keeps its own line)."""
    return textwrap.fill(text, width, subsequent_indent="  ", break_long_words=False, break_on_hyphens=False)


def status_warnings(config: GpuConfig, from_master: list[str] | None) -> list[str]:
    """What the config gets wrong: the master's ``config_warnings`` when it answered (the config it runs with),
    else the same check of the file here (its unknown keys), then the launcher's (an ssh worker without a host
    or --listen); each once."""
    found = unknown_key_warnings(config) if from_master is None else from_master
    return list(dict.fromkeys([*found, *config_warnings(config)]))


STATUS_HEADERS = ["instance", "pid", "port", "state", "(V)RAM free/total", "master sees", "where", "note"]
INSTANCE, VRAM, MASTER_SEES, NOTE = 0, 4, 5, 7
NAME_WITH_ID = 24
"""Columns of an instance's cell cut while its worker id still shows: ``GPU for the big ... (worker 1)``."""
LEAST_INSTANCE = 16


def format_status(statuses: list[InstanceStatus], seen_by_master: dict[str, str],
                  width: int = STATUS_WIDTH) -> str:
    """The status table within ``width`` columns where it can be: a wide one gives up, in this order, the
    "master sees" column when the master saw nothing, the device name after the (V)RAM figures, the end of long
    instance names (their worker id kept), the notes (the hints under the table say more), then the worker id
    of a long name. The state, the port and the address are never cut."""
    rows = [_status_row(status, seen_by_master) for status in statuses]
    widths = [max(len(row[i]) for row in [STATUS_HEADERS, *rows]) for i in range(len(STATUS_HEADERS))]
    shown = list(range(len(STATUS_HEADERS)))

    def excess() -> int:
        return sum(widths[i] for i in shown) + 2 * (len(shown) - 1) - width

    def shrink(column: int, least: int) -> None:
        widths[column] = max(min(least, widths[column]), widths[column] - max(excess(), 0))

    if excess() > 0 and all(row[MASTER_SEES] == "-" for row in rows):
        shown.remove(MASTER_SEES)
    shrink(VRAM, len(STATUS_HEADERS[VRAM]))
    shrink(INSTANCE, NAME_WITH_ID)
    shrink(NOTE, 0)
    if widths[NOTE] < len(STATUS_HEADERS[NOTE]):
        shown.remove(NOTE)
    shrink(INSTANCE, LEAST_INSTANCE)
    lines = []
    for number, row in enumerate([STATUS_HEADERS, *rows]):
        cells = [row[i] if number == 0 or i != INSTANCE else _clip_label(statuses[number - 1], widths[i])
                 for i in shown]
        lines.append("  ".join(clip(cell, widths[i]).ljust(widths[i]) for cell, i in zip(cells, shown)).rstrip())
    return "\n".join(lines)


def _status_row(status: InstanceStatus, seen_by_master: dict[str, str]) -> list[str]:
    instance = status.instance
    where = {"local": "here", "agent": "here", "external": instance.url.removeprefix("http://")}.get(instance.kind, "")
    if instance.kind == "ssh" and instance.worker is not None and instance.worker.ssh is not None:
        where = f"ssh {instance.worker.ssh.host}"
    key = None if instance.worker is None or instance.kind == "agent" else str(instance.worker.id)
    return [instance.label, str(status.pid or "-"), str(instance.port), status.state, status.vram or "-",
            seen_by_master.get(key, "-") if key else "-", where, status.detail]


def _clip_label(status: InstanceStatus, width: int) -> str:
    """The instance's label in ``width`` columns: a long worker name is cut, its ``(worker ID)`` kept."""
    instance = status.instance
    if len(instance.label) <= width or instance.worker is None:
        return instance.label
    suffix = f" (worker {instance.worker.id})"
    room = width - len(suffix)
    return clip(instance.name, room) + suffix if room >= 6 else instance.label


def clip(text: str, width: int) -> str:
    """``text`` cut to ``width`` columns, ending in ``...`` when cut."""
    return text if len(text) <= width else text[:max(width - 3, 0)] + "..."


@dataclass(slots=True)
class MasterView:
    """What the master's ``GET /multigpu/status`` says, when it runs this extension."""

    workers: dict[str, str] = field(default_factory=dict)
    """Worker id -> the status its health checks see."""
    line: str | None = None
    """The cluster's line: prompts, units, time left."""
    warnings: list[str] | None = None
    """Its ``config_warnings``; None when it did not answer them."""


def master_view(url: str) -> MasterView:
    """The master's view of the cluster; an empty one when it does not answer as this extension."""
    try:
        data = run_blocking(url, lambda client: client.get_json("/multigpu/status"), headers=auth_headers(),
                            limits=Limits(connect_timeout=3.0, request_timeout=3.0))
        seen = {str(w["id"]): str(w["status"]) for w in data.get("workers", [])}
    except (WorkerError, KeyError, TypeError, AttributeError):
        return MasterView()
    cluster = data.get("cluster")
    line = cluster.get("line") if isinstance(cluster, dict) else None
    warnings = data.get("config_warnings")
    return MasterView(seen, line if isinstance(line, str) else None,
                      [str(w) for w in warnings] if isinstance(warnings, list) else None)
