"""``comfy-distributed``: start, stop and inspect the ComfyUI instances of gpu_config.json, run a workflow.

Run it from ComfyUI's folder (or pass ``--comfyui PATH``). Modes::

    master            start the master
    workers           start every enabled worker (local ones here, ssh ones on their machines)
    all-fast          the master and every enabled worker, 2 s apart, then wait until all answer
    all-slow          the same, each one answering before the next starts
    stop [NAME ...]   stop what the launcher started (everything, or the instances named)
    status            a table of every instance; exit code 1 when an enabled one is down
    restart NAME      stop and start one instance (master, a worker id or a worker name)
    run WORKFLOW.json queue an API-format workflow on the master, show progress, save the images
    venv              a shell with ComfyUI's Python environment active
    update            update ComfyUI (git pull) and its requirements
    update-nodes      update every custom node repository and its requirements

User errors are printed as one message (no traceback) and give exit code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .config import CONFIG_ENV, DEFAULT_CONFIG_PATH, GpuConfig, load_config
from .errors import DistributedError
from .launcher import (
    WINDOWS,
    InstanceStatus,
    LaunchContext,
    LaunchError,
    Launcher,
    Outcome,
    find_comfyui_root,
    find_python,
    probe_host,
    state_dir_for,
)
from .run_client import DEFAULT_OUTPUT, DEFAULT_TIMEOUT, TOKEN_ENV, master_view, run_workflow_file

MODES = {
    "master": "start the master",
    "workers": "start every enabled worker",
    "all-fast": "start the master and every enabled worker, 2 s apart",
    "all-slow": "start the master and every enabled worker, each ready before the next",
    "stop": "stop what the launcher started (everything, or the instances named)",
    "status": "show every instance; exit code 1 when an enabled one is down",
    "restart": "stop and start one instance (master, a worker id or name)",
    "run": "queue an API-format workflow on the master, show progress, save the images",
    "venv": "open a shell with ComfyUI's Python environment active",
    "update": "update ComfyUI (git pull) and its requirements",
    "update-nodes": "update every custom node repository and its requirements",
}


def say(message: str) -> None:
    print(message, flush=True)


# --- where things are ----------------------------------------------------------------------------


@dataclass(slots=True)
class Setup:
    root: Path
    config_path: Path
    config: GpuConfig
    state_dir: Path

    def launcher(self) -> Launcher:
        return Launcher(self.config, LaunchContext(self.root, self.config_path, self.state_dir), say=say)

    @property
    def master_url(self) -> str:
        return f"http://{probe_host(self.config.master.extra_args)}:{self.config.master.port}"


def find_config(root: Path | None, explicit: str | None) -> tuple[Path, bool]:
    """``--config``, else ``COMFY_DISTRIBUTED_CONFIG``, else the installed extension's, else this checkout's."""
    if explicit:
        path = Path(explicit).expanduser().resolve()
        if not path.is_file():
            raise LaunchError(f"--config {path} does not exist")
        return path, True
    if os.environ.get(CONFIG_ENV):
        path = Path(os.environ[CONFIG_ENV]).expanduser().resolve()
        return path, path.is_file()
    candidates = []
    if root is not None and (root / "custom_nodes").is_dir():
        candidates = [folder / "gpu_config.json" for folder in sorted((root / "custom_nodes").iterdir())
                      if (folder / "comfy_distributed" / "__init__.py").is_file()]
    candidates.append(DEFAULT_CONFIG_PATH)
    found = next((c for c in candidates if c.is_file()), None)
    return (found or candidates[0]).resolve(), found is not None


def setup(args: argparse.Namespace, quiet: bool = False) -> Setup:
    root = find_comfyui_root(args.comfyui)
    config_path, exists = find_config(root, args.config)
    config = load_config(config_path)
    state = state_dir_for(root, args.state_dir)
    if not quiet:
        say(f"ComfyUI: {root}\nConfig:  {config_path}{'' if exists else ' (not found: master only)'}\n"
            f"State:   {state} (pid files and logs)")
        if not exists:
            say(f"  To add workers, copy gpu_config.example.json to {config_path} and edit it.")
        for warning in config_warnings(config):
            say(f"warning: {warning}")
    return Setup(root, config_path, config, state)


def config_warnings(config: GpuConfig) -> list[str]:
    """Settings that will not work the way a newcomer expects."""
    warnings = []
    for index, worker in enumerate(config.workers):
        ssh = worker.ssh
        if ssh is None or not worker.enabled:
            continue
        if worker.host is None and ssh.host not in ("127.0.0.1", "localhost", "::1"):
            warnings.append(f"workers[{index}] is started on {ssh.host} but has no 'host': the master looks for it "
                            f"at 127.0.0.1:{worker.port}. Set workers[{index}].host to \"{ssh.host}\"")
        if worker.host not in (None, "127.0.0.1", "localhost") and "--listen" not in worker.extra_args:
            warnings.append(f"workers[{index}] has no --listen in extra_args, so ComfyUI on {ssh.host} accepts "
                            "connections from its own machine only: add --listen")
    return warnings


# --- launching and stopping ------------------------------------------------------------------------


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


# --- status ----------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    site = setup(args, quiet=True)
    statuses = site.launcher().status()
    seen_by_master = master_view(site.master_url) if statuses[0].state == "ready" else {}
    say(format_status(statuses, seen_by_master))
    down = [s for s in statuses if s.down]
    for status in down:
        name = "master" if status.instance.worker is None else str(status.instance.worker.id)
        hint = {"port-taken": f"another program holds port {status.instance.port}: change "
                              f"{status.instance.field}.port or stop that program",
                "starting": "still starting: run status again in a moment"}.get(
            status.state, f"start it with 'comfy-distributed {'master' if name == 'master' else 'workers'}'"
                          if status.instance.kind != "external" else "start it on its machine")
        print(f"{status.instance.label} is {status.state}: {hint}", file=sys.stderr, flush=True)
    return 1 if down else 0


def format_status(statuses: list[InstanceStatus], seen_by_master: dict[str, str]) -> str:
    headers = ["instance", "pid", "port", "state", "VRAM free/total", "master sees", "where", "note"]
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


# --- environment and updates -------------------------------------------------------------------


def cmd_venv(args: argparse.Namespace) -> int:
    site = setup(args, quiet=True)
    python, origin = find_python(site.root, site.config.master.python, "master")
    env = dict(os.environ)
    bin_dir = Path(python).parent
    folders = [str(bin_dir)] + ([str(bin_dir / "Scripts")] if (bin_dir / "Scripts").is_dir() else [])
    env["PATH"] = os.pathsep.join([*folders, env.get("PATH", "")])
    if (bin_dir.parent / "pyvenv.cfg").is_file():
        env["VIRTUAL_ENV"] = str(bin_dir.parent)
    env.pop("PYTHONHOME", None)
    shell = [os.environ.get("COMSPEC", "cmd.exe"), "/k"] if WINDOWS else [os.environ.get("SHELL") or "/bin/sh"]
    say(f"A shell in {site.root} with {python} ({origin}) first on PATH. Type 'exit' to leave it.")
    return subprocess.call(shell, cwd=site.root, env=env)


def _run_step(command: list[str], cwd: Path, what: str) -> bool:
    say(f"$ {' '.join(command)}")
    try:
        return subprocess.call(command, cwd=cwd) == 0
    except OSError as exc:
        raise LaunchError(f"{what}: cannot run {command[0]}: {exc.strerror or exc}") from None


def _git() -> str:
    git = shutil.which("git")
    if git is None:
        raise LaunchError("git is not installed: install it (https://git-scm.com) to update from the launcher")
    return git


def cmd_update(args: argparse.Namespace) -> int:
    site = setup(args, quiet=True)
    if not (site.root / ".git").exists():
        raise LaunchError(f"{site.root} is not a git checkout, so the launcher cannot update it: ComfyUI Desktop "
                          "updates itself, the portable build has update\\update_comfyui.bat")
    python, _origin = find_python(site.root, site.config.master.python, "master")
    if not _run_step([_git(), "pull", "--ff-only"], site.root, "update"):
        raise LaunchError(f"'git pull' failed in {site.root} (see above): local changes or a diverged branch "
                          "must be resolved by hand ('git status' shows them)")
    requirements = site.root / "requirements.txt"
    if requirements.is_file() and not _run_step([python, "-m", "pip", "install", "-r", str(requirements)],
                                                 site.root, "update"):
        raise LaunchError(f"installing {requirements} with {python} failed (see above)")
    say("ComfyUI is up to date. Restart the instances to use it: comfy-distributed stop, then all-slow.")
    return 0


def cmd_update_nodes(args: argparse.Namespace) -> int:
    site = setup(args, quiet=True)
    python, _origin = find_python(site.root, site.config.master.python, "master")
    folder = site.root / "custom_nodes"
    nodes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))) \
        if folder.is_dir() else []
    updated, failed, skipped = [], [], []
    git = _git() if nodes else ""
    for node in nodes:
        if not (node / ".git").exists():
            skipped.append(node.name)
            continue
        say(f"\n== {node.name}")
        if not _run_step([git, "pull", "--ff-only"], node, node.name):
            failed.append(f"{node.name} (git pull)")
            continue
        requirements = node / "requirements.txt"
        if requirements.is_file() and not _run_step([python, "-m", "pip", "install", "-r", str(requirements)],
                                                     node, node.name):
            failed.append(f"{node.name} (requirements)")
            continue
        updated.append(node.name)
    say(f"\nUpdated: {', '.join(updated) or 'none'}")
    if skipped:
        say(f"Not git repositories (left alone): {', '.join(skipped)}")
    if failed:
        print(f"error: failed: {', '.join(failed)} (see above)", file=sys.stderr, flush=True)
    return 1 if failed else 0


# --- run a workflow ---------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    url = args.master
    if url is None:
        try:
            url = setup(args, quiet=True).master_url
        except LaunchError:  # not in ComfyUI's folder: the default master
            url = "http://127.0.0.1:8188"
    saved = asyncio.run(run_workflow_file(Path(args.workflow), url.rstrip("/"), Path(args.output), args.timeout,
                                          sys.stdout))
    if not saved:
        say("The workflow finished but produced no images (it has no Save Image or Preview Image).")
    else:
        say(f"Saved {len(saved)} image(s) to {Path(args.output).resolve()}")
    return 0


# --- the command line -------------------------------------------------------------------------------


def _common(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument("--comfyui", metavar="PATH", default=default,
                        help="ComfyUI's folder (the one with main.py); default: the current folder")
    parser.add_argument("--config", metavar="FILE", default=default,
                        help="gpu_config.json; default: $COMFY_DISTRIBUTED_CONFIG, else the extension's")
    parser.add_argument("--state-dir", metavar="DIR", default=default,
                        help="pid files and logs; default: $COMFY_DISTRIBUTED_STATE_DIR, else "
                             "<ComfyUI>/user/comfy-distributed")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="comfy-distributed", description="Start and control the ComfyUI instances of gpu_config.json.",
        epilog=f"The token for the master's control endpoints is read from {TOKEN_ENV}.")
    _common(parser, None)
    common = argparse.ArgumentParser(add_help=False)
    _common(common, argparse.SUPPRESS)  # the options may also follow the mode
    modes = parser.add_subparsers(dest="mode", metavar="MODE")
    for mode, text in MODES.items():
        sub = modes.add_parser(mode, help=text, description=text, parents=[common])
        if mode == "stop":
            sub.add_argument("names", nargs="*", metavar="NAME", help="master, a worker id or a worker name")
        elif mode == "restart":
            sub.add_argument("name", metavar="NAME", help="master, a worker id or a worker name")
        elif mode == "run":
            sub.add_argument("workflow", metavar="WORKFLOW.json", help="a workflow in API format (Export (API))")
            sub.add_argument("--output", default=DEFAULT_OUTPUT, metavar="DIR", help="where to save the images")
            sub.add_argument("--master", metavar="URL", help="the master's address; default: from the config")
            sub.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                             help="give up after this long")
    modes.add_parser("watch", parents=[common], help=argparse.SUPPRESS)
    return parser


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "master": cmd_launch, "workers": cmd_launch, "all-fast": cmd_launch, "all-slow": cmd_launch,
    "stop": cmd_stop, "status": cmd_status, "restart": cmd_restart, "run": cmd_run, "venv": cmd_venv,
    "update": cmd_update, "update-nodes": cmd_update_nodes, "watch": cmd_watch,
}
MENU = ["all-slow", "all-fast", "master", "workers", "status", "stop", "venv", "update", "update-nodes"]


def menu(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """No mode given: a numbered menu at a terminal (the seed's double-click behaviour), else the usage."""
    if not sys.stdin.isatty():
        parser.print_help()
        return 2
    say("ComfyUI-Distributed launcher")
    for number, mode in enumerate(MENU, 1):
        say(f"  {number}) {mode:<13} {MODES[mode]}")
    answer = input(f"Choose 1-{len(MENU)} (anything else quits): ").strip()
    if not answer.isdigit() or not 1 <= int(answer) <= len(MENU):
        return 0
    args.mode = MENU[int(answer) - 1]
    args.names = []
    return COMMANDS[args.mode](args)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.mode is None:
            return menu(args, parser)
        return COMMANDS[args.mode](args)
    except DistributedError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return 130
