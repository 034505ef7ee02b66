"""The launcher's state folder against another local user (issue 31): pid files decide what a stop signals.

The folder is private (0700) and must be the user's own; its files are 0600, never reached through
a planted symbolic link, and a pid file only names a process whose start time it recorded.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from comfy_distributed.config import load_config
from comfy_distributed.launcher import LaunchContext, Launcher, LaunchError, state_dir_for
from comfy_distributed.launcher.processes import start_token
from tests.waiting import free_port

from .helpers import explain, pid_alive, run_cli, write_config

pytestmark = pytest.mark.skipif(os.name != "posix", reason="modes, owners and O_NOFOLLOW are POSIX")
needs_root = pytest.mark.skipif(os.name != "posix" or os.geteuid() != 0, reason="giving a file to another user "
                                "(chown) needs root")
NOBODY = 65534


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen]:
    """A live process that is not the launcher's (a group leader, as instances are)."""
    process = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        yield process
    finally:
        process.kill()
        process.wait()


@pytest.fixture
def site(comfy_root: Path, tmp_path: Path) -> tuple[Launcher, Path]:
    """A launcher over a master-only config, with its state in ``<ComfyUI>/user/comfy-distributed``."""
    config = write_config(tmp_path / "gpu_config.json", free_port(), [])
    state = state_dir_for(comfy_root)
    return Launcher(load_config(config), LaunchContext(comfy_root, config, state)), state


def naming(process: subprocess.Popen, token: bool = True) -> str:
    record = {"pid": process.pid, "port": 1, "started": 0.0}
    return json.dumps({**record, "token": start_token(process.pid)} if token else record)


@pytest.mark.parametrize("content", ["bare", "no-token", "wrong-token"])
def test_stop_never_signals_a_process_the_pid_file_does_not_prove_ours(site, bystander, content):
    launcher, state = site
    text = {"bare": str(bystander.pid), "no-token": naming(bystander, token=False),
            "wrong-token": json.dumps({"pid": bystander.pid, "port": 1, "started": 0.0, "token": "1"})}[content]
    (state / "master.pid").write_text(text)
    outcome = launcher.stop(launcher.find("master"))
    assert outcome.action == "not_running" and outcome.error is None, outcome
    assert bystander.poll() is None and pid_alive(bystander.pid), "an unrelated process was signalled"


@needs_root
def test_a_pid_file_of_another_user_is_not_trusted(site, bystander):
    launcher, state = site
    pid_file = state / "master.pid"
    pid_file.write_text(naming(bystander))
    os.chown(pid_file, NOBODY, NOBODY)
    assert launcher.stop(launcher.find("master")).action == "not_running"
    assert bystander.poll() is None, "a pid file another user wrote was obeyed"
    os.chown(pid_file, 0, 0)  # the same record, ours: it is (this shows the owner made the difference)
    assert launcher.stop(launcher.find("master")).action == "stopped"
    assert bystander.wait(10) is not None


def test_a_pid_of_zero_never_signals_the_launchers_own_group(site, tmp_path):
    launcher, state = site
    (state / "master.pid").write_text(json.dumps({"pid": 0, "port": 1, "started": 0.0}))
    result = run_cli("stop", "--comfyui", str(launcher.context.comfyui_root), "--config",
                     str(launcher.context.config_path), new_session=True)
    assert result.returncode == 0 and "master: not running" in result.stdout, explain(result)


def plant(state: Path, name: str, target: Path) -> Path:
    link = state / name
    link.symlink_to(target)
    return link


def test_a_symlinked_pid_file_is_not_followed(site, bystander, tmp_path):
    launcher, state = site
    target = tmp_path / "elsewhere.json"
    target.write_text(naming(bystander))
    plant(state, "master.pid", target)
    assert launcher.stop(launcher.find("master")).action == "not_running"
    assert bystander.poll() is None, "the link was followed to a record of another process"
    started = launcher.start(launcher.find("master"), wait=False)
    assert started.action == "started", started
    assert not (state / "master.pid").is_symlink() and target.read_text() == naming(bystander)
    assert launcher.stop(launcher.find("master")).action == "stopped"


@pytest.mark.parametrize("name", ["master.log", "master.lock"])
def test_a_link_planted_at_a_log_or_lock_stops_the_start(site, tmp_path, name):
    launcher, state = site
    kept, missing = tmp_path / "precious.txt", tmp_path / "never-created"
    kept.write_text("precious\n")
    plant(state, name, kept if name.endswith(".log") else missing)
    outcome = launcher.start(launcher.find("master"), wait=False)
    assert outcome.action == "failed" and f"{state / name} is a symbolic link" in str(outcome.error), outcome
    assert kept.read_text() == "precious\n" and not missing.exists(), "the link was followed"
    assert not (state / "master.pid").exists(), "nothing was started"


def test_a_link_at_the_old_temporary_pid_name_is_ignored(site, tmp_path):
    launcher, state = site
    kept = tmp_path / "precious.txt"
    kept.write_text("precious\n")
    plant(state, ".master.pid.tmp", kept)
    assert launcher.start(launcher.find("master"), wait=False).action == "started"
    assert kept.read_text() == "precious\n"
    assert launcher.stop(launcher.find("master")).action == "stopped"


def test_the_state_folder_and_its_files_are_private_after_a_launch(comfy_root, tmp_path):
    state = comfy_root / "user" / "comfy-distributed"
    state.mkdir(parents=True, mode=0o755)
    os.chmod(state, 0o755)  # as an older version left it
    (state / "master.log").write_text("an older start\n")
    os.chmod(state / "master.log", 0o644)
    config = write_config(tmp_path / "gpu_config.json", free_port(), [])
    launcher = Launcher(load_config(config), LaunchContext(comfy_root, config, state_dir_for(comfy_root)))
    assert launcher.start(launcher.find("master"), wait=False).action == "started"
    assert mode(state) == 0o700
    assert {name: mode(state / name) for name in ("master.log", "master.pid", "master.lock")} == \
        dict.fromkeys(("master.log", "master.pid", "master.lock"), 0o600)
    assert launcher.stop(launcher.find("master")).action == "stopped"
    assert mode(state_dir_for(comfy_root, str(tmp_path / "fresh" / "state"))) == 0o700
    assert mode(tmp_path / "fresh") != 0o700, "only the state folder itself is made private"


@needs_root
def test_a_state_folder_of_another_user_is_refused(comfy_root, tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, NOBODY, NOBODY)
    with pytest.raises(LaunchError, match="belongs to another user"):
        state_dir_for(comfy_root, str(theirs))
    config = write_config(tmp_path / "gpu_config.json", free_port(), [])
    result = run_cli("status", "--comfyui", str(comfy_root), "--config", str(config), "--state-dir", str(theirs))
    assert result.returncode != 0 and "belongs to another user" in result.stderr, explain(result)
    assert "Traceback" not in result.stderr
