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
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable

import aiohttp

from .config import CONFIG_ENV, DEFAULT_CONFIG_PATH, GpuConfig, load_config
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
    find_comfyui_root,
    find_python,
    probe_host,
    state_dir_for,
)

TOKEN_ENV = "COMFY_DISTRIBUTED_TOKEN"
DEFAULT_OUTPUT = "comfy-distributed-output"
DEFAULT_TIMEOUT = 3600.0
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
        raise LaunchError(f"'git pull' failed in {site.root} (see above): local changes, a diverged branch or a "
                          "checkout of a fixed version must be sorted out by hand ('git status' shows which)")
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
    prompt, extra_data = load_workflow(Path(args.workflow))
    output = Path(args.output)
    saved = asyncio.run(run_workflow(url.rstrip("/"), prompt, extra_data, output, args.timeout, sys.stdout))
    if not saved:
        say("The workflow finished but produced no images (it has no Save Image or Preview Image).")
    else:
        say(f"Saved {len(saved)} image(s) to {output.resolve()}")
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
            raise LaunchError(f"the master at {url} does not answer ({exc}): start it with 'comfy-distributed "
                              "master', or pass --master URL") from None
        async with ws:
            job_id = await _prepare_job(session, url, prompt)
            extra = {**extra_data, **({JOB_ID_EXTRA_DATA: job_id} if job_id else {})}
            prompt_id = await _queue(session, url, {"prompt": prompt, "client_id": client_id, "extra_data": extra})
            display.note(f"Queued prompt {prompt_id} on {url}")
            await _follow(ws, session, url, prompt_id, job_id, Progress(prompt), display, deadline, timeout)
        entry = await _get_json(session, f"{url}/history/{prompt_id}")
        return await _save_images(session, url, (entry or {}).get(prompt_id) or {}, output)


async def _prepare_job(session: aiohttp.ClientSession, url: str, prompt: dict[str, Any]) -> str | None:
    """A job id from a master that runs this extension, so that its cluster events can be told apart."""
    try:
        async with session.post(f"{url}/multigpu/prepare_job", json={"prompt": prompt},
                                timeout=aiohttp.ClientTimeout(total=30)) as response:
            if response.status == 200:
                return str((await response.json()).get("job_id") or "") or None
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
        pass
    return None  # no Collector, no extension, or a token we lack: progress is matched through /multigpu/status


async def _queue(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> str:
    try:
        async with session.post(f"{url}/prompt", json=body, timeout=aiohttp.ClientTimeout(total=60)) as response:
            text = await response.text()
            status = response.status
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        raise LaunchError(f"queueing on {url} failed: {exc}") from None
    try:
        answer = json.loads(text)
    except ValueError:
        answer = None
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
                              "crash or restart? Its log says why (comfy-distributed status shows where it is)")
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


async def _save_images(session: aiohttp.ClientSession, url: str, entry: dict[str, Any], output: Path) -> list[Path]:
    """Every image of the prompt's outputs (node order, then batch order), via GET /view, into ``output``."""
    status = entry.get("status") or {}
    if status.get("status_str") == "error":
        raise LaunchError(f"the workflow failed on the master: {json.dumps(status.get('messages'))[-600:]}")
    saved: list[Path] = []
    outputs = entry.get("outputs") or {}
    for node_id in sorted(outputs, key=lambda n: (len(str(n)), str(n))):
        for image in (outputs[node_id] or {}).get("images") or []:
            params = {"filename": image["filename"], "subfolder": image.get("subfolder", ""),
                      "type": image.get("type", "output")}
            try:
                async with session.get(f"{url}/view", params=params,
                                       timeout=aiohttp.ClientTimeout(total=120)) as response:
                    response.raise_for_status()
                    blob = await response.read()
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise LaunchError(f"fetching {image['filename']} from the master failed: {exc}") from None
            output.mkdir(parents=True, exist_ok=True)
            target = output / Path(image["filename"]).name
            if target.exists() or target in saved:
                target = output / f"{node_id}-{len(saved)}-{target.name}"
            target.write_bytes(blob)
            saved.append(target)
    return saved


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
    modes.add_parser("watch", parents=[common])  # internal: no help, so not listed
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
        print("interrupted: instances started so far keep running ('comfy-distributed stop' stops them)",
              file=sys.stderr, flush=True)
        return 130
