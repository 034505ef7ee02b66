"""The launcher: starts, stops and reports the instances of one config through their backends."""


from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from ..config import PACKAGE_ROOT, GpuConfig
from ..errors import LaunchError
from .model import (
    BOOTSTRAP, FAST_SPACING, LOG_TAIL_LINES, Instance, InstanceStatus, LaunchContext, Outcome, POLL_INTERVAL, Record,
    STATE_ENV, WINDOWS,
)
from .agents import AGENT, agent_instance, agents_pool, spawn_agent, wants_agent
from .discovery import command_name, find_python, instances_of, listen_address
from .probing import port_in_use, probe
from .processes import process_alive, spawn_detached, start_token, terminate
from .locks import instance_lock, lock_held
from .diagnostics import explain
from .local import Backend, LocalProcesses, Say
from .ssh import SshProcesses
from .state_files import private_folder
from .status import Findings, judge, judge_agent, other_port, url_at_port
from ..pool.settings import pool_label


class Launcher:
    """Starts, stops and reports the instances of one config. Blocking: run it in a thread inside a server."""

    def __init__(self, config: GpuConfig, context: LaunchContext, say: Say | None = None,
                 remote: Backend | None = None) -> None:
        self.config = config
        self.context = context
        self.say: Say = say or (lambda message: None)
        self.local = LocalProcesses(context)
        self.remote: Backend = remote if remote is not None else SshProcesses(context, config.settings)

    def instances(self) -> list[Instance]:
        return instances_of(self.config)

    def find(self, name: str) -> Instance:
        """An instance by ``master``, worker id, worker name or key; a worker's pool agent by its name or key."""
        everything = self.instances()
        everything += [agent_instance(i) for i in everything if i.worker is not None]
        matches = (lambda i: i.key == name,
                   lambda i: i.kind != AGENT and i.worker is not None and str(i.worker.id) == name,
                   lambda i: i.name == name)
        for matches_name in matches:  # an id wins over a worker whose name looks like it
            found = next((i for i in everything if matches_name(i)), None)
            if found is not None:
                return found
        known = ", ".join(["master", *(str(i.worker.id) for i in everything if i.worker is not None)])
        raise LaunchError(f"no instance {name!r} in {self.context.config_path}; known: {known} (a worker id or name)")

    def agent_of(self, instance: Instance) -> Instance | None:
        """The pool agent beside the worker ``instance``: when the config asks for one (:func:`.agents.wants_agent`,
        a pool configured), or one the launcher started runs (the config may have changed since)."""
        if instance.worker is None or instance.kind == AGENT:
            return None
        agent = agent_instance(instance)
        if self.local.record(agent) is not None:
            return agent
        if not wants_agent(instance):
            return None
        try:
            return agent if agents_pool(self.config.settings) is not None else None
        except LaunchError:
            return agent  # a malformed COMFY_DISTRIBUTED_POOL: its start says so

    def backend(self, instance: Instance) -> Backend:
        if instance.kind == "external":
            host = instance.worker.host if instance.worker is not None else "?"
            raise LaunchError(f"{instance.label} runs on {host}, which the launcher cannot reach: start it "
                              f"there, or add an ssh block to {instance.field} so that the launcher can")
        return self.remote if instance.kind == "ssh" else self.local

    # --- logs -------------------------------------------------------------------------

    def log_tail(self, instance: Instance, lines: int = LOG_TAIL_LINES) -> tuple[str, str]:
        """Where the instance's log is and its last ``lines`` since its last start (local file, or over SSH).
        LaunchError for an instance the launcher cannot reach (its log is on its own machine)."""
        backend = self.backend(instance)
        return backend.log_name(instance), backend.log_tail(instance, lines)

    # --- starting ---------------------------------------------------------------------

    def launch(self, selected: list[Instance], mode: str = "slow") -> list[Outcome]:
        """Start what is not running. ``slow``: each is ready before the next starts; ``fast``: 2 s apart."""
        outcomes: list[Outcome] = []
        waiting: list[tuple[Outcome, Record]] = []
        for position, instance in enumerate(selected):
            outcome, record = self._start_one(instance)
            outcomes.append(outcome)
            if record is None:
                continue
            if mode == "slow":
                self._wait_ready([(outcome, record)])
            else:
                waiting.append((outcome, record))
                if position < len(selected) - 1:
                    time.sleep(FAST_SPACING)
        if waiting:
            self._wait_ready(waiting)
        return outcomes

    def start(self, instance: Instance, wait: bool = True) -> Outcome:
        outcome, record = self._start_one(instance)
        if record is not None and wait:
            self._wait_ready([(outcome, record)])
        return outcome

    def _start_one(self, instance: Instance) -> tuple[Outcome, Record | None]:
        if instance.kind == AGENT:
            return self._start_agent(instance), None
        try:
            backend = self.backend(instance)
            with self._locked(instance):  # check and spawn as one step: a second start sees the first's process
                outcome, record = self._check_and_spawn(instance, backend)
        except LaunchError as exc:
            self.say(f"{instance.label}: FAILED: {str(exc).splitlines()[0]}")
            return Outcome(instance, "failed", error=str(exc)), None
        agent = self.agent_of(instance) if wants_agent(instance) else None
        if agent is not None:  # at once: the agent waits for its ComfyUI to answer
            beside = self._start_agent(agent)
            if beside.error:
                outcome.error = f"{agent.label} could not be started: {beside.error}"
        return outcome, record

    def _start_agent(self, agent: Instance) -> Outcome:
        """Start the pool agent ``agent`` unless it runs (:mod:`.agents`)."""
        try:
            pool = agents_pool(self.config.settings)
            if pool is None:
                raise LaunchError("no pool is configured (settings.pool in gpu_config.json, or "
                                  "COMFY_DISTRIBUTED_POOL)")
            with self._locked(agent):
                record = self.local.record(agent)
                if record is not None:
                    self.say(f"{agent.label}: already running (pid {record.pid})")
                    return Outcome(agent, "running", record.pid, log=record.log)
                record = spawn_agent(self.local, self.context, agent, pool)
        except LaunchError as exc:
            self.say(f"{agent.label}: FAILED: {str(exc).splitlines()[0]}")
            return Outcome(agent, "failed", error=str(exc))
        self.say(f"{agent.label}: starting for {pool_label(pool)}, with the ComfyUI at {agent.url}: pid {record.pid}, "
                 f"log {record.log}")
        return Outcome(agent, "started", record.pid, log=record.log)

    def _locked(self, instance: Instance) -> contextlib.AbstractContextManager[None]:
        """One start or stop of ``instance`` at a time, across threads and processes (a lock file by its pid file)."""
        return instance_lock(self.local.lock_path(instance.key), instance.label)

    def _check_and_spawn(self, instance: Instance, backend: Backend) -> tuple[Outcome, Record | None]:
        found = probe(instance.url)
        if found.state == "comfyui":
            record = backend.record(instance)
            self.say(f"{instance.label}: already running on {instance.url}")
            return Outcome(instance, "running", record.pid if record else None), None
        record = backend.record(instance)
        if record is not None and found.state == "closed":  # ours, not answering yet: no second one
            self.say(f"{instance.label}: already starting (pid {record.pid})")
            return Outcome(instance, "started", record.pid, "already starting", log=record.log), record
        if found.state == "foreign" or (instance.kind == "local" and port_in_use(
                listen_address(instance.extra_args), instance.port)):
            raise LaunchError(self._port_taken(instance, found.detail))
        record = backend.spawn(instance)
        self.say(f"{instance.label}: starting on port {instance.port} with {record.python}: pid {record.pid}, "
                 f"log {record.log}")
        return Outcome(instance, "started", record.pid, log=record.log), record

    def _port_taken(self, instance: Instance, detail: str) -> str:
        finder = (f"'netstat -ano | findstr :{instance.port}'" if WINDOWS
                  else f"'ss -ltnp | grep :{instance.port}' or 'lsof -i :{instance.port}'")
        where = f"{instance.url}" if instance.kind != "local" else f"port {instance.port}"
        return (f"{where} is used by another program, not ComfyUI{': ' + detail if detail else ''}. Choose a free "
                f"port for {instance.field}.port in gpu_config.json, or stop that program ({finder} shows it)")

    def _wait_ready(self, waiting: list[tuple[Outcome, Record]]) -> None:
        """Poll every instance's GET /system_stats until it answers, it dies, or launch_timeout passes."""
        timeout = self.config.settings.launch_timeout
        started = time.monotonic()
        pending = list(waiting)
        next_alive_check = {id(o): 0.0 for o, _ in pending}
        while pending:
            for item in list(pending):
                outcome, record = item
                instance = outcome.instance
                backend = self.backend(instance)
                found = probe(instance.url)
                now = time.monotonic()
                if found.state == "comfyui":
                    outcome.detail = f"ready in {now - started:.1f} s"
                    self.say(f"{instance.label}: ready on {instance.url} ({outcome.detail})")
                    pending.remove(item)
                    continue
                if now >= next_alive_check[id(outcome)]:
                    next_alive_check[id(outcome)] = now + (0.0 if instance.kind == "local" else 2.0)
                    if not backend.alive(instance, record):
                        self._failed(outcome, self._early_exit(instance, record, backend, now - started))
                        pending.remove(item)
                        continue
                if found.state == "foreign":
                    self._failed(outcome, self._port_taken(instance, found.detail))
                    pending.remove(item)
                elif now - started > timeout:
                    self._failed(outcome, f"{instance.label} did not answer on {instance.url} within {timeout:.0f} s "
                                          f"(settings.launch_timeout). It still runs (pid {record.pid}): see "
                                          f"{backend.log_name(instance)}; stop it with '{command_name()} stop "
                                          f"{instance.worker.id if instance.worker else 'master'}' or raise "
                                          "settings.launch_timeout")
                    pending.remove(item)
            if pending:
                time.sleep(POLL_INTERVAL)

    def _failed(self, outcome: Outcome, message: str) -> None:
        outcome.action, outcome.error = "failed", message
        self.say(f"{outcome.instance.label}: FAILED: {message.splitlines()[0]}")

    def _early_exit(self, instance: Instance, record: Record, backend: Backend, seconds: float) -> str:
        tail = backend.log_tail(instance)
        text = (f"{instance.label} {backend.describe_exit(instance, record)} after {seconds:.1f} s, before it "
                f"answered on {instance.url}.")
        backend.stop(instance)  # forget the pid file
        if instance.worker is not None:
            self._stop_agent(agent_instance(instance))  # it would wait for a ComfyUI that is gone
        hint = explain(tail, instance, self._python_of(instance))
        if hint:
            text += f"\n  Probable cause: {hint}."
        shown = "\n".join(f"  | {line}" for line in tail.splitlines()) or "  | (the log is empty)"
        return f"{text}\n  Last lines of {backend.log_name(instance)}:\n{shown}"

    def _python_of(self, instance: Instance) -> str:
        if instance.worker is not None and instance.worker.ssh is not None:
            return instance.worker.ssh.python or "python3"
        try:
            return find_python(self.context.comfyui_root, instance.python, instance.field)[0]
        except LaunchError:
            return "python"

    # --- stopping -----------------------------------------------------------------------

    def stop(self, instance: Instance) -> Outcome:
        """Stop the instance, a worker's pool agent first (it then leaves the pool before its ComfyUI goes)."""
        if instance.kind == AGENT:
            outcome = self._stop_agent(instance)
            if outcome.action == "not_running":
                self.say(f"{instance.label}: not running")
            return outcome
        if instance.worker is not None:
            beside = self._stop_agent(agent_instance(instance))
            if beside.error:
                return Outcome(instance, "failed",
                               error=f"{beside.instance.label} could not be stopped: {beside.error}")
        try:
            backend = self.backend(instance)
            with self._locked(instance):  # a start in between would have its new pid file forgotten
                pid = backend.stop(instance)
        except LaunchError as exc:
            return Outcome(instance, "failed", error=str(exc))
        if pid is not None:
            self.say(f"{instance.label}: stopped (pid {pid})")
            return Outcome(instance, "stopped", pid)
        if probe(instance.url).state == "comfyui":
            message = (f"{instance.label} runs on {instance.url} but was not started by this launcher (no pid file "
                       f"in {self.context.state_dir}): stop it where it was started")
            self.say(f"{instance.label}: {message}")
            return Outcome(instance, "failed", error=message)
        self.say(f"{instance.label}: not running")
        return Outcome(instance, "not_running")

    def _stop_agent(self, agent: Instance) -> Outcome:
        """Stop the pool agent ``agent`` when the launcher started it (SIGTERM: it finishes its unit, within the
        stop's time, and leaves the pool)."""
        if self.local.read(agent.key) is None:
            return Outcome(agent, "not_running")
        try:
            with self._locked(agent):
                pid = self.local.stop(agent)
        except LaunchError as exc:
            return Outcome(agent, "failed", error=str(exc))
        if pid is None:
            return Outcome(agent, "not_running")
        self.say(f"{agent.label}: stopped (pid {pid})")
        return Outcome(agent, "stopped", pid)

    def restart(self, instance: Instance, wait: bool = True) -> Outcome:
        stopped = self.stop(instance)
        if stopped.error:
            return stopped
        return self.start(instance, wait=wait)

    def started_workers(self) -> list[Instance]:
        """Workers with a pid file of ours: the ones this launcher started."""
        found = []
        for instance in self.instances():
            if instance.worker is None or instance.kind == "external":
                continue
            try:
                if self.backend(instance).record(instance) is None:
                    continue
            except LaunchError:
                pass  # its machine cannot be reached now: stop() will say so
            found.append(instance)
        return found

    # --- status ---------------------------------------------------------------------------

    def status(self) -> list[InstanceStatus]:
        """Every instance, each worker's pool agent (when it has one) after it."""
        found = []
        for instance in self.instances():
            found.append(self._status_of(instance))
            agent = self.agent_of(instance)
            if agent is not None:
                found.append(judge_agent(agent, self.local.record(agent)))
        return found

    def _status_of(self, instance: Instance) -> InstanceStatus:
        """Probe the instance, read its pid file and lock, then judge (:mod:`.status`)."""
        if instance.kind == "external" and not instance.enabled:
            return InstanceStatus(instance, "disabled")  # another machine's address, maybe only an example: not probed
        found = probe(instance.url)
        record = None
        if instance.kind != "external":
            try:
                record = self.backend(instance).record(instance)
            except LaunchError:
                record = None
        elsewhere = None
        if found.state == "closed":
            moved = other_port(instance, record)
            moved_url = url_at_port(instance.url, moved) if moved is not None else None
            if moved_url is not None and probe(moved_url).state == "comfyui":
                elsewhere = moved
        held = found.state == "closed" and instance.kind != "external" and \
            lock_held(self.local.lock_path(instance.key))
        findings = Findings(found, record, elsewhere, held, time.time())
        return judge(instance, findings, self.config.settings.launch_timeout)

    # --- stop the workers when the master exits ------------------------------------------------

    def watcher_running(self) -> bool:
        record = self.local.read("watcher")
        return record is not None and process_alive(record.pid, record.token)

    def start_watcher(self) -> int | None:
        """A detached ``comfy-distributed watch`` that stops the started workers once the master exits."""
        if self.watcher_running():
            return None
        command = [sys.executable, "-c", BOOTSTRAP, str(PACKAGE_ROOT), "--comfyui", str(self.context.comfyui_root),
                   "--config", str(self.context.config_path), "--state-dir", str(self.context.state_dir), "watch"]
        pid = spawn_detached(command, dict(os.environ), self.context.comfyui_root, self.local.log_path("watcher"),
                             "watcher")
        self.local.write("watcher", Record(pid, 0, time.time(), "local", start_token(pid),
                                           str(self.local.log_path("watcher"))))
        return pid

    def stop_watcher(self) -> None:
        record = self.local.read("watcher")
        if record is not None and record.pid != os.getpid():
            if process_alive(record.pid, record.token):
                terminate(record.pid, record.token)
            self.local.forget("watcher")

    def watch_master(self, poll: float = 1.0) -> list[Outcome]:
        """Block while the master this launcher started runs; then stop the workers it started."""
        master = self.find("master")
        record = self.local.record(master)
        while record is not None and process_alive(record.pid, record.token):
            time.sleep(poll)
        self.say("the master has exited: stopping the workers the launcher started")
        outcomes = [self.stop(worker) for worker in self.started_workers()]
        # then the agents it started beside workers that it did not start
        outcomes += [self._stop_agent(agent_instance(i)) for i in self.instances() if i.worker is not None]
        self.local.forget("watcher")
        return outcomes


