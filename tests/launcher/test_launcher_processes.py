"""The ``comfy-distributed`` command with real processes: the stand-in ComfyUI of ``fake_comfyui/main.py``.

Each test runs the CLI as a user would (``python -m comfy_distributed ... --comfyui ROOT``), against a
temporary ComfyUI folder whose main.py serves the stand-in, and checks processes, ports, pid files,
logs and the messages a newcomer gets.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.waiting import free_port, poll

from .helpers import (
    REPO,
    Site,
    answers,
    explain,
    make_comfyui,
    pid_alive,
    read_pid,
    run_cli,
    worker,
)


@pytest.fixture
def site(comfy_root, state_dir, tmp_path) -> Site:
    ports = [free_port() for _ in range(3)]
    result = Site(comfy_root, tmp_path / "gpu_config.json", state_dir, ports)
    result.configure([worker(1, ports[1], cuda_device=1, extra_args="--cpu --preview-method 'auto'"),
                      worker(2, ports[2], cuda_device=2)])
    return result


def table_row(output: str, label: str) -> str:
    return next(line for line in output.splitlines() if line.startswith(label))


def test_all_slow_then_no_duplicates_status_stop_restart(site):
    result = site.cli("all-slow")
    assert result.returncode == 0, explain(result)
    out = result.stdout
    assert out.index("master: ready") < out.index("GPU 1 (worker 1): starting") < out.index("GPU 1 (worker 1): ready") \
        < out.index("GPU 2 (worker 2): starting"), "all-slow waits for each instance before the next"
    assert "3 started, 0 already running, 0 failed" in out
    assert all(answers(port) for port in site.ports)
    pids = {key: read_pid(site.state, key) for key in ("master", "worker-1", "worker-2")}
    assert all(pid_alive(pid) for pid in pids.values())

    master, first, second = site.started("master"), site.started("worker-1"), site.started("worker-2")
    assert first["argv"] == ["--port", str(site.ports[1]), "--cpu", "--preview-method", "auto"]
    assert (first["cuda_visible_devices"], second["cuda_visible_devices"]) == ("1", "2")
    assert first["cwd"] == str(site.root) and first["python"] == sys.executable
    assert master["config_env"] == str(site.config) and master["state_env"] == str(site.state)
    assert not (site.state / "watcher.pid").exists(), "no watcher without settings.stop_workers_on_exit"

    again = site.cli("all-slow")
    assert again.returncode == 0, explain(again)
    assert again.stdout.count(": already running on http") == 3 and "0 started, 3 already running" in again.stdout
    assert {key: read_pid(site.state, key) for key in pids} == pids, "no second process"

    status = site.cli("status")
    assert status.returncode == 0, explain(status)
    for label, key, port in (("master", "master", 0), ("GPU 1", "worker-1", 1), ("GPU 2", "worker-2", 2)):
        row = table_row(status.stdout, label)
        assert str(pids[key]) in row and str(site.ports[port]) in row and " ready " in row, row
        assert "12.0/16.0 GiB" in row, row

    stopped = site.cli("stop", "2")
    assert stopped.returncode == 0, explain(stopped)
    assert not pid_alive(pids["worker-2"]) and not answers(site.ports[2])
    down = site.cli("status")
    assert down.returncode == 1, explain(down)
    assert " down " in table_row(down.stdout, "GPU 2") + " "
    assert "GPU 2 (worker 2) is down: start it with 'python -m comfy_distributed workers'" in down.stderr

    restarted = site.cli("restart", "GPU 2")
    assert restarted.returncode == 0, explain(restarted)
    assert answers(site.ports[2]) and read_pid(site.state, "worker-2") != pids["worker-2"]
    restarted_again = site.cli("restart", "1")
    assert restarted_again.returncode == 0, explain(restarted_again)
    assert not pid_alive(pids["worker-1"]) and answers(site.ports[1])

    logs = site.cli("logs", "1", "-n", "3")
    assert logs.returncode == 0, explain(logs)
    assert logs.stdout.startswith("==> GPU 1 (worker 1): ") and "worker-1.log <==" in logs.stdout
    assert f":{site.ports[1]}" in logs.stdout and len(logs.stdout.splitlines()) <= 4  # since its last start only
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("COMFY_DISTRIBUTED_CONFIG", "COMFY_DISTRIBUTED_STATE_DIR")}
    follow = subprocess.Popen([sys.executable, "-m", "comfy_distributed", "logs", "GPU 2", "-f", "--comfyui",
                               str(site.root), "--config", str(site.config), "--state-dir", str(site.state)],
                              cwd=REPO, env={**environment, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(follow.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        poll(lambda: any("worker-2.log <==" in line for line in seen), 20, "logs -f showing the tail")
        assert site.cli("stop", "2").returncode == 0
        poll(lambda: any("fake-comfyui: stopped" in line for line in seen), 20,
             "the line written after it started following")
    finally:
        follow.send_signal(signal.SIGINT)
        follow.wait(timeout=10)
        reader.join(timeout=10)
        err = follow.stderr.read()
        follow.stdout.close()
        follow.stderr.close()
    assert any("fake-comfyui: stopped" in line for line in seen), "".join(seen) + err
    assert follow.returncode == 0
    never = site.cli("logs", "master", "-n", "2")
    assert never.returncode == 0 and "master" in never.stdout
    again = site.cli("workers")  # worker 2 back, for the final stop
    assert again.returncode == 0, explain(again)

    everything = [read_pid(site.state, key) for key in pids]
    final = site.cli("stop")
    assert final.returncode == 0, explain(final)
    assert not any(pid_alive(pid) for pid in everything), "stop leaves no process"
    assert not any(answers(port) for port in site.ports)
    assert not list(site.state.glob("*.pid"))


def test_all_fast_starts_two_seconds_apart_then_waits_for_all(site):
    result = site.cli("all-fast")
    assert result.returncode == 0, explain(result)
    assert all(answers(port) for port in site.ports)
    started = [json.loads((site.state / f"{key}.pid").read_text())["started"]
               for key in ("master", "worker-1", "worker-2")]
    assert started[1] - started[0] >= 1.9 and started[2] - started[1] >= 1.9, started
    assert site.cli("stop").returncode == 0


def test_early_exit_shows_the_log_tail_and_a_probable_cause(site):
    site.configure([
        worker(1, site.ports[1], extra_args="--cpu --fake-exit 1 --fake-message \"ModuleNotFoundError: No module named "
                                            "'torch'\""),
        worker(2, site.ports[2], extra_args="--cpu --no-such-flag"),
    ])
    result = site.cli("workers")
    assert result.returncode == 1, explain(result)
    err = result.stderr
    assert "GPU 1 (worker 1) exited with code 1 after" in err and "before it answered" in err
    assert "module 'torch' is missing" in err and "-m pip install -r requirements.txt" in err
    assert f"Last lines of {site.state / 'worker-1.log'}" in err and "| ModuleNotFoundError" in err
    assert "GPU 2 (worker 2) exited with code 2" in err and "refused an argument of workers[1].extra_args" in err
    assert "unrecognized arguments: --no-such-flag" in err
    assert "Traceback" not in err.split("| ")[0]
    assert not list(site.state.glob("*.pid"))


class HeldPorts:
    """Three ways another program can hold a port: a web server, a silent listener, a bound socket."""

    def __init__(self, ports: list[int]) -> None:
        self.web = subprocess.Popen([sys.executable, "-m", "http.server", str(ports[0]), "--bind", "127.0.0.1"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.silent = socket.socket()
        self.silent.bind(("127.0.0.1", ports[1]))
        self.silent.listen(8)
        self.bound = socket.socket()
        self.bound.bind(("127.0.0.1", ports[2]))
        poll(lambda: _connects(ports[0]), 20, "http.server listening")

    def close(self) -> None:
        self.web.terminate()
        self.web.wait()
        self.silent.close()
        self.bound.close()


def _connects(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_ports_held_by_other_programs_are_named(site):
    held = HeldPorts(site.ports)
    try:
        result = site.cli("all-slow")
    finally:
        held.close()
    assert result.returncode == 1, explain(result)
    err = result.stderr
    assert err.count("is used by another program, not ComfyUI") == 3, err
    assert "it answers HTTP 404 to GET /system_stats" in err and "master.port" in err
    assert "it accepts connections but does not answer HTTP" in err and "workers[0].port" in err
    assert "workers[1].port" in err and "ss -ltnp" in err
    assert not list(site.state.glob("*.pid")), "nothing was started"


def test_missing_main_py_and_missing_environment(site, tmp_path):
    empty = tmp_path / "NotComfy"
    empty.mkdir()
    result = run_cli("master", "--comfyui", str(empty), "--state-dir", str(site.state))
    assert result.returncode == 1 and f"{empty} has no main.py" in result.stderr and "--comfyui" in result.stderr

    config = json.loads(site.config.read_text())
    config["master"]["python"] = str(tmp_path / "no-env" / "bin" / "python")
    site.config.write_text(json.dumps(config))
    result = site.cli("master")
    assert result.returncode == 1, explain(result)
    assert f"master.python: {tmp_path / 'no-env' / 'bin' / 'python'} does not exist" in result.stderr

    broken = make_comfyui(tmp_path / "Broken")
    (broken / "venv").mkdir()
    result = run_cli("workers", "--comfyui", str(broken), "--config", str(site.config), "--state-dir", str(site.state))
    assert result.returncode == 1, explain(result)
    assert "ComfyUI's environment is incomplete" in result.stderr and "workers[0].python" in result.stderr


def test_bad_config_is_reported_with_the_field(site):
    site.config.write_text(json.dumps({"workers": [{"id": 1, "port": 70000}]}))
    result = site.cli("all-slow")
    assert result.returncode == 1
    assert "workers[0].port" in result.stderr and "65535" in result.stderr and "Traceback" not in result.stderr
    result = site.cli("restart", "7")
    assert result.returncode == 1


def test_unknown_instance_lists_the_known_ones(site):
    result = site.cli("restart", "nope")
    assert result.returncode == 1 and "no instance 'nope'" in result.stderr and "known: master, 1, 2" in result.stderr


def test_instance_started_by_hand_is_left_alone(site, tmp_path):
    by_hand = subprocess.Popen([sys.executable, str(site.root / "main.py"), "--port", str(site.ports[1])],
                               cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        poll(lambda: answers(site.ports[1]), 30, "the hand-started instance")
        result = site.cli("workers")
        assert result.returncode == 0, explain(result)
        assert "GPU 1 (worker 1): already running" in result.stdout
        status = site.cli("status")
        assert "not started by this launcher" in table_row(status.stdout, "GPU 1")
        stop = site.cli("stop", "1")
        assert stop.returncode == 1 and "was not started by this launcher" in stop.stderr
        assert by_hand.poll() is None
    finally:
        os.killpg(by_hand.pid, signal.SIGKILL)
        by_hand.wait()
    site.cli("stop")


def test_workers_stop_when_the_master_exits(site):
    site.configure([worker(1, site.ports[1]), worker(2, site.ports[2])], stop_workers_on_exit=True)
    result = site.cli("all-slow")
    assert result.returncode == 0, explain(result)
    assert "the workers the launcher started are stopped too" in result.stdout
    workers = [read_pid(site.state, "worker-1"), read_pid(site.state, "worker-2")]
    watcher = read_pid(site.state, "watcher")
    os.killpg(read_pid(site.state, "master"), signal.SIGKILL)  # the master crashes or is closed
    poll(lambda: not any(pid_alive(pid) for pid in workers), 40, "the workers stopped after the master")
    poll(lambda: not pid_alive(watcher), 10, "the watcher ended")
    assert not list(site.state.glob("*.pid"))
    assert "stopping the workers the launcher started" in (site.state / "watcher.log").read_text()


def test_restarting_the_master_keeps_the_workers(site):
    site.configure([worker(1, site.ports[1])], stop_workers_on_exit=True)
    assert site.cli("all-slow").returncode == 0
    first_worker = read_pid(site.state, "worker-1")
    result = site.cli("restart", "master")
    assert result.returncode == 0, explain(result)
    assert pid_alive(first_worker) and answers(site.ports[0])
    assert pid_alive(read_pid(site.state, "watcher"))
    assert site.cli("stop").returncode == 0
    assert not pid_alive(first_worker)


def fake_venv(root: Path) -> Path:
    """ComfyUI's venv/bin/python: a script that runs the test interpreter (which can import the stand-in)."""
    python = root / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    (root / "venv" / "pyvenv.cfg").write_text(f"home = {Path(sys.executable).parent}\n")
    return python


