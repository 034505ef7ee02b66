"""Start, find and stop the ComfyUI instances that ``gpu_config.json`` names: the master and its workers.

An *instance* is the master or one worker. A local one runs as a detached process of ComfyUI's
own Python in ComfyUI's folder, with ``CUDA_VISIBLE_DEVICES`` from ``cuda_device``, ``--port`` from
the config and ``extra_args`` split into arguments (never given to a shell). Its output goes to
``<state>/<key>.log`` and its pid to ``<state>/<key>.pid`` (JSON), ``<state>`` being
``<ComfyUI>/user/comfy-distributed`` unless ``--state-dir`` or ``COMFY_DISTRIBUTED_STATE_DIR`` says
otherwise; ``<key>`` is ``master`` or ``worker-<id>``. Starting and stopping an instance holds
``<state>/<key>.lock`` (and a lock per thread), so that two launchers at once (API and CLI, a
button pressed twice) never start it twice. A worker with an ``ssh`` block is started and
stopped on its own machine by :mod:`.ssh`. An instance is running when its port answers
``GET /system_stats`` as ComfyUI, and only instances that are not running are started.

Every failure is a :class:`LaunchError` whose message says what to do about it.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol
from urllib.parse import urlsplit

from .config import CONFIG_ENV, PACKAGE_ROOT, GpuConfig, WorkerConfig
from .errors import LaunchError
from .role import ROLE_ENV

STATE_ENV = "COMFY_DISTRIBUTED_STATE_DIR"
FAST_SPACING = 2.0
"""Seconds between two starts in ``all-fast`` (the seed's value)."""
POLL_INTERVAL = 0.25
PROBE_TIMEOUT = 2.0
STOP_TIMEOUT = 15.0
LOCK_TIMEOUT = 10.0
"""Seconds a start or stop of an instance waits for another one in progress (a check and spawn take a few)."""
LOG_TAIL_LINES = 30
LOG_MARK = "===== comfy-distributed:"
"""First characters of the line written to a log before each start; the tail shown after a failure
starts after the last one."""
WINDOWS = os.name == "nt"
BOOTSTRAP = ("import sys; sys.path.insert(0, sys.argv.pop(1)); from comfy_distributed.cli import main; "
             "sys.exit(main(sys.argv[1:]))")
"""Runs the CLI from the package's folder (``-c``, not ``-m`` + PYTHONPATH: python_embeded ignores PYTHONPATH)."""


# --- what to run --------------------------------------------------------------------------------


@dataclass(slots=True)
class Instance:
    """The master or a worker, as the launcher sees it."""

    key: str
    """``master`` or ``worker-<id>``: names the pid and log files."""
    name: str
    field: str
    """Where it is in gpu_config.json (``master``, ``workers[1]``), for messages."""
    port: int
    url: str
    """Where the launcher checks that it answers."""
    cuda_device: int | None
    extra_args: str
    python: str | None
    enabled: bool = True
    kind: str = "local"
    """``local`` (a process here), ``ssh`` (started over SSH), ``external`` (on another machine, not ours to start)."""
    worker: WorkerConfig | None = None

    @property
    def label(self) -> str:
        return "master" if self.worker is None else f"{self.name} (worker {self.worker.id})"


@dataclass(slots=True)
class LaunchContext:
    comfyui_root: Path
    config_path: Path
    state_dir: Path


@dataclass(slots=True)
class Record:
    """What a pid file holds."""

    pid: int
    port: int
    started: float
    where: str = "local"
    token: str | None = None
    """Identifies the process beyond its pid (Linux start time), so a reused pid is not taken for it."""
    log: str = ""
    python: str = ""


@dataclass(slots=True)
class Outcome:
    """What happened to one instance: started, running (already), stopped, not_running, failed, skipped."""

    instance: Instance
    action: str
    pid: int | None = None
    detail: str = ""
    error: str | None = None
    log: str | None = None

    def as_json(self) -> dict[str, Any]:
        worker = self.instance.worker
        return {"worker_id": None if worker is None else worker.id, "name": self.instance.name,
                "action": self.action, "ok": self.error is None, "pid": self.pid, "error": self.error,
                "log": self.log}


@dataclass(slots=True)
class InstanceStatus:
    instance: Instance
    state: str
    """ready, starting, down, disabled, port-taken."""
    pid: int | None = None
    vram: str | None = None
    detail: str = ""

    @property
    def down(self) -> bool:
        return self.instance.enabled and self.state != "ready"


def instances_of(config: GpuConfig) -> list[Instance]:
    """The master, then every worker in config order."""
    master = config.master
    result = [Instance("master", "master", "master", master.port, f"http://{probe_host(master.extra_args)}:"
                       f"{master.port}", master.cuda_device, master.extra_args, master.python)]
    for index, worker in enumerate(config.workers):
        kind = "ssh" if worker.ssh is not None else ("local" if is_local_host(worker.host) else "external")
        result.append(Instance(f"worker-{worker.id}", worker.display_name, f"workers[{index}]", worker.port,
                               worker.base_url, worker.cuda_device, worker.extra_args, worker.python,
                               worker.enabled, kind, worker))
    return result


# --- ComfyUI's folder, its Python, the command line ------------------------------------------------


COMMAND_ENV = "COMFY_DISTRIBUTED_COMMAND"
"""Set by the wrappers to the name they were started as, so that every hint names a command the user has."""


def command_name() -> str:
    """How the user runs the launcher here: the wrapper, ``comfy-distributed`` or ``python -m comfy_distributed``."""
    named = os.environ.get(COMMAND_ENV, "").strip()
    if named:
        return named
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    if program.startswith("comfy-distributed"):
        return "comfy-distributed"
    if program == "main.py":  # inside ComfyUI (the sidebar's launch): the wrapper next to this package
        return str(PACKAGE_ROOT / ("launch_distributed.bat" if WINDOWS else "launch_distributed.sh"))
    return "python -m comfy_distributed"


def gpu_seen() -> bool:
    """Whether this machine shows a GPU that ComfyUI can use without --cpu (NVIDIA, AMD ROCm, a Mac's MPS)."""
    if sys.platform == "darwin":
        return True  # Apple silicon: ComfyUI uses MPS
    if shutil.which("nvidia-smi") or shutil.which("rocm-smi"):
        return True
    return sys.platform.startswith("linux") and any(Path(p).exists() for p in ("/dev/nvidia0", "/dev/kfd"))


def cpu_hints(instances: list["Instance"]) -> list[str]:
    """For a machine without a GPU: the local instances that will not start without --cpu."""
    if gpu_seen():
        return []
    missing = [i for i in instances if i.kind == "local" and "--cpu" not in split_args(i.extra_args, i.field)]
    if not missing:
        return []
    fields = ", ".join(f"{i.field}.extra_args" for i in missing)
    return [f"this machine shows no GPU (no nvidia-smi or /dev/nvidia0): ComfyUI stops at start unless it runs "
            f"with --cpu. Add --cpu to {fields} and set cuda_device to null (see 'No GPU, Mac or AMD?' in the README)"]


def looks_like_comfyui(folder: Path) -> bool:
    return (folder / "main.py").is_file() and ((folder / "comfy").is_dir() or (folder / "folder_paths.py").is_file())


def find_comfyui_root(explicit: str | None, cwd: Path | None = None, extension: Path | None = PACKAGE_ROOT) -> Path:
    """``--comfyui``, else the current folder or one above it, else the ComfyUI this extension is installed in.

    ``extension`` is the extension's folder (None: do not look there).
    """
    if explicit:
        root = Path(explicit).expanduser().resolve()
        if not (root / "main.py").is_file():
            raise LaunchError(f"{root} has no main.py, so it is not ComfyUI's folder. {ROOT_HINT}")
        return root
    cwd = (cwd or Path.cwd()).resolve()
    candidates = [cwd, *list(cwd.parents)[:3]]
    if extension is not None and extension.parent.name == "custom_nodes":
        candidates.append(extension.parent.parent)
    for folder in candidates:
        if looks_like_comfyui(folder):
            return folder
    raise LaunchError(f"ComfyUI's folder (the one with main.py) was not found in {cwd} or above it. {ROOT_HINT}")


ROOT_HINT = ("Run the launcher from ComfyUI's folder or pass --comfyui PATH. ComfyUI Desktop keeps it inside the "
             "app (for example .../resources/ComfyUI) and its Python in the .venv of your ComfyUI documents folder: "
             "pass --comfyui with the first and set master.python to the second.")


def _venv_pythons(folder: Path) -> list[Path]:
    return [folder / "Scripts" / "python.exe", folder / "bin" / "python"] if WINDOWS else \
        [folder / "bin" / "python", folder / "Scripts" / "python.exe"]


def find_python(root: Path, override: str | None, field: str) -> tuple[str, str]:
    """ComfyUI's interpreter and where it came from: config, venv, .venv, python_embeded, else the running one."""
    if override:
        return _configured_python(root, override, field), f"{field}.python"
    for name in ("venv", ".venv"):
        folder = root / name
        if folder.is_dir():
            for candidate in _venv_pythons(folder):
                if candidate.is_file():
                    return str(candidate), f"ComfyUI's {name}"
            raise LaunchError(f"{folder} has no Python (bin/python or Scripts\\python.exe), so ComfyUI's environment "
                              f"is incomplete: recreate it ('python -m venv {name}', then install requirements.txt) "
                              f"or set {field}.python in gpu_config.json to the interpreter to use")
    for folder in (root.parent / "python_embeded", root / "python_embeded"):
        for candidate in (folder / "python.exe", folder / "python"):
            if candidate.is_file():
                return str(candidate), "the portable build's python_embeded"
    return sys.executable, "the running Python (no venv, .venv or python_embeded found in ComfyUI's folder)"


def _configured_python(root: Path, value: str, field: str) -> str:
    path = Path(value).expanduser()
    if not path.is_absolute() and len(path.parts) == 1 and not path.suffix == ".exe" and "/" not in value:
        import shutil

        found = shutil.which(value)
        if found:
            return found
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        raise LaunchError(f"{field}.python: {path} does not exist. Set it to the python of ComfyUI's environment "
                          "(for example venv/bin/python or venv\\Scripts\\python.exe), or remove it to let the "
                          "launcher look for venv, .venv and python_embeded")
    return str(path)


def split_args(text: str, field: str) -> list[str]:
    """``extra_args`` as arguments, split like a shell would, quotes respected; nothing is expanded."""
    try:
        parts = shlex.split(text, posix=not WINDOWS)
    except ValueError as exc:
        raise LaunchError(f"{field}.extra_args: cannot be split into arguments ({exc}): check the quotes in "
                          f"{text!r}") from None
    if WINDOWS:  # posix=False keeps quotes (and backslashes, which Windows paths need)
        parts = [p[1:-1] if len(p) >= 2 and p[0] == p[-1] == '"' else p for p in parts]
    for part in parts:
        if part == "--port" or part.startswith("--port="):
            raise LaunchError(f"{field}.extra_args sets --port, but the port comes from {field}.port: remove "
                              "--port from extra_args")
    return parts


def listen_address(extra_args: str) -> str:
    """The first address ComfyUI binds with these arguments (``--listen`` alone means every address)."""
    try:
        parts = shlex.split(extra_args, posix=not WINDOWS)
    except ValueError:
        return "127.0.0.1"
    for index, part in enumerate(parts):
        if part.startswith("--listen="):
            return part.split("=", 1)[1].split(",")[0].strip() or "0.0.0.0"
        if part == "--listen":
            value = parts[index + 1] if index + 1 < len(parts) else ""
            return "0.0.0.0" if not value or value.startswith("-") else value.split(",")[0].strip()
    return "127.0.0.1"


def probe_host(extra_args: str) -> str:
    address = listen_address(extra_args).strip("[]")
    if address in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{address}]" if ":" in address else address