def state_dir_for(root: Path, explicit: str | None = None) -> Path:
    """``--state-dir``, else ``COMFY_DISTRIBUTED_STATE_DIR``, else ``<ComfyUI>/user/comfy-distributed``: a folder of
    this user's, made private (0700), since its pid files decide which processes a stop signals."""
    chosen = explicit or os.environ.get(STATE_ENV)
    path = Path(chosen).expanduser() if chosen else root / "user" / "comfy-distributed"
    return private_folder(path).resolve()


def make_folder(path: Path, what: str, option: str) -> Path:
    """``path`` created if need be and resolved; a failure names ``what`` and the ``option`` that picks another."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LaunchError(f"cannot create {what} {path} ({exc.strerror or exc}): pass {option} with a writable "
                          "folder") from None
    return path.resolve()


def master_launcher_factory(store: Any, comfyui_root: Path) -> Callable[[], Launcher]:
    """For the master's launch routes: a launcher over the current config, with the CLI's state folder."""

    def factory() -> Launcher:
        import logging

        log = logging.getLogger("comfy_distributed")
        context = LaunchContext(comfyui_root, store.path, state_dir_for(comfyui_root))
        return Launcher(store.get(), context, say=lambda message: log.info("Multi-GPU launcher: %s", message))

    return factory