@pytest.mark.skipif(os.name == "nt", reason="POSIX shell")
def test_venv_is_found_used_and_opened_as_a_shell(site):
    python = fake_venv(site.root)
    result = site.cli("master")
    assert result.returncode == 0, explain(result)
    assert f"with {python} (ComfyUI's venv)" in result.stdout
    assert f"command: {python} {site.root / 'main.py'} --port {site.ports[0]} --cpu" in \
        (site.state / "master.log").read_text()
    assert site.cli("stop").returncode == 0

    shell = site.cli("venv", env={"SHELL": "/bin/sh"}, input='echo "VENV=$VIRTUAL_ENV"; command -v python; exit 3\n')
    assert shell.returncode == 3, explain(shell)
    assert f"VENV={site.root / 'venv'}" in shell.stdout and f"{python}\n" in shell.stdout


def git(*args: str, cwd: Path) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def repository_with_a_clone(origin: Path, clone: Path) -> None:
    origin.mkdir(parents=True)
    git("init", "-q", "-b", "main", cwd=origin)
    (origin / "requirements.txt").write_text("")
    git("add", ".", cwd=origin)
    git("commit", "-q", "-m", "one", cwd=origin)
    git("clone", "-q", str(origin), str(clone), cwd=origin.parent)
    (origin / "new.txt").write_text("new")
    git("add", ".", cwd=origin)
    git("commit", "-q", "-m", "two", cwd=origin)