@functools.lru_cache(maxsize=1)
def _own_addresses() -> frozenset[str]:
    names = {"localhost", socket.gethostname().lower()}
    try:
        names |= {str(info[4][0]) for info in socket.getaddrinfo(socket.gethostname(), None)}
    except OSError:
        pass
    return frozenset(names)


def is_local_host(host: str | None) -> bool:
    """Whether a worker's ``host`` is this machine (no host means this machine)."""
    if not host:
        return True
    name = (urlsplit(host).hostname or "") if "://" in host else host.strip("[]")
    try:
        address = ipaddress.ip_address(name)
        if address.is_loopback or address.is_unspecified:
            return True
    except ValueError:
        pass
    return name.lower() in _own_addresses()


# --- is it running? ------------------------------------------------------------------------------

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(slots=True)
class Probe:
    state: str
    """comfyui (answers GET /system_stats as ComfyUI), foreign (something else answers), closed."""
    stats: dict[str, Any] | None = None
    detail: str = ""


def probe(url: str, timeout: float = PROBE_TIMEOUT) -> Probe:
    """Ask ``url``'s ``GET /system_stats`` (no proxy: these are direct addresses)."""
    try:
        with _NO_PROXY.open(f"{url.rstrip('/')}/system_stats", timeout=timeout) as response:
            body = response.read(1_000_000)
    except urllib.error.HTTPError as exc:
        exc.close()
        return Probe("foreign", detail=f"it answers HTTP {exc.code} to GET /system_stats")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, (ConnectionRefusedError, FileNotFoundError)) or "refused" in str(reason).lower():
            return Probe("closed")
        if isinstance(reason, (TimeoutError, socket.timeout)) or "timed out" in str(reason).lower():
            return Probe("foreign", detail="it accepts connections but does not answer HTTP")
        return Probe("closed", detail=str(reason))
    try:
        stats = json.loads(body)
    except ValueError:
        return Probe("foreign", detail="its GET /system_stats is not JSON")
    if isinstance(stats, dict) and isinstance(stats.get("system"), dict) and isinstance(stats.get("devices"), list):
        return Probe("comfyui", stats)
    return Probe("foreign", detail="its GET /system_stats is not ComfyUI's")


