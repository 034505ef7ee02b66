"""ComfyUI's folder, its Python, the command line of an instance, and which hosts are this machine."""

from __future__ import annotations

import functools
import ipaddress
import os
import shlex
import shutil
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit

from ..config import PACKAGE_ROOT, GpuConfig
from ..errors import LaunchError
from .model import Instance, WINDOWS


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
    fields = ", ".join(f"the extra_args of {i.label}" for i in missing)  # by id and name, not list position
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