@pytest.mark.skipif(not __import__("shutil").which("git"), reason="git is not installed")
def test_update_nodes_pulls_every_repository(site, tmp_path):
    nodes = site.root / "custom_nodes"
    repository_with_a_clone(tmp_path / "origin-a", nodes / "node-a")
    (nodes / "not-a-repo").mkdir()
    result = site.cli("update-nodes")
    assert result.returncode == 0, explain(result)
    assert (nodes / "node-a" / "new.txt").is_file()
    assert "Updated: node-a" in result.stdout and "left alone): not-a-repo" in result.stdout

    git("reset", "-q", "--hard", "HEAD~1", cwd=nodes / "node-a")
    (nodes / "node-a" / "new.txt").write_text("a local change in the way")
    failed = site.cli("update-nodes")
    assert failed.returncode == 1 and "failed: node-a (git pull)" in failed.stderr


@pytest.mark.skipif(not __import__("shutil").which("git"), reason="git is not installed")
def test_update_needs_a_git_checkout(site, tmp_path):
    result = site.cli("update")
    assert result.returncode == 1 and "is not a git checkout" in result.stderr and "update_comfyui.bat" in result.stderr
    repository_with_a_clone(tmp_path / "origin", tmp_path / "clone")
    checkout = make_comfyui(tmp_path / "clone")
    result = run_cli("update", "--comfyui", str(checkout), "--config", str(site.config), "--state-dir",
                     str(site.state))
    assert result.returncode == 0, explain(result)
    assert (checkout / "new.txt").is_file() and "ComfyUI is up to date" in result.stdout


def test_console_script_entry_point_is_the_cli():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["comfy-distributed"] == "comfy_distributed.cli:main"


@pytest.mark.skipif(os.name == "nt", reason="POSIX shell")
@pytest.mark.parametrize("placement", ["extension folder", "copied into ComfyUI"])
def test_shell_wrapper_finds_comfyui_and_its_python(site, placement):
    extension = site.root / "custom_nodes" / "ComfyUI-Distributed"
    extension.symlink_to(REPO, target_is_directory=True)
    python = fake_venv(site.root)
    script = extension / "launch_distributed.sh"
    if placement == "copied into ComfyUI":
        script = site.root / "launch_distributed.sh"
        script.write_bytes((REPO / "launch_distributed.sh").read_bytes())
    result = subprocess.run(["sh", str(script), "master", "--config", str(site.config), "--state-dir", str(site.state)],
                            cwd="/", capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, explain(result)
    assert f"ComfyUI: {site.root}" in result.stdout and f"with {python} (ComfyUI's venv)" in result.stdout
    usage = subprocess.run(["sh", str(script)], cwd="/", capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL)
    assert usage.returncode == 2 and "all-slow" in usage.stdout, "no mode and no terminal: the usage"
    assert site.cli("stop").returncode == 0
