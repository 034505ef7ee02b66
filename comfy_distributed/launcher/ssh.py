"""Workers on other machines, started, stopped and restarted over SSH with the system ``ssh`` client.

No shell runs here: ``ssh`` gets a list of arguments. The command it asks the remote machine to run
is always the same two words, ``sh -s`` (:data:`REMOTE_COMMAND`): sshd hands that string to the remote
user's login shell, which may be fish or csh, whose quoting is not POSIX (in fish a backslash ends a
single-quoted word early), so nothing of the config may be in it. Every value (action, ComfyUI's
folder, the instance, port, CUDA device, Python, ``extra_args``) travels on stdin instead, as a
``set -- 'value' ...`` line quoted with :func:`shlex.quote` for the POSIX ``sh`` that reads it, in
front of a small script. That script starts ComfyUI detached (``nohup`` + ``setsid``) with
``CUDA_VISIBLE_DEVICES`` from ``cuda_device`` and keeps its log and pid file in
``<comfyui_path>/user/comfy-distributed/`` over there (a private folder). Stop = TERM, then KILL, to
the pid file's process group; restart = stop + start. What ``ssh`` prints (at most
:data:`~.capped.OUTPUT_CAP` bytes of each stream: the host is not trusted to be brief) is appended
to ``<state>/worker-<id>.log`` here, next to a pid file recording the remote pid.

Host keys are checked as ssh always checks them: against ``~/.ssh/known_hosts``, or the file named
by ``ssh.known_hosts_file``. ``BatchMode`` keeps ssh from ever waiting for a password or a yes/no
question; every failure becomes a :class:`~.launcher.LaunchError` saying what to fix.
"""


from __future__ import annotations

import shlex
import shutil
import subprocess
import time
from pathlib import Path

from ..config import Settings, SshConfig
from ..errors import LaunchError
from .model import LOG_TAIL_LINES, Instance, LaunchContext, Record
from .discovery import split_args
from .processes import since_last_start
from .local import LocalProcesses
from .capped import Captured, run_capped
from .state_files import append_private


REMOTE_STATE = "user/comfy-distributed"
EXTRA_TIMEOUT = 45.0
"""Seconds an ssh call may take beyond the connect timeout (a stop waits up to 15 s for ComfyUI)."""

REMOTE_COMMAND = "sh -s"
"""What ssh asks the remote login shell to run, whatever the config says: a word every shell parses alike."""

REMOTE_SCRIPT = r"""
set -u
action=$1; root=$2; name=$3; port=$4; cuda=$5; python=$6
shift 6
state="$root/user/comfy-distributed"
pidfile="$state/$name.pid"
log="$state/$name.log"
alive() {
  [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null || return 1
  ! grep -qs '^[0-9]* (.*) [ZX] ' "/proc/$1/stat"
}
pid=$(cat "$pidfile" 2>/dev/null || true)
case $action in
start)
  [ -d "$root" ] || { echo "NO_ROOT"; exit 20; }
  [ -f "$root/main.py" ] || { echo "NO_MAIN"; exit 21; }
  if alive "$pid"; then echo "RUNNING $pid"; exit 0; fi
  if [ -z "$python" ]; then
    for candidate in "$root/venv/bin/python" "$root/.venv/bin/python"; do
      if [ -x "$candidate" ]; then python=$candidate; break; fi
    done
  fi
  [ -n "$python" ] || python=$(command -v python3 || command -v python || true)
  if [ -z "$python" ] || ! command -v "$python" >/dev/null 2>&1; then echo "NO_PYTHON $python"; exit 22; fi
  mkdir -p "$state" && chmod 700 "$state" && (umask 077 && : >>"$log") || { echo "NO_STATE $state"; exit 23; }
  cd "$root" || exit 20
  if [ -n "$cuda" ]; then CUDA_VISIBLE_DEVICES=$cuda; export CUDA_VISIBLE_DEVICES; fi
  PYTHONUNBUFFERED=1; export PYTHONUNBUFFERED
  COMFY_DISTRIBUTED_ROLE=worker; export COMFY_DISTRIBUTED_ROLE
  {
    echo ""
    echo "===== comfy-distributed: start of $name on port $port at $(date '+%Y-%m-%d %H:%M:%S') (over ssh)"
    echo "===== comfy-distributed: command: $python main.py --port $port $*"
  } >>"$log"
  if command -v setsid >/dev/null 2>&1; then
    nohup setsid "$python" main.py --port "$port" "$@" >>"$log" 2>&1 </dev/null &
  else
    nohup "$python" main.py --port "$port" "$@" >>"$log" 2>&1 </dev/null &
  fi
  pid=$!
  rm -f "$pidfile"
  (umask 077; echo "$pid" >"$pidfile")
  echo "STARTED $pid $python"
  ;;
stop)
  rm -f "$pidfile"
  if ! alive "$pid"; then echo "NOT_RUNNING"; exit 0; fi
  kill -TERM "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
  i=0
  while alive "$pid" && [ $i -lt 75 ]; do sleep 0.2; i=$((i+1)); done
  kill -KILL "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  echo "STOPPED $pid"
  ;;
alive)
  if alive "$pid"; then echo "ALIVE $pid"; else echo "DEAD"; fi
  ;;
tail)
  tail -n 1000 "$log" 2>/dev/null || true
  ;;
esac
"""