def port_in_use(address: str, port: int) -> bool:
    """Whether binding ``address:port`` fails the way ComfyUI's own bind would."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        if not WINDOWS:  # as asyncio does: a port in TIME_WAIT is free
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address.strip("[]"), port))
        except OSError as exc:
            return exc.errno in (98, 48, 10048, 10013)  # EADDRINUSE (Linux, macOS, Windows), WSAEACCES
    return False


def vram_text(stats: dict[str, Any] | None) -> str | None:
    try:
        device = (stats or {}).get("devices", [])[0]
        free, total = device["vram_free"], device["vram_total"]
        name = str(device.get("name", ""))[:24]
        memory = "RAM " if device.get("type") == "cpu" or name == "cpu" else ""  # a --cpu instance reports system RAM
        return f"{memory}{free / 2**30:.1f}/{total / 2**30:.1f} GiB {name}".strip()
    except (IndexError, KeyError, TypeError, AttributeError, ZeroDivisionError):
        return None


# --- local processes ----------------------------------------------------------------------------

_CHILDREN: dict[int, "subprocess.Popen[bytes]"] = {}
"""Processes this process started: polled (and so reaped) instead of signalled, never garbage-collected
while they run."""
_EXITED: dict[int, int] = {}


def start_token(pid: int) -> str | None:
    """The process's start time on Linux (field 22 of /proc/PID/stat), else None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()[19]


