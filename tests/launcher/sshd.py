"""A throwaway OpenSSH server on 127.0.0.1 for the SSH tests, with its own host key, user key and known_hosts,
and :class:`SshSite`: a config whose worker is started over it in a stand-in ComfyUI folder.

Nothing of the machine's SSH setup is used or changed: the server reads a config written here,
accepts only the user keys made here, and the client side checks the host key against a
known_hosts file written here (``ssh.known_hosts_file``), with strict checking. The only thing
outside the temporary folder is ``/run/sshd``, the privilege separation folder Debian's sshd
needs when it runs as root; it is created if missing, as the ssh service itself would.

:meth:`LocalSshd.login_shell_key` stands in for a user whose login shell is another one (fish,
say) without touching the machine's users: sshd runs a key's forced command, which records the
command the client asked for and hands it to that shell with ``-c``, just as sshd hands it to a
login shell.
"""

from __future__ import annotations

import getpass
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.waiting import free_port

from .helpers import make_comfyui, run_cli, worker, write_config

LOGIN_SHELL = """#!/bin/sh
# $1: the shell that stands in for the login shell; $2: where the requested commands are recorded (NUL after each)
printf '%s\\0' "$SSH_ORIGINAL_COMMAND" >>"$2"
exec "$1" -c "$SSH_ORIGINAL_COMMAND"
"""
SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd")
INSTALL_HINT = "sshd is not installed: apt-get install -y openssh-server openssh-client (Debian) to run the SSH tests"


def sshd_binary() -> str | None:
    found = next((c for c in SSHD_CANDIDATES if os.access(c, os.X_OK)), None)
    return found if found and shutil.which("ssh") and shutil.which("ssh-keygen") else None


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "comfy-distributed-test", "-f", str(path)],
                   check=True, capture_output=True)


@dataclass
class LocalSshd:
    folder: Path
    port: int = 0
    process: subprocess.Popen | None = None

    @property
    def user(self) -> str:
        return getpass.getuser()

    @property
    def key_file(self) -> Path:
        return self.folder / "user_key"

    @property
    def other_key_file(self) -> Path:
        """A key the server does not accept."""
        return self.folder / "stranger_key"

    @property
    def known_hosts(self) -> Path:
        return self.folder / "known_hosts"

    @property
    def wrong_known_hosts(self) -> Path:
        """A known_hosts file with another key for this server (a changed or spoofed host)."""
        return self.folder / "known_hosts_wrong"

    @property
    def log(self) -> Path:
        return self.folder / "sshd.log"

    def start(self, timeout: float = 20.0) -> "LocalSshd":
        binary = sshd_binary()
        assert binary, INSTALL_HINT
        self.folder.mkdir(parents=True, exist_ok=True)
        for name in ("host_key", "user_key", "stranger_key", "other_host_key"):
            _keygen(self.folder / name)
        (self.folder / "authorized_keys").write_text((self.folder / "user_key.pub").read_text())
        self.port = self.port or free_port()
        host_line = (self.folder / "host_key.pub").read_text().split()[:2]
        other_line = (self.folder / "other_host_key.pub").read_text().split()[:2]
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {' '.join(host_line)}\n")
        self.wrong_known_hosts.write_text(f"[127.0.0.1]:{self.port} {' '.join(other_line)}\n")
        config = self.folder / "sshd_config"
        config.write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {self.folder / 'host_key'}",
            f"AuthorizedKeysFile {self.folder / 'authorized_keys'}", f"PidFile {self.folder / 'sshd.pid'}",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
            "PermitRootLogin prohibit-password", "UsePAM no", "StrictModes no", "X11Forwarding no",
            "AllowTcpForwarding no", "PrintMotd no", "LogLevel VERBOSE", ""]))
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([binary, "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self._accepts():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"sshd did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)
        return self

    def _accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def login_shell_key(self, shell: str) -> tuple[Path, Path]:
        """A new user key whose sessions run in ``shell`` as a login shell would; returns the key and the file
        that records each command the client sent (NUL-terminated)."""
        keys = self.folder / "authorized_keys"
        name = f"{Path(shell).name}-{len(keys.read_text().splitlines())}"
        key, record = self.folder / f"{name}_key", self.folder / f"commands-{name}"
        wrapper = self.folder / "login_shell"
        wrapper.write_text(LOGIN_SHELL)
        wrapper.chmod(0o755)
        _keygen(key)
        forced = " ".join(shlex.quote(str(part)) for part in (wrapper, shell, record))
        with open(keys, "a") as lines:
            lines.write(f'command="{forced}" {key.with_name(key.name + ".pub").read_text().strip()}\n')
        return key, record

    def ssh_block(self, comfyui_path: Path, python: str, **overrides: object) -> dict[str, object]:
        """A worker's ``ssh`` block that reaches this server (``overrides`` replace any of its keys)."""
        block: dict[str, object] = {"host": "127.0.0.1", "port": self.port, "user": self.user,
                                    "key_file": str(self.key_file), "known_hosts_file": str(self.known_hosts),
                                    "comfyui_path": str(comfyui_path), "python": python}
        return {**block, **overrides}


class SshSite:
    """A master here and worker 1 started over :class:`LocalSshd` in a second stand-in ComfyUI folder."""

    def __init__(self, tmp_path: Path, local_root: Path, sshd: LocalSshd) -> None:
        self.local_root = local_root
        self.remote_root = make_comfyui(tmp_path / "RemoteComfyUI")
        self.state = tmp_path / "state"
        self.config = tmp_path / "gpu_config.json"
        self.sshd = sshd
        self.ports = [free_port(), free_port()]
        self.configure()

    def configure(self, settings: dict[str, Any] | None = None, extra_args: str = "--cpu --preview-method 'auto'",
                  **ssh: Any) -> None:
        block = self.sshd.ssh_block(self.remote_root, sys.executable)
        block.update(ssh)
        write_config(self.config, self.ports[0], [worker(1, self.ports[1], cuda_device=3, extra_args=extra_args,
                                                         ssh=block)], **(settings or {}))

    def cli(self, *args: str) -> Any:
        return run_cli(*args, "--comfyui", str(self.local_root), "--config", str(self.config), "--state-dir",
                       str(self.state))

    @property
    def remote_state(self) -> Path:
        return self.remote_root / "user" / "comfy-distributed"

    def remote_report(self) -> dict[str, Any]:
        lines = (self.remote_state / "worker-1.log").read_text().splitlines()
        return json.loads([line for line in lines if line.startswith("fake-comfyui: {")][-1].split(": ", 1)[1])