SCRIPT_ERRORS = {
    20: "{root} does not exist on {host}: set {field}.ssh.comfyui_path to ComfyUI's folder there",
    21: "{root} on {host} has no main.py, so it is not ComfyUI's folder: fix {field}.ssh.comfyui_path",
    22: ("no Python found on {host} ({detail}): set {field}.ssh.python to the interpreter of ComfyUI's environment "
         "there (default: venv/bin/python, .venv/bin/python, else python3)"),
    23: "cannot create {root}/" + REMOTE_STATE + " on {host}: check the permissions of ComfyUI's folder there",
}


def remote_input(values: list[str], field: str) -> bytes:
    """What ssh sends on stdin: the values as ``sh``'s positional parameters, then the script. Quoted for the
    POSIX ``sh`` that reads it, never for the login shell, which sees only :data:`REMOTE_COMMAND`."""
    if any("\0" in value for value in values):
        raise LaunchError(f"{field}: a value of the ssh block or extra_args holds a NUL character, which no "
                          "program argument can: remove it")
    return ("set -- " + " ".join(shlex.quote(value) for value in values) + "\n" + REMOTE_SCRIPT).encode("utf-8")


def explain_ssh_failure(stderr: str, ssh: SshConfig, destination: str) -> str:
    """What a newcomer should do about ssh's own error (exit code 255)."""
    text = stderr.lower()
    host, port = ssh.host, ssh.port
    if "unprotected private key" in text or "bad permissions" in text:
        return f"ssh ignores {ssh.key_file} because other users can read it: run 'chmod 600 {ssh.key_file}'"
    if "host key verification failed" in text or "host identification has changed" in text:
        return (f"the host key of {host} is not known here, or it changed: connect once by hand ('ssh -p {port} "
                f"{destination}') to check and accept it, or name a known_hosts file in ssh.known_hosts_file")
    if "permission denied" in text:
        return (f"SSH login as {destination} was refused (Permission denied): check ssh.user and ssh.key_file; the "
                f"matching public key must be in ~/.ssh/authorized_keys of that user on {host}")
    if "connection refused" in text:
        return (f"no SSH server answers on {host}:{port} (connection refused): check ssh.host and ssh.port, and "
                "that sshd runs there")
    if "could not resolve hostname" in text or "name or service not known" in text:
        return f"the host name {host} cannot be resolved: check ssh.host"
    if "timed out" in text or "no route to host" in text or "network is unreachable" in text:
        return f"{host}:{port} cannot be reached (timed out or no route): check the address and the firewall"
    if "load key" in text or "invalid format" in text:
        return f"ssh cannot read the key {ssh.key_file}: is it a private key (not the .pub)?"
    last = next((line for line in reversed(stderr.strip().splitlines()) if line.strip()), "no message")
    return f"ssh to {destination} failed: {last.strip()[:200]}"