def process_alive(pid: int, token: str | None = None) -> bool:
    """Whether ``pid`` runs and is the process the token was taken from (zombies are dead)."""
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        _EXITED[pid] = child.returncode
        _CHILDREN.pop(pid, None)
        return False
    if WINDOWS:
        return _windows_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            return False
        if fields[0] in ("Z", "X"):
            return False
        return token is None or fields[19] == token
    return True


def _windows_alive(pid: int) -> bool:
    import ctypes

    kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return False
    try:
        code = ctypes.c_ulong()
        return bool(kernel32.GetExitCodeProcess(handle, ctypes.byref(code))) and code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


def exit_code(pid: int) -> int | None:
    """The exit code of a process this process started and saw exit."""
    child = _CHILDREN.get(pid)
    return _EXITED.get(pid) if child is None else child.poll()


def spawn_detached(command: list[str], env: dict[str, str], cwd: Path, log_path: Path, note: str) -> int:
    """Start ``command`` in its own session/process group, output appended to ``log_path``; returns the pid."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n{LOG_MARK} {note} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                  f"{LOG_MARK} command: {subprocess.list2cmdline(command) if WINDOWS else shlex.join(command)}\n"
                  .encode())
        log.flush()
        options: dict[str, Any] = {}
        if sys.platform == "win32":
            options["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
        else:
            options["start_new_session"] = True
        try:
            child = subprocess.Popen(command, cwd=str(cwd), env=env, stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, **options)
        except OSError as exc:
            raise LaunchError(f"cannot run {command[0]}: {exc.strerror or exc}") from None
    _CHILDREN[child.pid] = child
    return child.pid


def terminate(pid: int, token: str | None, timeout: float = STOP_TIMEOUT) -> None:
    """Stop the process and its group: politely, then by force; returns once it is gone."""
    if WINDOWS:
        subprocess.run(["taskkill", "/PID", str(pid), "/T", "/F"], capture_output=True, check=False)
        _wait_gone(pid, token, timeout)
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:  # not a group leader (a pid file written by another tool)
                os.kill(pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            raise LaunchError(f"not allowed to stop process {pid}: it belongs to another user") from None
        if _wait_gone(pid, token, wait):
            break
    try:
        os.killpg(pid, signal.SIGKILL)  # anything the instance itself started
    except (ProcessLookupError, PermissionError):
        pass


def _wait_gone(pid: int, token: str | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while process_alive(pid, token):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        child.wait()
    return True


def read_log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log written since the last start."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return since_last_start(text, lines)


def since_last_start(text: str, lines: int = LOG_TAIL_LINES) -> str:
    kept = text.splitlines()
    marks = [i for i, line in enumerate(kept) if line.startswith(LOG_MARK)]
    if marks:
        kept = [line for line in kept[marks[-1]:] if not line.startswith(LOG_MARK)]
    return "\n".join(kept[-lines:])


# --- one start or stop of an instance at a time ---------------------------------------------------

_THREAD_LOCKS: dict[str, threading.Lock] = {}
"""One lock per lock file (a real path): flock alone would not serialize threads on every platform."""
_HELD = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES, getattr(errno, "EDEADLOCK", errno.EDEADLK)})
"""What a lock held elsewhere raises: flock EWOULDBLOCK; msvcrt EACCES or EDEADLOCK (macOS has no EDEADLOCK)."""
_THREAD_LOCKS_GUARD = threading.Lock()


def _thread_lock(path: Path) -> threading.Lock:
    with _THREAD_LOCKS_GUARD:
        return _THREAD_LOCKS.setdefault(os.path.realpath(path), threading.Lock())


@contextlib.contextmanager
def instance_lock(path: Path, label: str, timeout: float | None = None) -> Iterator[None]:
    """Hold ``path`` against this process's other threads and other processes; give up after ``timeout``."""
    wait = LOCK_TIMEOUT if timeout is None else timeout
    deadline = time.monotonic() + wait
    lock = _thread_lock(path)
    if not lock.acquire(timeout=wait):
        raise LaunchError(_busy(path, label, wait))
    try:
        with _file_lock(path, deadline, label, wait):
            yield
    finally:
        lock.release()


