"""The modes that start, stop, restart, watch and report the instances of the config."""

from __future__ import annotations

import argparse
import sys
import time


from ..errors import WorkerError
from ..launcher import InstanceStatus, Launcher, Outcome, command_name, cpu_hints
from ..worker_client import Limits, run_blocking
from .site import Setup, auth_headers, say, setup


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


def new_lines(shown: list[str], now: list[str]) -> list[str]:
    """The lines of ``now`` (a log's tail) that come after what was ``shown``: found by the last lines shown;
    everything when the log restarted (its earlier lines are gone from the tail)."""
    for width in range(min(len(shown), 5), 0, -1):
        tail = shown[-width:]
        for start in range(len(now) - width, -1, -1):
            if now[start:start + width] == tail:
                return now[start + width:]
    return now


def cmd_status(args: argparse.Namespace) -> int:
    site = setup(args, quiet=True)
    statuses = site.launcher().status()
    seen_by_master, line = master_view(site.master_url) if statuses[0].state == "ready" else ({}, None)
    say(format_status(statuses, seen_by_master))
    if line:
        say(f"cluster: {line}")
    down = [s for s in statuses if s.down]
    for status in down:
        name = "master" if status.instance.worker is None else str(status.instance.worker.id)
        hint = {"port-taken": f"another program holds port {status.instance.port}: change "
                              f"{status.instance.field}.port or stop that program",
                "starting": "still starting: run status again in a moment"}.get(
            status.state, f"start it with '{command_name()} {'master' if name == 'master' else 'workers'}'"
                          if status.instance.kind != "external" else "start it on its machine")
        print(f"{status.instance.label} is {status.state}: {hint}", file=sys.stderr, flush=True)
    return 1 if down else 0



def format_status(statuses: list[InstanceStatus], seen_by_master: dict[str, str]) -> str:
    headers = ["instance", "pid", "port", "state", "(V)RAM free/total", "master sees", "where", "note"]
    rows = []
    for status in statuses:
        instance = status.instance
        where = {"local": "here", "external": instance.url}.get(instance.kind, "")
        if instance.kind == "ssh" and instance.worker is not None and instance.worker.ssh is not None:
            where = f"ssh {instance.worker.ssh.host}"
        key = None if instance.worker is None else str(instance.worker.id)
        rows.append([instance.label, str(status.pid or "-"), str(instance.port), status.state, status.vram or "-",
                     seen_by_master.get(key, "-") if key else "-", where, status.detail])
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [headers, *rows]]
    return "\n".join(lines)



def master_view(url: str) -> tuple[dict[str, str], str | None]:
    """Worker id -> the status the master's health checks see, and the cluster's line (prompts, units, time
    left), when the master runs this extension."""
    try:
        data = run_blocking(url, lambda client: client.get_json("/multigpu/status"), headers=auth_headers(),
                            limits=Limits(connect_timeout=3.0, request_timeout=3.0))
        seen = {str(w["id"]): str(w["status"]) for w in data.get("workers", [])}
    except (WorkerError, KeyError, TypeError, AttributeError):
        return {}, None
    line = (data.get("cluster") or {}).get("line") if isinstance(data.get("cluster"), dict) else None
    return seen, line if isinstance(line, str) else None
