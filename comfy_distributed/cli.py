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
    token             create the API token (saved in gpu_config.json, readable by you only) and say how to use it
    venv              a shell with ComfyUI's Python environment active
    update            update ComfyUI (git pull) and its requirements
    update-nodes      update every custom node repository and its requirements

User errors are printed as one message (no traceback) and give exit code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import aiohttp

from .config import CONFIG_ENV, DEFAULT_CONFIG_PATH, GpuConfig, load_config, set_api_token
from .errors import DistributedError
from .prompt_hook import JOB_ID_EXTRA_DATA
from .worker_client import summarize_rejection
from .launcher import (
    WINDOWS,
    InstanceStatus,
    LaunchContext,
    LaunchError,
    Launcher,
    Outcome,
    command_name,
    cpu_hints,
    find_comfyui_root,
    find_python,
    make_folder,
    probe_host,
    state_dir_for,
)

TOKEN_ENV = "COMFY_DISTRIBUTED_TOKEN"
DEFAULT_OUTPUT = "comfy-distributed-output"
DEFAULT_TIMEOUT = 3600.0
MAX_IMAGE_BYTES = 256 * 2**20
"""Most bytes 'run' reads for one image from GET /view: more is a broken or hostile master, not an image."""
MODES = {
    "master": "start the master",
    "workers": "start every enabled worker",
    "all-fast": "start the master and every enabled worker, 2 s apart",
    "all-slow": "start the master and every enabled worker, each ready before the next",
    "stop": "stop what the launcher started (everything, or the instances named)",
    "status": "show every instance; exit code 1 when an enabled one is down",
    "restart": "stop and start one instance (master, a worker id or name)",
    "run": "queue an API-format workflow on the master, show progress, save the images",
    "token": "create the API token, save it in gpu_config.json (owner-only) and say how to use it",
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
    """``--config``, else ``COMFY_DISTRIBUTED_CONFIG``, else that of the extension installed in ``root`` (even when
    it has none yet: ``token`` creates it there), else this checkout's."""
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
    if not candidates:  # the extension is not installed in that ComfyUI: the config of the running copy
        candidates = [DEFAULT_CONFIG_PATH]
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
        raise LaunchError(f"'git pull' failed in {site.root} (see above): local changes, a diverged branch or a "
                          "checkout of a fixed version must be sorted out by hand ('git status' shows which)")
    requirements = site.root / "requirements.txt"
    if requirements.is_file() and not _run_step([python, "-m", "pip", "install", "-r", str(requirements)],
                                                 site.root, "update"):
        raise LaunchError(f"installing {requirements} with {python} failed (see above)")
    say(f"ComfyUI is up to date. Restart the instances to use it: {command_name()} stop, then all-slow.")
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


# --- the API token ----------------------------------------------------------------------------


def cmd_token(args: argparse.Namespace) -> int:
    """Create (or replace, or remove) ``settings.api_token``; the master uses it from its next request."""
    try:
        root: Path | None = find_comfyui_root(args.comfyui)
    except LaunchError:
        if args.comfyui:
            raise
        root = None  # the token needs only the config
    path, _exists = find_config(root, args.config)
    config = load_config(path)
    current = config.settings.api_token
    if args.remove:
        if current is None:
            say(f"{path} holds no API token: nothing to remove.")
            return 0
        set_api_token(path, None)
        say(f"Removed the API token from {path}. A master that listens beyond loopback (--listen) now refuses "
            "every /multigpu request until it has one again.")
        return 0
    if current is not None and not args.new:
        say(f"{path} already holds an API token (settings.api_token); '{command_name()} token --new' replaces it.")
        token = current
    else:
        token = secrets.token_urlsafe(32)
        set_api_token(path, token)
        say(f"{'Replaced' if current else 'Created'} the API token and saved it in {path} (settings.api_token; the "
            "file is now readable by you only).")
    say(f"\nToken: {token}\n\nUse it:\n"
        "  - the Multi-GPU sidebar panel asks for it once: paste it there (the browser keeps it)\n"
        f"  - scripts and the launcher's 'run': export {TOKEN_ENV}='{token}'\n"
        f"  - curl: -H \"Authorization: Bearer ${TOKEN_ENV}\"\n"
        "A running master uses it from its next request: no restart needed.")
    if os.environ.get(TOKEN_ENV) and os.environ[TOKEN_ENV] != token:
        print(f"warning: {TOKEN_ENV} is set in this shell to another value; on a master started with it, that value "
              "wins over the file", file=sys.stderr, flush=True)
    return 0


# --- run a workflow ---------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    url = args.master
    if url is None:
        try:
            url = setup(args, quiet=True).master_url
        except LaunchError:  # not in ComfyUI's folder: the default master
            url = "http://127.0.0.1:8188"
    prompt, extra_data = load_workflow(Path(args.workflow))
    for override in args.overrides:
        apply_override(prompt, override)
    output = Path(args.output)
    saved = asyncio.run(run_workflow(url.rstrip("/"), prompt, extra_data, output, args.timeout, sys.stdout))
    if not saved:
        say("The workflow finished but produced no images (it has no Save Image or Preview Image).")
    else:
        say(f"Saved {len(saved)} image(s) to {output.resolve()} (the master keeps its own: Save Image writes into its "
            "output folder, Preview Image into its temp folder)")
    return 0


def load_workflow(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The API-format prompt (``{node: ...}`` or ``{"prompt": {...}}``) and extra_data of a workflow file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LaunchError(f"{path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise LaunchError(f"{path} cannot be read as JSON: {exc}") from None
    extra: dict[str, Any] = {}
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict):
        extra = data["extra_data"] if isinstance(data.get("extra_data"), dict) else {}
        data = data["prompt"]
    if isinstance(data, dict) and isinstance(data.get("nodes"), list):
        raise LaunchError(f"{path} is a workflow in the UI's format; 'run' needs the API format: in ComfyUI use "
                          "Workflow > Export (API) and run the file it saves")
    if not isinstance(data, dict) or not data or not all(isinstance(n, dict) and "class_type" in n
                                                         for n in data.values()):
        raise LaunchError(f"{path} is not an API-format workflow (an object of nodes, each with a class_type): "
                          "export it from ComfyUI with Workflow > Export (API)")
    return data, extra


def _override_value(text: str, current: Any, where: str) -> Any:
    if isinstance(current, str):
        return text  # a file name, a prompt, a sampler: taken as written
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise LaunchError(f"--set {where}: expects true or false, not {text!r}")
    elif isinstance(current, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise LaunchError(f"--set {where}: expects a number, not {text!r}")
        if isinstance(current, int) and isinstance(value, float) and not value.is_integer():
            raise LaunchError(f"--set {where}: expects a whole number, not {text!r}")
        value = int(value) if isinstance(current, int) else value
    elif value is None and text != "null":
        value = text
    return value


def apply_override(prompt: dict[str, Any], override: str) -> None:
    """``NODE.INPUT=VALUE``: set one literal input of the workflow; the value keeps the input's type."""
    key, equals, text = override.partition("=")
    node_id, dot, name = key.strip().rpartition(".")
    if not equals or not dot or not node_id or not name:
        raise LaunchError(f"--set {override!r}: write NODE.INPUT=VALUE, e.g. --set 3.seed=42 (NODE is the node id "
                          "in the API-format file)")
    node = prompt.get(node_id)
    if node is None:
        raise LaunchError(f"--set {key}: the workflow has no node {node_id!r}; its nodes: "
                          + ", ".join(f"{n} ({prompt[n].get('class_type')})" for n in list(prompt)[:40]))
    inputs = node.get("inputs")
    if not isinstance(inputs, dict) or name not in inputs:
        known = sorted(inputs) if isinstance(inputs, dict) else []
        raise LaunchError(f"--set {key}: node {node_id} ({node.get('class_type')}) has no input {name!r}; its "
                          f"inputs: {', '.join(known) or 'none'}")
    current = inputs[name]
    if isinstance(current, list):
        raise LaunchError(f"--set {key}: that input is connected to node {current[0] if current else '?'}, not "
                          "typed in: set that node's input instead")
    inputs[name] = _override_value(text, current, key)


def auth_headers() -> dict[str, str]:
    token = os.environ.get(TOKEN_ENV)
    return {"Authorization": f"Bearer {token}"} if token else {}


def master_view(url: str) -> dict[str, str]:
    """Worker id -> the status the master's health checks see, when the master runs this extension."""
    request = urllib.request.Request(f"{url}/multigpu/status", headers=auth_headers())
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=3) as response:
            data = json.loads(response.read())
        return {str(w["id"]): str(w["status"]) for w in data.get("workers", [])}
    except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


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


async def run_workflow(url: str, prompt: dict[str, Any], extra_data: dict[str, Any], output: Path, timeout: float,
                       stream: IO[str]) -> list[Path]:
    """Queue ``prompt`` on the master, follow it on the websocket with a progress bar, save its images."""
    client_id = uuid.uuid4().hex
    display = ProgressDisplay(stream)
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(headers=auth_headers()) as session:
        try:
            ws = await session.ws_connect(f"{url}/ws", params={"clientId": client_id}, heartbeat=30,
                                          timeout=aiohttp.ClientWSTimeout(ws_close=10))
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            raise LaunchError(f"the master at {url} does not answer ({exc}): start it with '{command_name()} "
                              "master', or pass --master URL") from None
        async with ws:
            job_id = await _prepare_job(session, url, prompt, display.note)
            extra = {**extra_data, **({JOB_ID_EXTRA_DATA: job_id} if job_id else {})}
            prompt_id = await _queue(session, url, {"prompt": prompt, "client_id": client_id, "extra_data": extra})
            display.note(f"Queued prompt {prompt_id} on {url}")
            progress = Progress(prompt)
            await _follow(ws, session, url, prompt_id, job_id, progress, display, deadline, timeout)
        if progress.cached >= set(prompt):
            display.note("note: the master answered from its cache: this exact workflow ran before, so these are the "
                         "earlier images. Change a seed (--set NODE.seed=N) for new ones")
        history = await _get_json(session, f"{url}/history/{prompt_id}")
        refs = history_images(history, prompt_id, f"GET {url}/history/{prompt_id}")
        return await _save_images(session, url, refs, output, display.note)


async def _prepare_job(session: aiohttp.ClientSession, url: str, prompt: dict[str, Any],
                       note: Callable[[str], None]) -> str | None:
    """A job id from a master that runs this extension, so that its cluster events can be told apart.

    A refusal (no token, a wrong one, a Host check, a bad config, a Distributor it cannot plan) ends
    the run with the master's message; a master without the extension and a prompt without a
    Collector run as plain ComfyUI would.
    """
    status, text, answer = await _post_json(session, f"{url}/multigpu/prepare_job", {"prompt": prompt}, 30,
                                            f"POST {url}/multigpu/prepare_job failed")
    error = answer.get("error") if isinstance(answer, dict) and isinstance(answer.get("error"), str) else None
    if status == 200 and isinstance(answer, dict):
        return str(answer.get("job_id") or "") or None
    if status in (404, 405) and error is None:
        return None  # a master without this extension: the workflow runs there as it is
    if status == 400 and error is not None and "no Multi-GPU Collector" in error:
        note("note: the workflow has no Multi-GPU Collector, so it is not distributed (it runs on one instance)")
        return None
    if status == 401:
        hint = (f"set {TOKEN_ENV} to the master's token" if TOKEN_ENV not in os.environ
                else f"{TOKEN_ENV} does not hold the master's token")
        raise LaunchError(f"the master refused the job: {error or text[:300]} ({hint}; "
                          f"'{command_name()} token' creates one)")
    raise LaunchError(f"the master refused the job (HTTP {status} from POST /multigpu/prepare_job): "
                      f"{error or text[:300]}")


async def _post_json(session: aiohttp.ClientSession, url: str, body: dict[str, Any], timeout: float,
                     failure: str) -> tuple[int, str, Any]:
    """POST ``body``; the status, the text and its JSON (None when it is not JSON). ``failure`` starts the error."""
    try:
        async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            text = await response.text()
            status = response.status
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        raise LaunchError(f"{failure}: {exc}") from None
    try:
        return status, text, json.loads(text)
    except ValueError:
        return status, text, None


async def _queue(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> str:
    status, text, answer = await _post_json(session, f"{url}/prompt", body, 60, f"queueing on {url} failed")
    if status == 200 and isinstance(answer, dict) and "prompt_id" in answer:
        return str(answer["prompt_id"])
    if status == 400:
        raise LaunchError(f"the master refused the workflow: {summarize_rejection(answer)}")
    raise LaunchError(f"the master answered POST /prompt with HTTP {status}: {text[:300]}")


async def _get_json(session: aiohttp.ClientSession, url: str) -> Any:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=60)) as response:
            response.raise_for_status()
            return await response.json()
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
        raise LaunchError(f"GET {url} failed: {exc}") from None


async def _follow(ws: aiohttp.ClientWebSocketResponse, session: aiohttp.ClientSession, url: str, prompt_id: str,
                  job_id: str | None, progress: Progress, display: ProgressDisplay, deadline: float,
                  timeout: float) -> None:
    """Read the master's events until our prompt has finished; errors end it with a message."""
    looked_up: set[str] = set()
    while True:
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise asyncio.TimeoutError
            message = await ws.receive(timeout=remaining)
        except asyncio.TimeoutError:
            display.end()
            raise LaunchError(f"the workflow did not finish within {timeout:.0f} s (--timeout); it may still run "
                              f"on the master (prompt {prompt_id})") from None
        if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            display.end()
            raise LaunchError(f"the master at {url} closed the connection before the workflow finished: did it "
                              f"crash or restart? Its log says why ({command_name()} status shows where it is)")
        if message.type != aiohttp.WSMsgType.TEXT:
            continue  # previews
        try:
            event = json.loads(message.data)
            kind, data = event["type"], event.get("data") or {}
        except (ValueError, KeyError, TypeError):
            continue
        if kind.startswith("multigpu.") and job_id is None and str(data.get("job_id")) not in looked_up:
            looked_up.add(str(data.get("job_id")))
            job_id = await _job_of(session, url, prompt_id)
        if _apply(kind, data, prompt_id, job_id, progress, display):
            display.show(progress)
            display.end()
            return
        display.show(progress)


def _apply(kind: str, data: dict[str, Any], prompt_id: str, job_id: str | None, progress: Progress,
           display: ProgressDisplay) -> bool:
    """Update ``progress`` from one event; True when the prompt has finished successfully."""
    if kind.startswith("multigpu."):
        if job_id is None or data.get("job_id") != job_id:
            return False
        if kind == "multigpu.job_progress":
            units = data.get("units") or []
            progress.cluster = float(data.get("progress") or 0.0)
            progress.units = (sum(u.get("state") in ("done", "skipped", "given_up") for u in units), len(units))
        elif kind == "multigpu.worker_failed":
            display.note(f"warning: {data.get('message')}")
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
        raise LaunchError(f"the workflow failed on the master in node {data.get('node_id')} "
                          f"({data.get('node_type')}): {str(data.get('exception_message', '')).strip()}")
    elif kind == "execution_interrupted":
        display.end()
        raise LaunchError(f"the workflow was interrupted on the master (in node {data.get('node_id')})")
    return False


async def _job_of(session: aiohttp.ClientSession, url: str, prompt_id: str) -> str | None:
    try:
        status = await _get_json(session, f"{url}/multigpu/status")
        return next((j["job_id"] for j in status.get("jobs", []) if j.get("prompt_id") == prompt_id), None)
    except (LaunchError, AttributeError, KeyError, TypeError):
        return None


# --- the images a run made: the master's answer is checked, never trusted with a path ---------------


@dataclass(slots=True)
class ImageRef:
    """One image of a prompt's outputs, as the master's /history names it."""

    node_id: str
    filename: str
    subfolder: str
    kind: str
    """``type`` on the wire: output, temp or input."""

    def params(self) -> dict[str, str]:
        return {"filename": self.filename, "subfolder": self.subfolder, "type": self.kind}


def history_images(history: Any, prompt_id: str, where: str) -> list[ImageRef]:
    """The images of ``prompt_id``'s /history entry (node order, then batch order); a clear error on a bad shape."""
    if not isinstance(history, dict):
        raise _not_comfyui(where, "the answer", history)
    entry = history.get(prompt_id) or {}
    if not isinstance(entry, dict):
        raise _not_comfyui(where, repr(prompt_id), entry)
    status = entry.get("status") or {}
    if isinstance(status, dict) and status.get("status_str") == "error":
        raise LaunchError(f"the workflow failed on the master: {json.dumps(status.get('messages'))[-600:]}")
    outputs = entry.get("outputs") or {}
    if not isinstance(outputs, dict):
        raise _not_comfyui(where, "outputs", outputs)
    found: list[ImageRef] = []
    for node_id in sorted(outputs, key=lambda n: (len(n), n)):
        found += _node_images(node_id, outputs[node_id], where)
    return found


def _node_images(node_id: str, node: Any, where: str) -> list[ImageRef]:
    field = f"outputs[{node_id!r}]"
    node = {} if node is None else node
    if not isinstance(node, dict):
        raise _not_comfyui(where, field, node)
    images = node.get("images") or []
    if not isinstance(images, list):
        raise _not_comfyui(where, f"{field}.images", images, "a list")
    return [_image_ref(node_id, image, f"{field}.images[{index}]", where) for index, image in enumerate(images)]


def _image_ref(node_id: str, image: Any, field: str, where: str) -> ImageRef:
    if not isinstance(image, dict):
        raise _not_comfyui(where, field, image)
    values = {"filename": image.get("filename"), "subfolder": image.get("subfolder", ""),
              "type": image.get("type", "output")}
    for key, value in values.items():
        if not isinstance(value, str):
            raise _not_comfyui(where, f"{field}.{key}", value, "a string")
    return ImageRef(node_id, str(values["filename"]), str(values["subfolder"]), str(values["type"]))


def _not_comfyui(where: str, field: str, value: Any, expected: str = "an object") -> LaunchError:
    return LaunchError(f"the master's answer to {where} is not ComfyUI's: {field} should be {expected}, got "
                       f"{json.dumps(value)[:200]}")


_UNSAFE = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')
"""Separators (both), NUL and control characters, and what Windows refuses in a name (':' opens a stream)."""
_RESERVED = re.compile(r"(con|prn|aux|nul|com\d|lpt\d)(\..*)?", re.IGNORECASE)


def safe_name(text: str) -> str:
    """``text`` as one plain file name, ``""`` when nothing is left: a server's name must never choose the folder."""
    name = _UNSAFE.sub("_", text).strip(" .")  # no leading dots: no '..', no hidden files; Windows drops trailing
    if _RESERVED.fullmatch(name):
        name = f"_{name}"  # CON, NUL.png ... are devices on Windows
    stem, suffix = os.path.splitext(name)
    return stem[:120] + suffix[:16]


def _file_names(ref: ImageRef, index: int, name: str) -> Iterator[str]:
    """The master's name, then one naming the node and position, then that with -1, -2, ..."""
    yield name
    prefixed = f"{safe_name(ref.node_id) or 'node'}-{index}-{name}"
    yield prefixed
    stem, suffix = os.path.splitext(prefixed)
    for number in itertools.count(1):
        yield f"{stem}-{number}{suffix}"


async def _save_images(session: aiohttp.ClientSession, url: str, refs: list[ImageRef], output: Path,
                       note: Callable[[str], None]) -> list[Path]:
    """Fetch every image through GET /view and write it as a new file directly inside ``output``."""
    saved: list[Path] = []
    for ref in refs:
        blob = await _fetch_image(session, url, ref)
        name = safe_name(ref.filename) or "image.png"
        target = _write_new(_output_folder(output), _file_names(ref, len(saved), name), blob)
        if name != ref.filename:
            note(f"warning: the master named an image {ref.filename!r}, which is not a plain file name: saved as "
                 f"{target.name}")
        saved.append(target)
    return saved


def _output_folder(output: Path) -> Path:
    return make_folder(output, "the output folder", "--output")


def _write_new(folder: Path, names: Iterator[str], blob: bytes) -> Path:
    """``blob`` under the first free name; 'xb' (O_EXCL) never writes over, or through a link at, an existing one."""
    for name in itertools.islice(names, 1000):
        target = folder / name
        if name in ("", ".", "..") or Path(os.path.abspath(target)).parent != folder:  # safe_name's promise
            raise LaunchError(f"refusing to save an image as {name!r}: it would not land in {folder}")
        try:
            handle = open(target, "xb")
        except FileExistsError:
            continue
        except OSError as exc:
            raise LaunchError(f"cannot create {target}: {exc.strerror or exc}") from None
        with handle:
            try:
                handle.write(blob)
            except OSError as exc:  # disk full: no half image left behind (the file is ours, just created)
                handle.close()
                target.unlink(missing_ok=True)
                raise LaunchError(f"cannot write {target}: {exc.strerror or exc}") from None
        return target
    raise LaunchError(f"no free file name left in {folder} for an image: empty it or pass another --output")


async def _fetch_image(session: aiohttp.ClientSession, url: str, ref: ImageRef) -> bytes:
    """One image from GET /view, read in chunks and refused past MAX_IMAGE_BYTES (a server could send forever)."""
    limit = MAX_IMAGE_BYTES
    chunks: list[bytes] = []
    try:
        async with session.get(f"{url}/view", params=ref.params(),
                               timeout=aiohttp.ClientTimeout(total=120)) as response:
            response.raise_for_status()
            if (response.content_length or 0) > limit:
                raise _too_big(ref, limit)
            size = 0
            async for chunk in response.content.iter_chunked(1 << 16):
                size += len(chunk)
                if size > limit:  # chunked answers say no length: count what arrives
                    raise _too_big(ref, limit)
                chunks.append(chunk)
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        raise LaunchError(f"fetching {ref.filename!r} from the master failed: {exc}") from None
    return b"".join(chunks)


def _too_big(ref: ImageRef, limit: int) -> LaunchError:
    return LaunchError(f"the master's image {ref.filename!r} is more than {limit} bytes (the most 'run' reads "
                       "for one image): not saved")


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
        prog=command_name(), description="Start and control the ComfyUI instances of gpu_config.json.",
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
            sub.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE", dest="overrides",
                             help="change one input of the workflow for this run, e.g. --set 4.ckpt_name=my.safetensors"
                                  " --set 5.width=256 (repeatable; the file is not changed)")
        elif mode == "token":
            sub.add_argument("--new", action="store_true", help="replace the token the config already has")
            sub.add_argument("--remove", action="store_true", help="remove the token from the config")
    modes.add_parser("watch", parents=[common])  # internal: no help, so not listed
    return parser


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "master": cmd_launch, "workers": cmd_launch, "all-fast": cmd_launch, "all-slow": cmd_launch,
    "stop": cmd_stop, "status": cmd_status, "restart": cmd_restart, "run": cmd_run, "token": cmd_token,
    "venv": cmd_venv,
    "update": cmd_update, "update-nodes": cmd_update_nodes, "watch": cmd_watch,
}
MENU = ["all-slow", "all-fast", "master", "workers", "status", "stop", "token", "venv", "update", "update-nodes"]


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
    args.new = args.remove = False
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
        print(f"interrupted: instances started so far keep running ('{command_name()} stop' stops them)",
              file=sys.stderr, flush=True)
        return 130