def _busy(path: Path, label: str, wait: float) -> str:
    return (f"another launcher is starting or stopping {label} (it holds {path}, still after {wait:g} s): "
            "wait for it to finish, then try again")


@contextlib.contextmanager
def _file_lock(path: Path, deadline: float, label: str, wait: float) -> Iterator[None]:
    """An exclusive lock on ``path``, polled until ``deadline``; the file stays (deleting it would race)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise LaunchError(f"cannot open the lock file {path} ({exc.strerror or exc}): pass --state-dir with a "
                          "writable folder") from None
    try:
        while not _try_lock(fd, path):
            if time.monotonic() >= deadline:
                raise LaunchError(_busy(path, label, wait))
            time.sleep(0.05)
        try:
            yield
        finally:
            _unlock(fd)
    finally:
        os.close(fd)


def _try_lock(fd: int, path: Path) -> bool:
    try:
        if sys.platform == "win32":
            import msvcrt

            os.lseek(fd, 0, os.SEEK_SET)  # msvcrt locks bytes from the current position: always byte 0
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in _HELD:
            return False
        raise LaunchError(f"cannot lock {path}: {exc.strerror or exc}") from None
    return True


def _unlock(fd: int) -> None:
    if sys.platform == "win32":
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    else:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_UN)


# --- diagnosis ----------------------------------------------------------------------------------


def explain(log: str, instance: Instance, python: str) -> str | None:
    """A hint for a newcomer from the last lines an instance wrote before it died."""
    text = log.lower()
    modules = re.findall(r"No module named '([^']+)'", log)
    if modules:
        module = modules[-1]
        return (f"the Python it ran ({python}) lacks ComfyUI's requirements (module {module!r} is missing): "
                f"install them with '{python} -m pip install -r requirements.txt' in ComfyUI's folder (or "
                f"'{command_name()} update'), or set {instance.field}.python to ComfyUI's own interpreter")
    if "address already in use" in text or "errno 98" in text or "10048" in text:
        return (f"port {instance.port} is taken by another program: change {instance.field}.port in "
                "gpu_config.json, or stop that program")
    if any(s in text for s in ("torch not compiled with cuda", "no nvidia driver", "invalid device ordinal",
                               "no cuda gpus are available", "cuda driver version is insufficient")):
        return (f"no usable GPU for {instance.field}.cuda_device = {instance.cuda_device} (CUDA_VISIBLE_DEVICES): "
                "check the number against nvidia-smi and that the NVIDIA driver and a CUDA build of torch are "
                "installed, or add --cpu to extra_args and set cuda_device to null")
    if "unrecognized arguments" in text or "error: argument" in text:
        return (f"ComfyUI refused an argument of {instance.field}.extra_args ({instance.extra_args!r}): check the "
                "spelling ('python main.py --help' lists them)")
    if "permission denied" in text:
        return "a file or folder is not accessible to this user: check the permissions named above"
    if "out of memory" in text:
        return "the GPU ran out of memory at start-up: add --lowvram or --reserve-vram to extra_args"
    return None


# --- the launcher ---------------------------------------------------------------------------------


class Backend(Protocol):
    """Where instances run: this machine (:class:`LocalProcesses`) or another one (:class:`.ssh.SshProcesses`)."""

    def spawn(self, instance: Instance) -> Record: ...
    def record(self, instance: Instance) -> Record | None: ...
    def alive(self, instance: Instance, record: Record) -> bool: ...
    def stop(self, instance: Instance) -> int | None: ...
    def log_tail(self, instance: Instance) -> str: ...
    def log_name(self, instance: Instance) -> str: ...
    def describe_exit(self, instance: Instance, record: Record) -> str: ...


class LocalProcesses:
    """Instances on this machine: detached processes found again through their pid files."""

    def __init__(self, context: LaunchContext) -> None:
        self.context = context

    def pid_path(self, key: str) -> Path:
        return self.context.state_dir / f"{key}.pid"

    def log_path(self, key: str) -> Path:
        return self.context.state_dir / f"{key}.log"

    def lock_path(self, key: str) -> Path:
        return self.context.state_dir / f"{key}.lock"

    def log_name(self, instance: Instance) -> str:
        return str(self.log_path(instance.key))

    def read(self, key: str) -> Record | None:
        try:
            data = json.loads(self.pid_path(key).read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                return Record(int(data), 0, 0.0)  # a bare pid, as other tools write
            known = {name: value for name, value in data.items() if name in Record.__dataclass_fields__}
            return Record(**known) if isinstance(known.get("pid"), int) else None
        except (OSError, ValueError, TypeError):
            return None

    def write(self, key: str, record: Record) -> None:
        path = self.pid_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(json.dumps({"pid": record.pid, "port": record.port, "started": record.started,
                                         "where": record.where, "token": record.token, "log": record.log,
                                         "python": record.python}) + "\n",
                             encoding="utf-8")
        os.replace(temporary, path)

    def forget(self, key: str) -> None:
        self.pid_path(key).unlink(missing_ok=True)

    def record(self, instance: Instance) -> Record | None:
        """The live record of a process this launcher started; a stale pid file is removed."""
        record = self.read(instance.key)
        if record is not None and not process_alive(record.pid, record.token):
            self.forget(instance.key)
            return None
        return record

    def alive(self, instance: Instance, record: Record) -> bool:
        return process_alive(record.pid, record.token)

    def plan(self, instance: Instance) -> tuple[list[str], dict[str, str], str]:
        """Command, environment and the Python's origin for a local instance."""
        root = self.context.comfyui_root
        main = root / "main.py"
        if not main.is_file():
            raise LaunchError(f"{root} has no main.py, so it is not ComfyUI's folder. {ROOT_HINT}")
        python, origin = find_python(root, instance.python, instance.field)
        command = [python, str(main), "--port", str(instance.port), *split_args(instance.extra_args, instance.field)]
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        if instance.cuda_device is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(instance.cuda_device)
        env[ROLE_ENV] = "master" if instance.worker is None else "worker"  # a worker keeps the extension passive
        if instance.worker is None:  # the master reads the same config and state as its launcher
            env[CONFIG_ENV] = str(self.context.config_path)
            env[STATE_ENV] = str(self.context.state_dir)
        return command, env, origin

    def spawn(self, instance: Instance) -> Record:
        command, env, origin = self.plan(instance)
        log = self.log_path(instance.key)
        pid = spawn_detached(command, env, self.context.comfyui_root, log,
                             f"start of {instance.label} on port {instance.port} (Python: {origin})")
        record = Record(pid, instance.port, time.time(), "local", start_token(pid), str(log),
                        f"{command[0]} ({origin})")
        self.write(instance.key, record)
        return record

    def stop(self, instance: Instance) -> int | None:
        record = self.record(instance)
        if record is None:
            return None
        terminate(record.pid, record.token)
        self.forget(instance.key)
        return record.pid

    def log_tail(self, instance: Instance) -> str:
        return read_log_tail(self.log_path(instance.key))

    def describe_exit(self, instance: Instance, record: Record) -> str:
        code = exit_code(record.pid)
        return "exited" if code is None else f"exited with code {code}"


