"""``status`` resolves: "starting" only while a start is under way, then a verdict (wrong port, not answering),
and its output stays within 100 columns whatever the worker's name.

The instance the launcher "started" is a sleeping child process of the test, recorded in the state folder's
pid file the way the launcher records its own; the ComfyUI that answers is a small HTTP server in a thread
that answers ``GET /system_stats`` as ComfyUI does.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from comfy_distributed import cli
from comfy_distributed.config import parse_config
from comfy_distributed.launcher import InstanceStatus, LaunchContext, Launcher, LocalProcesses, Record, instances_of
from comfy_distributed.launcher.locks import instance_lock
from comfy_distributed.launcher.probing import Probe
from comfy_distributed.launcher.processes import start_token
from comfy_distributed.launcher.status import Findings, judge, url_at_port
from tests.waiting import closed_port

SYSTEM_STATS = {"system": {"os": "posix"}, "devices": [{"name": "cpu", "type": "cpu", "vram_total": 2 ** 31,
                                                         "vram_free": 2 ** 30}]}


MASTER_STATUS = {"master": {"status": "online"}, "workers": [{"id": 1, "status": "offline"}], "jobs": [],
                 "cluster": {"line": "0 prompts running"}, "config_warnings": ["worker 1: unknown key 'x' is ignored"]}


class _Stats(BaseHTTPRequestHandler):
    """GET /system_stats as ComfyUI answers it; GET /multigpu/status as a master of this extension does."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        answer = {"/system_stats": SYSTEM_STATS, "/multigpu/status": MASTER_STATUS}.get(self.path)
        body = json.dumps(answer or {}).encode()
        self.send_response(200 if answer else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def comfyui_port() -> Iterator[int]:
    """A port on which something answers GET /system_stats as ComfyUI."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stats)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen]:
    """A live process to stand for the ComfyUI the launcher started (its pid file must name a live process)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        yield process
    finally:
        process.kill()
        process.wait(10)


def launcher_for(tmp_path: Path, worker_port: int, name: str = "GPU 1", **settings) -> Launcher:
    config = parse_config({"master": {"port": closed_port(), "cuda_device": None},
                           "workers": [{"id": 1, "name": name, "port": worker_port, "cuda_device": None}],
                           "settings": settings})
    (tmp_path / "main.py").write_text("")
    state = tmp_path / "state"
    state.mkdir(mode=0o700, exist_ok=True)
    return Launcher(config, LaunchContext(tmp_path, tmp_path / "gpu_config.json", state))


def record_start(launcher: Launcher, process: subprocess.Popen, port: int, seconds_ago: float) -> None:
    """The pid file the launcher writes when it starts worker 1: its process, the port it was started with."""
    LocalProcesses(launcher.context).write("worker-1", Record(process.pid, port, time.time() - seconds_ago, "local",
                                                              start_token(process.pid), "", sys.executable))


def worker_status(launcher: Launcher) -> InstanceStatus:
    return launcher.status()[1]


# --- on real processes and ports ---------------------------------------------------------------------


def test_a_worker_that_answers_on_another_port_is_named_as_such(tmp_path, sleeper, comfyui_port):
    configured = closed_port()
    launcher = launcher_for(tmp_path, configured, launch_timeout=600)
    record_start(launcher, sleeper, comfyui_port, seconds_ago=5)  # started on the old port; the config changed
    status = worker_status(launcher)
    assert status.state == "wrong-port" and status.pid == sleeper.pid
    assert f"not answering on port {configured}; the ComfyUI the launcher started for it" in status.hint
    assert f"answers on {comfyui_port}: fix `port` in gpu_config.json" in status.hint
    assert "restart 1" in status.hint and status.down


def test_starting_lasts_only_as_long_as_a_start_may_take(tmp_path, sleeper):
    launcher = launcher_for(tmp_path, closed_port(), launch_timeout=30)
    record_start(launcher, sleeper, launcher.config.workers[0].port, seconds_ago=3)
    young = worker_status(launcher)
    assert young.state == "starting" and "run status again in a moment" in young.hint
    record_start(launcher, sleeper, launcher.config.workers[0].port, seconds_ago=31)
    old = worker_status(launcher)
    assert old.state == "not-answering", "past settings.launch_timeout, status gives a verdict"
    assert f"pid {sleeper.pid}" in old.hint and "logs 1" in old.hint and "restart 1" in old.hint
    assert "settings.launch_timeout = 30 s" in old.hint


def test_a_start_under_way_is_starting_while_its_lock_is_held(tmp_path, sleeper):
    launcher = launcher_for(tmp_path, closed_port(), launch_timeout=30)
    lock = launcher.local.lock_path("worker-1")
    assert worker_status(launcher).state == "down"
    held, release = threading.Event(), threading.Event()

    def another_launcher() -> None:
        with instance_lock(lock, "GPU 1"):
            held.set()
            release.wait(20)

    thread = threading.Thread(target=another_launcher)
    thread.start()
    try:
        assert held.wait(20)
        assert worker_status(launcher).state == "starting"
        record_start(launcher, sleeper, launcher.config.workers[0].port, seconds_ago=3600)
        assert worker_status(launcher).state == "starting", "an old pid file, but a start holds the lock"
    finally:
        release.set()
        thread.join(20)
    assert worker_status(launcher).state == "not-answering"


def test_status_command_explains_a_wrong_port_within_100_columns(tmp_path, sleeper, comfyui_port, capsys):
    long_name = "CPU worker on the big machine under the desk in the lab, second socket"
    launcher = launcher_for(tmp_path, closed_port(), name=long_name)
    config = {"master": {"port": launcher.config.master.port, "cuda_device": None},
              "workers": [{"id": 1, "name": long_name, "port": launcher.config.workers[0].port,
                           "cuda_device": None}]}
    (tmp_path / "gpu_config.json").write_text(json.dumps(config))
    record_start(launcher, sleeper, comfyui_port, seconds_ago=5)
    code = cli.main(["status", "--comfyui", str(tmp_path), "--config", str(tmp_path / "gpu_config.json"),
                     "--state-dir", str(launcher.context.state_dir)])
    out, err = capsys.readouterr()
    assert code == 1
    lines = (out + err).splitlines()
    assert lines and max(len(line) for line in lines) <= 100, "\n".join(lines)
    row = next(line for line in out.splitlines() if line.startswith("CPU worker"))
    assert "..." in row and " wrong-port " in row and "here" in row
    said = " ".join(err.split())
    assert f"answers on {comfyui_port}: fix `port` in gpu_config.json" in said
    assert "still starting" not in said


# --- the judgement alone ------------------------------------------------------------------------------


def instance(port: int = 8189, url: str | None = None):
    worker = {"id": 1, "name": "GPU 1", "port": port}
    if url is not None:
        worker["host"] = url
    return instances_of(parse_config({"workers": [worker]}))[1]


def test_judge_from_findings():
    closed = Probe("closed")
    record = Record(4242, 8189, 1000.0)
    assert judge(instance(), Findings(closed, record, None, False, 1010.0), 60).state == "starting"
    late = judge(instance(), Findings(closed, record, None, False, 1061.0), 60)
    assert late.state == "not-answering" and "in the 61 s since its start" in late.hint
    moved = Record(4242, 8190, 1000.0)
    assert "nor on port 8190 it was started with" in judge(instance(), Findings(closed, moved, None, False, 2000.0),
                                                           60).hint
    wrong = judge(instance(), Findings(closed, moved, 8190, False, 1001.0), 60)
    assert wrong.state == "wrong-port" and "fix `port` in gpu_config.json (workers[0].port: 8190)" in wrong.hint
    bare = Record(4242, 0, 0.0)  # a pid file another tool wrote: no port, no start time
    assert judge(instance(), Findings(closed, bare, None, False, 5000.0), 60).state == "not-answering"
    assert judge(instance(), Findings(closed, None, None, True, 0.0), 60).state == "starting"
    assert judge(instance(), Findings(closed), 60).state == "down"


def test_another_port_only_where_the_address_has_one():
    assert url_at_port("http://127.0.0.1:8189", 8190) == "http://127.0.0.1:8190"
    assert url_at_port("http://[::1]:8189/comfy", 8190) == "http://[::1]:8190/comfy"
    assert url_at_port("https://gpu.example/comfy", 8190) is None


def test_status_table_clips_long_names_and_keeps_the_address():
    config = parse_config({"master": {"port": 9000}, "workers": [
        {"id": 1, "port": 9001, "name": "CPU worker with a name far too long for any terminal's status table"},
        {"id": 2, "port": 9002, "host": "192.168.100.200", "name": "remote"}]})
    master, local, remote = instances_of(config)
    statuses = [InstanceStatus(master, "ready", 4194304, "12.3/24.0 GiB NVIDIA GeForce RTX 4"),
                InstanceStatus(local, "not-answering", 4194303, detail="pid 4194303 runs, answers nowhere"),
                InstanceStatus(remote, "ready", None, "1.0/2.0 GiB cpu")]
    table = cli.format_status(statuses, {"1": "offline", "2": "idle"})
    lines = table.splitlines()
    assert max(len(line) for line in lines) <= 100, table
    assert lines[2].startswith("CPU worker") and "..." in lines[2] and "not-answering" in lines[2]
    wider = cli.format_status(statuses[:2], {"1": "offline"}).splitlines()  # room for the worker id: it stays
    assert wider[2].startswith("CPU worker") and "... (worker 1)" in wider[2] and max(map(len, wider)) <= 100
    assert "192.168.100.200:9002" in lines[3] and "12.3/24.0 GiB" in lines[1]
    assert lines[0].index("state") == lines[1].index("ready") == lines[2].index("not-answering")
    assert lines[0].index("master sees") == lines[2].index("offline")


def test_a_narrow_table_keeps_every_column_whole():
    config = parse_config({"master": {"port": 9000}, "workers": [{"id": 1, "port": 9001, "name": "GPU 1"}]})
    master, worker = instances_of(config)
    table = cli.format_status([InstanceStatus(master, "ready", 42, "RAM 12.0/16.0 GiB cpu"),
                               InstanceStatus(worker, "ready", 43, "RAM 12.0/16.0 GiB cpu",
                                              "not started by this launcher")], {})
    assert "GPU 1 (worker 1)" in table and "not started by this launcher" in table and "RAM 12.0/16.0 GiB cpu" in table


# --- the config's warnings ------------------------------------------------------------------------------------


def test_status_prints_the_configs_warnings_when_the_master_is_down(tmp_path, capsys):
    launcher = launcher_for(tmp_path, closed_port())
    config = {"master": {"port": launcher.config.master.port, "cuda_device": None},
              "workers": [{"id": 1, "name": "GPU 1", "port": launcher.config.workers[0].port, "enabeld": False}]}
    (tmp_path / "gpu_config.json").write_text(json.dumps(config))
    code = cli.main(["status", "--comfyui", str(tmp_path), "--config", str(tmp_path / "gpu_config.json"),
                     "--state-dir", str(launcher.context.state_dir)])
    out = capsys.readouterr().out
    assert code == 1
    assert "warning: worker 1 (GPU 1): unknown key 'enabeld' (did you mean 'enabled'?) is ignored" in \
        " ".join(out.split())


def test_the_master_view_carries_its_config_warnings(comfyui_port):
    view = cli.instances.master_view(f"http://127.0.0.1:{comfyui_port}")
    assert view.workers == {"1": "offline"} and view.line == "0 prompts running"
    assert view.warnings == ["worker 1: unknown key 'x' is ignored"]
    assert cli.instances.master_view(f"http://127.0.0.1:{closed_port()}").warnings is None


def test_the_masters_warnings_come_first_and_each_once():
    config = parse_config({"workers": [{"id": 1, "port": 8189, "enabeld": False}]})
    from_master = ["worker 1: unknown key 'enabeld' (did you mean 'enabled'?) is ignored", "from the master"]
    assert cli.instances.status_warnings(config, from_master) == from_master
    assert cli.instances.status_warnings(config, None) == from_master[:1], "the master did not answer: checked here"
