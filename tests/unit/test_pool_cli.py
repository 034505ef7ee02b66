"""``comfy-distributed agent``: its place in the help, and its usage errors, said before anything starts."""

from __future__ import annotations

import pytest

from comfy_distributed.cli import main


def test_the_agent_mode_is_in_the_help(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "agent" in capsys.readouterr().out


@pytest.mark.parametrize("argv, words", [
    (["agent", "--pool", "http://redis:6379"], "--pool: must start with redis://"),
    (["agent", "--pool", "redis://h", "--comfyui", "/opt/ComfyUI"], "give its ComfyUI's address"),
    (["agent", "--pool", "redis://h", "--name", "a\tb"], "agent name"),
    (["agent", "--pool", "redis://h", "--tags", "ok,not ok"], "agent tag 'not ok'"),
    (["agent", "--pool", "redis://:secret@h:1/x"], "/DB"),
])
def test_bad_agent_arguments_are_one_line_errors(capsys, monkeypatch, argv, words):
    monkeypatch.delenv("COMFY_DISTRIBUTED_POOL", raising=False)
    assert main(argv) == 1
    error = capsys.readouterr().err
    assert words in error and "secret" not in error and "Traceback" not in error


def test_the_pool_url_may_come_from_the_environment(capsys, monkeypatch):
    """So that a password stays out of the process list (the launcher starts its agents so); --pool wins."""
    monkeypatch.delenv("COMFY_DISTRIBUTED_POOL", raising=False)
    assert main(["agent"]) == 1
    assert "give the pool's Redis with --pool URL or in COMFY_DISTRIBUTED_POOL" in capsys.readouterr().err
    monkeypatch.setenv("COMFY_DISTRIBUTED_POOL", "http://:secret@h:1")
    assert main(["agent"]) == 1
    error = capsys.readouterr().err
    assert "COMFY_DISTRIBUTED_POOL: must start with redis://" in error and "secret" not in error
    assert main(["agent", "--pool", "redis://h", "--tags", "not ok"]) == 1
    assert "agent tag 'not ok'" in capsys.readouterr().err, "--pool is used, not the environment's"


def test_the_wrappers_comfyui_folder_means_its_default_address(tmp_path):
    """``launch_distributed.sh agent --pool URL`` passes ComfyUI's folder first; an address given after wins."""
    from comfy_distributed.cli.agent import DEFAULT_COMFYUI, comfyui_address

    (tmp_path / "main.py").write_text("")
    assert comfyui_address(str(tmp_path)) == DEFAULT_COMFYUI
    assert comfyui_address(None) == DEFAULT_COMFYUI
    assert comfyui_address("http://127.0.0.1:8190") == "http://127.0.0.1:8190"