Say = Callable[[str], None]


class Launcher:
    """Starts, stops and reports the instances of one config. Blocking: run it in a thread inside a server."""

    def __init__(self, config: GpuConfig, context: LaunchContext, say: Say | None = None,
                 remote: Backend | None = None) -> None:
        self.config = config
        self.context = context
        self.say: Say = say or (lambda message: None)
        self.local = LocalProcesses(context)
        if remote is None:
            from .ssh import SshProcesses

            remote = SshProcesses(context, config.settings)
        self.remote = remote

    def instances(self) -> list[Instance]:
        return instances_of(self.config)

    def find(self, name: str) -> Instance:
        """An instance by ``master``, worker id, worker name or key."""
        everything = self.instances()
        matches = (lambda i: i.key == name, lambda i: i.worker is not None and str(i.worker.id) == name,
                   lambda i: i.name == name)
        for matches_name in matches:  # an id wins over a worker whose name looks like it
            found = next((i for i in everything if matches_name(i)), None)
            if found is not None:
                return found
        known = ", ".join(["master", *(str(i.worker.id) for i in everything if i.worker is not None)])
        raise LaunchError(f"no instance {name!r} in {self.context.config_path}; known: {known} (a worker id or name)")

    def backend(self, instance: Instance) -> Backend:
        if instance.kind == "external":
            host = instance.worker.host if instance.worker is not None else "?"
            raise LaunchError(f"{instance.label} runs on {host}, which the launcher cannot reach: start it "
                              f"there, or add an ssh block to {instance.field} so that the launcher can")
        return self.remote if instance.kind == "ssh" else self.local

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
        try:
            backend = self.backend(instance)
            with self._locked(instance):  # check and spawn as one step: a second start sees the first's process
                return self._check_and_spawn(instance, backend)
        except LaunchError as exc:
            self.say(f"{instance.label}: FAILED: {str(exc).splitlines()[0]}")
            return Outcome(instance, "failed", error=str(exc)), None

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
        return [self._status_of(instance) for instance in self.instances()]

    def _status_of(self, instance: Instance) -> InstanceStatus:
        if instance.kind == "external" and not instance.enabled:
            return InstanceStatus(instance, "disabled")  # another machine's address, maybe only an example: not probed
        found = probe(instance.url)
        record = None
        if instance.kind != "external":
            try:
                record = self.backend(instance).record(instance)
            except LaunchError:
                record = None
        pid = record.pid if record else None
        if found.state == "comfyui":
            return InstanceStatus(instance, "ready", pid, vram_text(found.stats),
                                  "" if record or instance.kind == "external" else "not started by this launcher")
        if found.state == "foreign":
            return InstanceStatus(instance, "port-taken", pid, detail=found.detail or "another program answers")
        if record is not None:
            return InstanceStatus(instance, "starting", pid, detail="running, not answering yet")
        return InstanceStatus(instance, "down" if instance.enabled else "disabled")

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
        self.local.forget("watcher")
        return outcomes


def state_dir_for(root: Path, explicit: str | None = None) -> Path:
    """``--state-dir``, else ``COMFY_DISTRIBUTED_STATE_DIR``, else ``<ComfyUI>/user/comfy-distributed``."""
    chosen = explicit or os.environ.get(STATE_ENV)
    path = Path(chosen).expanduser() if chosen else root / "user" / "comfy-distributed"
    return make_folder(path, "the launcher's state folder", "--state-dir")


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
