"""What an instance is doing now, as ``status`` reports it: a state and, when it is not ready, what to do.

"starting" is a passing state, never a verdict: an instance is starting only while a start is under way,
that is while another launcher holds its lock, or while its pid file is younger than
``settings.launch_timeout``. After that the launcher says what it found instead:

- ``wrong-port``: it does not answer on its configured port, but the ComfyUI the launcher started for it
  (its pid file records the port it was started with) answers on another one: the config's port was
  changed after the start, so one of the two must change back;
- ``not-answering``: its process runs, but has answered on no port the launcher knows of for longer than
  a start may take;
- otherwise ``ready``, ``port-taken`` (another program answers), ``down`` or ``disabled``.

A worker's pool agent (:mod:`.agents`) answers on no port: it is ``up`` while the process the launcher started for it
runs, else ``down`` (``disabled`` beside a disabled worker).

:func:`judge` and :func:`judge_agent` decide from what the launcher found (the probes, the pid file, the lock); they
do no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from .discovery import command_name
from .model import Instance, InstanceStatus, Record
from .probing import Probe, vram_text


@dataclass(slots=True, frozen=True)
class Findings:
    """What the launcher found out about one instance before judging it."""

    found: Probe
    """The answer on the instance's configured address."""
    record: Record | None = None
    """The live pid file of the process the launcher started for it."""
    elsewhere: int | None = None
    """The port, other than the configured one, on which that process answers as ComfyUI."""
    lock_held: bool = False
    """Another launcher (a thread or process) is starting or stopping it right now."""
    now: float = 0.0
    """The wall-clock time (``time.time()``) of the findings; pid files record their start in that clock."""


def url_at_port(url: str, port: int) -> str | None:
    """``url`` with another port; None when its port is not explicit (a worker whose host is a URL without a
    port: the configured port is then not where it answers, so no other port can be told apart)."""
    parts = urlsplit(url)
    if parts.port is None or parts.hostname is None:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return urlunsplit((parts.scheme, f"{host}:{port}", parts.path, parts.query, parts.fragment))


def other_port(instance: Instance, record: Record | None) -> int | None:
    """The port the launcher started ``instance`` on, when it is not the configured one (else None)."""
    if record is None or record.port in (0, instance.port) or not 0 < record.port < 65536:
        return None
    return record.port


def judge(instance: Instance, findings: Findings, launch_timeout: float) -> InstanceStatus:
    """The instance's state, a short note for the table and, unless it is ready, a hint: what to do."""
    found, record = findings.found, findings.record
    pid = record.pid if record else None
    if found.state == "comfyui":
        note = "" if record or instance.kind == "external" else "not started by this launcher"
        return InstanceStatus(instance, "ready", pid, vram_text(found.stats), note)
    if found.state == "foreign":
        return InstanceStatus(instance, "port-taken", pid, detail=found.detail or "another program answers",
                              hint=f"another program holds port {instance.port}: change {instance.field}.port or "
                                   "stop that program")
    if record is not None and findings.elsewhere is not None:
        return _wrong_port(instance, record, findings.elsewhere)
    if record is not None:
        return _silent(instance, record, findings, launch_timeout)
    if findings.lock_held:
        return InstanceStatus(instance, "starting", detail="another launcher is starting it",
                              hint="another launcher is starting or stopping it now: run status again in a moment")
    if not instance.enabled:
        return InstanceStatus(instance, "disabled")
    return InstanceStatus(instance, "down", hint=_start_hint(instance))


def _name(instance: Instance) -> str:
    """How the CLI's commands name the instance: ``master`` or the worker's id."""
    return "master" if instance.worker is None else str(instance.worker.id)


def _start_hint(instance: Instance) -> str:
    if instance.kind == "external":
        return "start it on its machine"
    return f"start it with '{command_name()} {'master' if instance.worker is None else 'workers'}'"


def _wrong_port(instance: Instance, record: Record, elsewhere: int) -> InstanceStatus:
    return InstanceStatus(
        instance, "wrong-port", record.pid, detail=f"answers on port {elsewhere}",
        hint=f"not answering on port {instance.port}; the ComfyUI the launcher started for it (pid {record.pid}) "
             f"answers on {elsewhere}: fix `port` in gpu_config.json ({instance.field}.port: {elsewhere}) or "
             f"restart it on {instance.port} with '{command_name()} restart {_name(instance)}'")


def _silent(instance: Instance, record: Record, findings: Findings, launch_timeout: float) -> InstanceStatus:
    """A process of ours that answers nowhere: starting while its start may still be under way, else a verdict."""
    age = max(0.0, findings.now - record.started)
    if findings.lock_held or age <= launch_timeout:
        return InstanceStatus(instance, "starting", record.pid, detail=f"started {age:.0f} s ago",
                              hint=f"still starting (pid {record.pid}, {age:.0f} s of settings.launch_timeout = "
                                   f"{launch_timeout:g} s): run status again in a moment")
    moved = other_port(instance, record)
    where = (f"on port {instance.port}" if moved is None
             else f"on port {instance.port}, nor on port {moved} it was started with")
    since = f"in the {age:.0f} s since its start" if record.started > 0 else "since its start"
    return InstanceStatus(
        instance, "not-answering", record.pid, detail=f"pid {record.pid} runs, answers nowhere",
        hint=f"its process (pid {record.pid}) runs but has not answered {where} {since} (settings.launch_timeout "
             f"= {launch_timeout:g} s): see its log with '{command_name()} logs {_name(instance)}', then restart "
             f"it with '{command_name()} restart {_name(instance)}'")


def judge_agent(agent: Instance, record: Record | None) -> InstanceStatus:
    """A pool agent's state from the live pid file of the process the launcher started for it."""
    if record is not None:
        return InstanceStatus(agent, "up", record.pid, detail="pool agent")
    if not agent.enabled:
        return InstanceStatus(agent, "disabled")
    command = command_name()
    return InstanceStatus(agent, "down", detail="pool agent",
                          hint=f"its process is not running: see why with '{command} logs {agent.key}', start it "
                               f"again with '{command} restart {agent.key}' (its worker too: '{command} restart "
                               f"{_name(agent)}')")
