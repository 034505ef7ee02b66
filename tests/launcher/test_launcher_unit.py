"""The launcher's pure parts: finding ComfyUI and its Python, splitting arguments, hints, the run client's model."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from comfy_distributed import cli, launcher
from comfy_distributed.config import parse_config
from comfy_distributed.errors import RunError
from comfy_distributed.launcher import (
    Instance,
    LaunchError,
    explain,
    find_comfyui_root,
    find_python,
    instances_of,
    is_local_host,
    listen_address,
    probe_host,
    since_last_start,
    split_args,
    vram_text,
)
from comfy_distributed.launcher.ssh import explain_ssh_failure
from comfy_distributed.config import SshConfig


def comfy_folder(path: Path) -> Path:
    (path / "comfy").mkdir(parents=True)
    (path / "main.py").write_text("")
    return path


# --- ComfyUI's folder and Python ----------------------------------------------------------------


def test_root_is_found_from_the_folder_or_below_it(tmp_path):
    root = comfy_folder(tmp_path / "ComfyUI")
    inner = root / "custom_nodes" / "ComfyUI-Distributed"
    inner.mkdir(parents=True)
    assert find_comfyui_root(None, root) == root.resolve()
    assert find_comfyui_root(None, inner) == root.resolve()


def test_root_not_found_says_what_to_do(tmp_path):
    with pytest.raises(LaunchError) as caught:
        find_comfyui_root(None, tmp_path, extension=None)  # wherever this clone sits, a ComfyUI tree included
    message = str(caught.value)
    assert "main.py" in message and "--comfyui" in message and "Desktop" in message
    with pytest.raises(LaunchError, match="has no main.py"):
        find_comfyui_root(str(tmp_path))


def test_root_falls_back_to_the_comfyui_the_extension_is_installed_in(tmp_path):
    comfyui = tmp_path / "ComfyUI"
    extension = comfyui / "custom_nodes" / "ComfyUI-Distributed"
    extension.mkdir(parents=True)
    (comfyui / "main.py").write_text("")
    (comfyui / "folder_paths.py").write_text("")
    elsewhere = tmp_path / "a" / "b" / "c" / "d" / "e"
    elsewhere.mkdir(parents=True)
    assert find_comfyui_root(None, elsewhere, extension=extension) == comfyui.resolve()
    with pytest.raises(LaunchError):
        find_comfyui_root(None, elsewhere, extension=tmp_path / "plugins" / "ComfyUI-Distributed")


@pytest.mark.parametrize("venv", ["venv", ".venv"])
def test_python_of_comfyui_venv(tmp_path, venv):
    python = tmp_path / venv / ("Scripts/python.exe" if launcher.WINDOWS else "bin/python")
    python.parent.mkdir(parents=True)
    python.write_text("")
    assert find_python(tmp_path, None, "master") == (str(python), f"ComfyUI's {venv}")


def test_python_of_portable_build(tmp_path):
    root = tmp_path / "ComfyUI"
    root.mkdir()
    python = tmp_path / "python_embeded" / "python.exe"
    python.parent.mkdir()
    python.write_text("")
    assert find_python(root, None, "master") == (str(python), "the portable build's python_embeded")


def test_python_falls_back_to_the_running_one(tmp_path):
    python, origin = find_python(tmp_path, None, "master")
    assert python == sys.executable and "running Python" in origin


def test_python_from_config_wins_and_relative_is_under_comfyui(tmp_path):
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / "bin" / "python").write_text("")
    custom = tmp_path / "envs" / "py"
    custom.parent.mkdir()
    custom.write_text("")
    assert find_python(tmp_path, "envs/py", "workers[0]") == (str(custom), "workers[0].python")
    assert find_python(tmp_path, str(custom), "master")[0] == str(custom)


def test_missing_configured_python_names_the_field(tmp_path):
    with pytest.raises(LaunchError) as caught:
        find_python(tmp_path, "/no/such/python", "workers[1]")
    assert "workers[1].python" in str(caught.value) and "/no/such/python" in str(caught.value)


def test_incomplete_venv_is_reported(tmp_path):
    (tmp_path / "venv").mkdir()
    with pytest.raises(LaunchError) as caught:
        find_python(tmp_path, None, "master")
    assert "incomplete" in str(caught.value) and "master.python" in str(caught.value)


# --- arguments ----------------------------------------------------------------------------------


def test_extra_args_are_split_never_interpolated():
    args = split_args('--listen 0.0.0.0 --output-directory "/data/my images" $(rm -rf /) ; echo', "master")
    assert args == ["--listen", "0.0.0.0", "--output-directory", "/data/my images", "$(rm", "-rf", "/)", ";", "echo"]


def test_extra_args_with_unbalanced_quotes_name_the_field():
    with pytest.raises(LaunchError, match=r"workers\[2\]\.extra_args.*quotes"):
        split_args('--foo "bar', "workers[2]")


@pytest.mark.parametrize("text", ["--port 9000", "--cpu --port=9000"])
def test_port_in_extra_args_is_refused(text):
    with pytest.raises(LaunchError, match=r"master\.port"):
        split_args(text, "master")


@pytest.mark.parametrize("args, address, probe", [
    ("", "127.0.0.1", "127.0.0.1"),
    ("--listen", "0.0.0.0", "127.0.0.1"),
    ("--listen --cpu", "0.0.0.0", "127.0.0.1"),
    ("--listen 192.168.1.5,127.0.0.1", "192.168.1.5", "192.168.1.5"),
    ("--listen=::1", "::1", "[::1]"),
    ("--listen 0.0.0.0", "0.0.0.0", "127.0.0.1"),
])
def test_listen_address(args, address, probe):
    assert listen_address(args) == address
    assert probe_host(args) == probe


@pytest.mark.parametrize("host, local", [
    (None, True), ("127.0.0.1", True), ("localhost", True), ("[::1]", True), ("http://127.0.0.1:9000/x", True),
    ("192.0.2.10", False), ("https://gpu.example.com", False),
])
def test_local_hosts(host, local):
    assert is_local_host(host) is local


def test_instances_in_config_order_with_kinds():
    config = parse_config({"master": {"port": 9000, "extra_args": "--listen"}, "workers": [
        {"id": 1, "port": 9001, "cuda_device": 1},
        {"id": "far", "port": 9002, "host": "192.0.2.10"},
        {"id": 3, "port": 9003, "host": "192.0.2.11", "enabled": False,
         "ssh": {"host": "192.0.2.11", "comfyui_path": "/opt/ComfyUI"}},
    ]})
    found = instances_of(config)
    assert [(i.key, i.kind, i.url, i.enabled) for i in found] == [
        ("master", "local", "http://127.0.0.1:9000", True),
        ("worker-1", "local", "http://127.0.0.1:9001", True),
        ("worker-far", "external", "http://192.0.2.10:9002", True),
        ("worker-3", "ssh", "http://192.0.2.11:9003", False),
    ]
    assert found[1].label == "Worker 1 (worker 1)" and found[1].field == "workers[0]"


# --- logs and hints -------------------------------------------------------------------------------


def test_log_tail_starts_after_the_last_start():
    text = "\n".join(["old 1", f"{launcher.LOG_MARK} start", "old 2", f"{launcher.LOG_MARK} start",
                      f"{launcher.LOG_MARK} command: x", "new 1", "new 2"])
    assert since_last_start(text) == "new 1\nnew 2"
    assert since_last_start("a\nb\nc", lines=2) == "b\nc"


def instance(**fields) -> Instance:
    values = {"key": "worker-1", "name": "GPU 1", "field": "workers[0]", "port": 8189,
              "url": "http://127.0.0.1:8189", "cuda_device": 1, "extra_args": "--bogus", "python": None}
    values.update(fields)
    return Instance(**values)


@pytest.mark.parametrize("log, expected", [
    ("Traceback\nModuleNotFoundError: No module named 'torch'", "module 'torch' is missing"),
    ("OSError: [Errno 98] error while attempting to bind on address ('127.0.0.1', 8189): address already in use",
     "port 8189 is taken"),
    ("AssertionError: Torch not compiled with CUDA enabled", "cuda_device = 1"),
    ("main.py: error: unrecognized arguments: --bogus", "workers[0].extra_args"),
    ("torch.OutOfMemoryError: CUDA out of memory", "--lowvram"),
])
def test_hints_for_early_exits(log, expected):
    hint = explain(log, instance(), "/venv/bin/python")
    assert hint is not None and expected in hint


def test_no_hint_for_an_unknown_failure():
    assert explain("something odd", instance(), "python") is None


def test_vram_text():
    stats = {"devices": [{"name": "cuda:0 NVIDIA GeForce RTX 4090", "vram_free": 12 * 2**30,
                          "vram_total": 24 * 2**30}]}
    assert vram_text(stats).startswith("12.0/24.0 GiB cuda:0")
    assert vram_text({"devices": []}) is None and vram_text(None) is None
    cpu = {"devices": [{"name": "cpu", "type": "cpu", "vram_free": 14 * 2**30, "vram_total": 23 * 2**30}]}
    assert vram_text(cpu) == "RAM 14.0/23.0 GiB cpu", "a --cpu instance reports system RAM, not VRAM"


@pytest.mark.parametrize("stderr, expected", [
    ("root@127.0.0.1: Permission denied (publickey).", "Permission denied"),
    ("Host key verification failed.", "known_hosts"),
    ("ssh: connect to host 127.0.0.1 port 2222: Connection refused", "no SSH server answers on 127.0.0.1:2222"),
    ("ssh: Could not resolve hostname nowhere: Name or service not known", "cannot be resolved"),
    ("ssh: connect to host 10.1.1.1 port 22: Connection timed out", "cannot be reached"),
    ("WARNING: UNPROTECTED PRIVATE KEY FILE!\nPermission denied (publickey).", "chmod 600"),
    ("kex_exchange_identification: read: Connection reset by peer", "Connection reset by peer"),
])
def test_ssh_failures_are_explained(stderr, expected):
    ssh = SshConfig(host="127.0.0.1", port=2222, user="me", key_file="~/.ssh/id", comfyui_path="/c")
    assert expected in explain_ssh_failure(stderr, ssh, "me@127.0.0.1")


# --- the CLI's own parts -----------------------------------------------------------------------------


def test_config_is_found_in_the_installed_extension(tmp_path, monkeypatch):
    monkeypatch.delenv("COMFY_DISTRIBUTED_CONFIG", raising=False)
    extension = tmp_path / "custom_nodes" / "ComfyUI-Distributed"
    (extension / "comfy_distributed").mkdir(parents=True)
    (extension / "comfy_distributed" / "__init__.py").write_text("")
    (extension / "gpu_config.json").write_text("{}")
    assert cli.find_config(tmp_path, None) == ((extension / "gpu_config.json").resolve(), True)
    (extension / "gpu_config.json").unlink()  # not there yet: still that one, never the running copy's own
    (tmp_path / "running_copy.json").write_text("{}")
    monkeypatch.setattr(cli.site, "DEFAULT_CONFIG_PATH", tmp_path / "running_copy.json")
    assert cli.find_config(tmp_path, None) == ((extension / "gpu_config.json").resolve(), False)
    monkeypatch.setenv("COMFY_DISTRIBUTED_CONFIG", str(tmp_path / "elsewhere.json"))
    assert cli.find_config(tmp_path, None) == ((tmp_path / "elsewhere.json").resolve(), False)
    with pytest.raises(LaunchError, match="does not exist"):
        cli.find_config(tmp_path, str(tmp_path / "missing.json"))


def test_warnings_for_ssh_workers_the_master_cannot_reach():
    config = parse_config({"workers": [{"id": 1, "port": 8189, "extra_args": "",
                                        "ssh": {"host": "192.0.2.7", "comfyui_path": "/opt/ComfyUI"}},
                                       {"id": 2, "port": 8190, "host": "192.0.2.8", "extra_args": "--cpu",
                                        "ssh": {"host": "192.0.2.8", "comfyui_path": "/opt/ComfyUI"}}]})
    warnings = cli.config_warnings(config)
    assert any("workers[0].host" in w and "192.0.2.7" in w for w in warnings)
    assert any("workers[1]" in w and "--listen" in w for w in warnings)


@pytest.mark.parametrize("content, expected", [
    ({"1": {"class_type": "A", "inputs": {}}}, "ok"),
    ({"prompt": {"1": {"class_type": "A", "inputs": {}}}, "extra_data": {"x": 1}}, "ok"),
    ({"nodes": [], "links": []}, "Export (API)"),
    ({"1": {"inputs": {}}}, "class_type"),
    ([], "API-format"),
])
def test_workflow_files(tmp_path, content, expected):
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(content))
    if expected == "ok":
        prompt, extra = cli.load_workflow(path)
        assert prompt == {"1": {"class_type": "A", "inputs": {}}}
        assert extra == content.get("extra_data", {})
    else:
        with pytest.raises(RunError, match=expected.replace("(", r"\(").replace(")", r"\)")):
            cli.load_workflow(path)


def test_workflow_file_missing_or_broken(tmp_path):
    with pytest.raises(RunError, match="does not exist"):
        cli.load_workflow(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(RunError, match="JSON"):
        cli.load_workflow(tmp_path / "bad.json")


def test_progress_model():
    prompt = {"1": {"class_type": "Load"}, "2": {"class_type": "KSampler"}, "3": {"class_type": "Save"}, "4": {}}
    progress = cli.Progress(prompt)
    display = cli.ProgressDisplay(io.StringIO())
    assert not cli.apply_event("execution_cached", {"nodes": ["1"], "prompt_id": "p"}, "p", None, progress, display)
    cli.apply_event("executing", {"node": "2", "prompt_id": "p"}, "p", None, progress, display)
    cli.apply_event("progress", {"value": 5, "max": 10, "node": "2", "prompt_id": "p"}, "p", None, progress, display)
    assert progress.fraction() == pytest.approx(1.5 / 4)
    assert "KSampler 5/10" in progress.line() and " 37%" in progress.line()
    cli.apply_event("multigpu.job_progress", {"job_id": "other", "progress": 1.0, "units": []}, "p", "j", progress, display)
    assert progress.cluster is None
    units = [{"state": "done"}, {"state": "running"}]
    cli.apply_event("multigpu.job_progress", {"job_id": "j", "progress": 0.5, "units": units}, "p", "j", progress, display)
    assert progress.units == (1, 2) and progress.fraction() == pytest.approx((1.5 / 4 + 0.5) / 2)
    assert "cluster: 1/2 units done" in progress.line()
    assert not cli.apply_event("executing", {"node": None, "prompt_id": "someone-else"}, "p", "j", progress, display)
    assert cli.apply_event("executing", {"node": None, "prompt_id": "p"}, "p", "j", progress, display)
    with pytest.raises(RunError, match=r"node 9 \(Boom\): kaput"):
        cli.apply_event("execution_error", {"prompt_id": "p", "node_id": "9", "node_type": "Boom",
                                       "exception_message": "kaput\n"}, "p", "j", progress, display)


def test_progress_prints_lines_when_not_a_terminal():
    stream = io.StringIO()
    display = cli.ProgressDisplay(stream)
    progress = cli.Progress({"1": {"class_type": "A"}, "2": {"class_type": "B"}})
    for _ in range(3):
        display.show(progress)
    progress.done.add("1")
    display.show(progress)
    assert stream.getvalue().count("\n") == 2 and "\r" not in stream.getvalue()


def test_status_table_lines_up():
    config = parse_config({"master": {"port": 9000}, "workers": [{"id": 1, "port": 9001}]})
    master, worker = instances_of(config)
    table = cli.format_status([launcher.InstanceStatus(master, "ready", 42, "1.0/2.0 GiB cpu"),
                               launcher.InstanceStatus(worker, "down")], {"1": "offline"})
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["instance", "pid", "port", "state"]
    assert "42" in lines[1] and "ready" in lines[1] and "1.0/2.0 GiB" in lines[1]
    assert "down" in lines[2] and "offline" in lines[2]
    assert lines[0].index("state") == lines[1].index("ready") == lines[2].index("down")


def test_usage_errors_exit_2_and_user_errors_exit_1_without_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main(["no-such-mode"])
    assert caught.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
    assert cli.main(["status", "--comfyui", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and "main.py" in err


def test_progress_bar_never_moves_back():
    stream = io.StringIO()
    display = cli.ProgressDisplay(stream)
    progress = cli.Progress({"1": {"class_type": "A"}, "2": {"class_type": "B"}, "3": {"class_type": "C"}})
    progress.done.update({"1", "2"})
    display.show(progress)
    progress.done.add("3")
    progress.cluster, progress.units = 0.0, (0, 2)  # the workers' share becomes known: (1 + 0) / 2
    display.show(progress)
    assert [line.split("%")[0][-3:] for line in stream.getvalue().splitlines()] == [" 66", " 66"]


def test_help_menu_and_dispatch_come_from_one_table(capsys, monkeypatch):
    from comfy_distributed.cli import modes

    with pytest.raises(SystemExit):
        cli.main(["--help"])
    listed = " ".join(capsys.readouterr().out.split())  # argparse wraps long lines
    shown = [mode for mode in modes.MODES if mode.help]
    assert all(mode.name in listed and mode.help in listed for mode in shown)
    assert "watch" not in listed, "the internal mode stays out of the help"
    assert [m.name for m in modes.MENU] == [m.name for m in shown if m.in_menu]
    assert {"restart", "run"}.isdisjoint(m.name for m in modes.MENU), "modes that need an argument are not offered"

    ran: list[tuple[str, list[str]]] = []
    chosen = modes.MENU.index(modes.BY_NAME["stop"]) + 1
    monkeypatch.setattr(modes, "MENU", [m if m.name != "stop" else modes.Mode(
        "stop", m.help, lambda args: ran.append((args.mode, args.names)) or 7, m.arguments) for m in modes.MENU])
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: str(chosen))
    assert cli.main([]) == 7 and ran == [("stop", [])], "the menu runs the chosen mode with its defaults"
    menu_text = capsys.readouterr().out
    assert all(f"{n}) {m.name}" in menu_text for n, m in enumerate(modes.MENU, 1))
