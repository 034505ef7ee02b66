"""SSH workers against hostile values and a hostile host (issue 31).

The command ssh hands to the remote login shell is always ``sh -s``: every value travels on stdin, so
a login shell with other quoting rules (fish ends a single-quoted word at a backslash) parses none of
it, and an ``extra_args`` word reaches ComfyUI as it was written. What ssh prints is capped, so a
host that prints megabytes (or bytes that are not UTF-8) fills neither memory nor the log here.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from comfy_distributed.config import parse_config
from comfy_distributed.launcher import Instance, LaunchContext, LaunchError, instances_of
from comfy_distributed.launcher.capped import CUT_NOTE, OUTPUT_CAP
from comfy_distributed.launcher.ssh import REMOTE_SCRIPT, SshProcesses

from .fake_ssh import LAST_LINE, FakeSsh
from .helpers import explain
from .sshd import INSTALL_HINT, LocalSshd, SshSite, sshd_binary

pytestmark = pytest.mark.skipif(os.name == "nt", reason="the fake ssh and sshd are POSIX programs")
needs_sshd = pytest.mark.skipif(sshd_binary() is None, reason=INSTALL_HINT)
FISH_HINT = "fish is not installed (Debian: apt-get install -y fish): the fish login shell case is not run"


def hostile_words(marker: Path) -> list[str]:
    """``extra_args`` words that a shell parsing them would run (each would create ``marker``)."""
    return ["--x-slash=a\\", f"; touch {marker} #", f"--x-subst=$(touch {marker})", f"--x-tick=`touch {marker}`",
            f"--x-semi=a;touch {marker}", "--x-quotes='\"", "--x-glob=*?[a]~!$HOME%s{a,b}", "--x-space=a  b"]


def fake_site(tmp_path: Path, **ssh: str) -> tuple[FakeSsh, SshProcesses, Instance]:
    fake = FakeSsh(tmp_path / "fake-ssh")
    config = parse_config({"workers": [{"id": 1, "port": 8189, "cuda_device": 3, "extra_args": "--cpu", "ssh": {
        "host": "gpu-box.example", "user": "me", "comfyui_path": "/srv/ComfyUI", **ssh}}]})
    context = LaunchContext(tmp_path / "ComfyUI", tmp_path / "gpu_config.json", tmp_path / "state")
    return fake, SshProcesses(context, config.settings, ssh_binary=str(fake.path)), instances_of(config)[1]


def positional_values(stdin: str) -> list[str]:
    """The values the script on ``stdin`` receives, as the POSIX ``sh`` on the remote machine reads them."""
    assert stdin.endswith(REMOTE_SCRIPT)
    prefix = stdin[:-len(REMOTE_SCRIPT)]
    done = subprocess.run(["sh", "-s"], input=prefix + "printf '%s\\0' \"$@\"\n", capture_output=True, text=True,
                          check=True, timeout=30)
    return done.stdout.split("\0")[:-1]


def test_the_remote_command_is_constant_and_every_value_travels_on_stdin(tmp_path):
    root, python = "/srv/it's $(touch /tmp/x) `id`/Comfy UI\\", "/opt/py;\\"
    fake, backend, instance = fake_site(tmp_path, comfyui_path=root, python=python)
    words = [*hostile_words(tmp_path / "pwned"), "--x-newline=a\nb"]
    instance.extra_args = shlex.join(["--cpu", *words])
    fake.answer("STARTED 4242 /opt/py\n")
    assert backend.spawn(instance).pid == 4242
    (call,) = fake.calls()
    argv = call["argv"]
    assert argv[-3:] == ["--", "me@gpu-box.example", "sh -s"], argv
    assert not any(text in arg for arg in argv for text in ("touch", "--x-", "Comfy UI", "/opt/py", "8189")), argv
    assert positional_values(call["stdin"]) == ["start", root, "worker-1", "8189", "3", python, "--cpu", *words]

    fake.answer("ALIVE 4242\n")
    for action in (backend.log_tail, backend.stop):
        action(instance)
    assert [c["argv"][-1] for c in fake.calls()] == ["sh -s"] * 3
    assert [positional_values(c["stdin"])[0] for c in fake.calls()] == ["start", "tail", "stop"]


def test_a_nul_character_is_refused_with_the_field(tmp_path):
    fake, backend, instance = fake_site(tmp_path)
    instance.extra_args = "--cpu '--x=a\0b'"
    with pytest.raises(LaunchError, match=r"workers\[0\]: .*NUL"):
        backend.spawn(instance)
    assert fake.calls() == []


def test_a_flooding_host_fills_neither_memory_nor_the_log(tmp_path):
    fake, backend, instance = fake_site(tmp_path)
    fake.flood()
    with pytest.raises(LaunchError, match="unexpected answer from the remote start") as caught:
        backend.spawn(instance)
    assert len(str(caught.value)) < 1000
    transcript = backend.records.log_path(instance.key)
    assert transcript.stat().st_size < 3 * OUTPUT_CAP, "at most OUTPUT_CAP of each stream is logged"
    assert transcript.read_text().count(CUT_NOTE) == 2
    assert stat.S_IMODE(transcript.stat().st_mode) == 0o600

    tail = backend.log_tail(instance)  # the end of the remote log is what matters: its last bytes are kept
    assert tail.endswith(LAST_LINE) and len(tail) <= OUTPUT_CAP + len(CUT_NOTE) + 1
    assert transcript.stat().st_size < 5 * OUTPUT_CAP


@needs_sshd
@pytest.mark.parametrize("shell", ["sh", pytest.param("fish", marks=pytest.mark.skipif(
    shutil.which("fish") is None, reason=FISH_HINT))])
def test_hostile_extra_args_reach_comfyui_verbatim_whatever_the_login_shell(tmp_path, comfy_root, sshd: LocalSshd,
                                                                            shell):
    key, commands = sshd.login_shell_key(str(shutil.which(shell)))
    site = SshSite(tmp_path, comfy_root, sshd)
    marker = tmp_path / "pwned"
    words = hostile_words(marker)
    site.configure(extra_args=shlex.join(["--cpu", *words]), key_file=str(key))
    result = site.cli("workers")
    assert result.returncode == 0, explain(result)
    assert site.remote_report()["argv"] == ["--port", str(site.ports[1]), "--cpu", *words]
    assert not marker.exists(), f"the {shell} login shell ran a command from extra_args"
    assert set(commands.read_text().split("\0")[:-1]) == {"sh -s"}, "the login shell was given values"
    assert stat.S_IMODE(site.remote_state.stat().st_mode) == 0o700
    assert {stat.S_IMODE((site.remote_state / f"worker-1.{kind}").stat().st_mode) for kind in ("log", "pid")} \
        == {0o600}

    stopped = site.cli("stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, explain(stopped)
    sent = commands.read_text().split("\0")[:-1]
    assert len(sent) >= 3 and set(sent) == {"sh -s"}, sent
    assert not marker.exists()