class SshProcesses:
    """The :class:`~.launcher.Backend` for workers with an ``ssh`` block."""

    def __init__(self, context: LaunchContext, settings: Settings, ssh_binary: str | None = None) -> None:
        self.context = context
        self.settings = settings
        self.ssh_binary = ssh_binary
        self.records = LocalProcesses(context)

    # --- the ssh command ------------------------------------------------------------------

    @staticmethod
    def _config(instance: Instance) -> SshConfig:
        assert instance.worker is not None and instance.worker.ssh is not None, instance
        return instance.worker.ssh

    @staticmethod
    def destination(ssh: SshConfig) -> str:
        return f"{ssh.user}@{ssh.host}" if ssh.user else ssh.host

    def ssh_command(self, instance: Instance) -> list[str]:
        """``ssh`` with the options of this worker, up to the destination."""
        ssh = self._config(instance)
        binary = self.ssh_binary or shutil.which("ssh")
        if binary is None:
            raise LaunchError("the ssh client is not installed here: install OpenSSH (Debian/Ubuntu: 'apt install "
                              "openssh-client'; Windows: Settings > Optional features > OpenSSH Client)")
        command = [binary, "-T", "-p", str(ssh.port), "-o", "BatchMode=yes",
                   "-o", f"ConnectTimeout={max(1, round(self.settings.connect_timeout))}",
                   "-o", "ServerAliveInterval=10", "-o", "ServerAliveCountMax=3"]
        if ssh.key_file:
            key = Path(ssh.key_file).expanduser()
            if not key.is_file():
                raise LaunchError(f"{instance.field}.ssh.key_file: {key} does not exist")
            command += ["-i", str(key), "-o", "IdentitiesOnly=yes"]
        known_hosts = getattr(ssh, "known_hosts_file", None)
        if known_hosts:
            path = Path(str(known_hosts)).expanduser()
            if not path.is_file():
                raise LaunchError(f"{instance.field}.ssh.known_hosts_file: {path} does not exist")
            command += ["-o", f"UserKnownHostsFile={path}", "-o", "StrictHostKeyChecking=yes"]
        return [*command, "--", self.destination(ssh)]

    def _run(self, instance: Instance, action: str, *extra: str) -> tuple[int, str]:
        """Run the remote script with ``action``; returns its exit code and output. ssh failures raise."""
        ssh = self._config(instance)
        values = [action, ssh.comfyui_path, instance.key, str(instance.port),
                  "" if instance.cuda_device is None else str(instance.cuda_device), ssh.python or "", *extra]
        command = [*self.ssh_command(instance), REMOTE_COMMAND]
        timeout = self.settings.connect_timeout + EXTRA_TIMEOUT
        try:
            done = run_capped(command, remote_input(values, instance.field), timeout, keep_end=action == "tail")
        except subprocess.TimeoutExpired:
            raise LaunchError(f"ssh to {self.destination(ssh)} ({action}) did not finish within {timeout:.0f} s") \
                from None
        except OSError as exc:
            raise LaunchError(f"cannot run {command[0]}: {exc.strerror or exc}") from None
        self._transcript(instance, action, done)
        if done.returncode == 255:
            raise LaunchError(f"{instance.label}: {explain_ssh_failure(done.stderr, ssh, self.destination(ssh))}")
        if done.returncode in SCRIPT_ERRORS:
            detail = done.stdout.strip().partition(" ")[2][:200] or "none found"
            raise LaunchError(f"{instance.label}: " + SCRIPT_ERRORS[done.returncode].format(
                root=ssh.comfyui_path, host=ssh.host, field=instance.field, detail=detail))
        if done.returncode != 0:
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no message"]
            raise LaunchError(f"{instance.label}: the remote {action} on {ssh.host} failed with code "
                              f"{done.returncode}: {last[0][:200]}")
        return done.returncode, done.stdout

    def _transcript(self, instance: Instance, action: str, done: Captured) -> None:
        with append_private(self.records.log_path(instance.key)) as log:
            log.write(f"----- ssh {self.destination(self._config(instance))} {action} at "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}: exit code {done.returncode}\n".encode())
            if action != "tail":
                log.write(done.stdout.encode("utf-8", "replace"))
            log.write(done.stderr.encode("utf-8", "replace"))

    # --- the Backend protocol -------------------------------------------------------------------

    def log_name(self, instance: Instance) -> str:
        ssh = self._config(instance)
        return (f"{ssh.host}:{ssh.comfyui_path.rstrip('/')}/{REMOTE_STATE}/{instance.key}.log "
                f"(ssh transcript: {self.records.log_path(instance.key)})")

    def spawn(self, instance: Instance) -> Record:
        arguments = split_args(instance.extra_args, instance.field) if instance.extra_args else []
        _code, output = self._run(instance, "start", *arguments)
        words = output.split()
        if len(words) < 2 or words[0] not in ("STARTED", "RUNNING") or not words[1].isdigit():
            raise LaunchError(f"{instance.label}: unexpected answer from the remote start: {output.strip()[:200]!r}")
        ssh = self._config(instance)
        python = words[2] if len(words) > 2 else "(already running)"
        record = Record(int(words[1]), instance.port, time.time(), f"ssh {self.destination(ssh)}:{ssh.port}",
                        None, self.log_name(instance), f"{python} on {ssh.host}")
        self.records.write(instance.key, record)
        return record

    def record(self, instance: Instance) -> Record | None:
        record = self.records.read(instance.key)
        if record is not None and not self.alive(instance, record):
            self.records.forget(instance.key)
            return None
        return record

    def alive(self, instance: Instance, record: Record) -> bool:
        _code, output = self._run(instance, "alive")
        return output.startswith("ALIVE")

    def stop(self, instance: Instance) -> int | None:
        _code, output = self._run(instance, "stop")
        self.records.forget(instance.key)
        words = output.split()
        return int(words[1]) if len(words) >= 2 and words[0] == "STOPPED" and words[1].isdigit() else None

    def log_tail(self, instance: Instance, lines: int = LOG_TAIL_LINES) -> str:
        try:
            _code, output = self._run(instance, "tail")
        except LaunchError as exc:
            return f"(the remote log could not be read: {exc})"
        return since_last_start(output, lines)

    def describe_exit(self, instance: Instance, record: Record) -> str:
        return f"exited on {self._config(instance).host}"
