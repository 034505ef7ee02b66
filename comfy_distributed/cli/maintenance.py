"""The modes that look after the installation: a shell in ComfyUI's venv, updates, the API token."""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path


from ..config import load_config, set_api_token
from ..errors import LaunchError
from ..launcher import WINDOWS, command_name, find_comfyui_root, find_python
from .site import TOKEN_ENV, find_config, say, setup


def cmd_venv(args: argparse.Namespace) -> int:
    site = setup(args, quiet=True)
    python, origin = find_python(site.root, site.config.master.python, "master")
    env = dict(os.environ)
    bin_dir = Path(python).parent
    folders = [str(bin_dir)] + ([str(bin_dir / "Scripts")] if (bin_dir / "Scripts").is_dir() else [])
    env["PATH"] = os.pathsep.join([*folders, env.get("PATH", "")])
    if (bin_dir.parent / "pyvenv.cfg").is_file():
        env["VIRTUAL_ENV"] = str(bin_dir.parent)
    env.pop("PYTHONHOME", None)
    shell = [os.environ.get("COMSPEC", "cmd.exe"), "/k"] if WINDOWS else [os.environ.get("SHELL") or "/bin/sh"]
    say(f"A shell in {site.root} with {python} ({origin}) first on PATH. Type 'exit' to leave it.")
    return subprocess.call(shell, cwd=site.root, env=env)



def _run_step(command: list[str], cwd: Path, what: str) -> bool:
    say(f"$ {' '.join(command)}")
    try:
        return subprocess.call(command, cwd=cwd) == 0
    except OSError as exc:
        raise LaunchError(f"{what}: cannot run {command[0]}: {exc.strerror or exc}") from None



def _git() -> str:
    git = shutil.which("git")
    if git is None:
        raise LaunchError("git is not installed: install it (https://git-scm.com) to update from the launcher")
    return git



def cmd_update(args: argparse.Namespace) -> int:
    site = setup(args, quiet=True)
    if not (site.root / ".git").exists():
        raise LaunchError(f"{site.root} is not a git checkout, so the launcher cannot update it: ComfyUI Desktop "
                          "updates itself, the portable build has update\\update_comfyui.bat")
    python, _origin = find_python(site.root, site.config.master.python, "master")
    if not _run_step([_git(), "pull", "--ff-only"], site.root, "update"):
        raise LaunchError(f"'git pull' failed in {site.root} (see above): local changes, a diverged branch or a "
                          "checkout of a fixed version must be sorted out by hand ('git status' shows which)")
    requirements = site.root / "requirements.txt"
    if requirements.is_file() and not _run_step([python, "-m", "pip", "install", "-r", str(requirements)],
                                                 site.root, "update"):
        raise LaunchError(f"installing {requirements} with {python} failed (see above)")
    say(f"ComfyUI is up to date. Restart the instances to use it: {command_name()} stop, then all-slow.")
    return 0



def cmd_update_nodes(args: argparse.Namespace) -> int:
    site = setup(args, quiet=True)
    python, _origin = find_python(site.root, site.config.master.python, "master")
    folder = site.root / "custom_nodes"
    nodes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))) \
        if folder.is_dir() else []
    updated, failed, skipped = [], [], []
    git = _git() if nodes else ""
    for node in nodes:
        if not (node / ".git").exists():
            skipped.append(node.name)
            continue
        say(f"\n== {node.name}")
        if not _run_step([git, "pull", "--ff-only"], node, node.name):
            failed.append(f"{node.name} (git pull)")
            continue
        requirements = node / "requirements.txt"
        if requirements.is_file() and not _run_step([python, "-m", "pip", "install", "-r", str(requirements)],
                                                     node, node.name):
            failed.append(f"{node.name} (requirements)")
            continue
        updated.append(node.name)
    say(f"\nUpdated: {', '.join(updated) or 'none'}")
    if skipped:
        say(f"Not git repositories (left alone): {', '.join(skipped)}")
    if failed:
        print(f"error: failed: {', '.join(failed)} (see above)", file=sys.stderr, flush=True)
    return 1 if failed else 0



def cmd_token(args: argparse.Namespace) -> int:
    """Create (or replace, or remove) ``settings.api_token``; the master uses it from its next request."""
    try:
        root: Path | None = find_comfyui_root(args.comfyui)
    except LaunchError:
        if args.comfyui:
            raise
        root = None  # the token needs only the config
    path, _exists = find_config(root, args.config)
    config = load_config(path)
    current = config.settings.api_token
    if args.remove:
        if current is None:
            say(f"{path} holds no API token: nothing to remove.")
            return 0
        set_api_token(path, None)
        say(f"Removed the API token from {path}. A master that listens beyond loopback (--listen) now refuses "
            "every /multigpu request until it has one again.")
        return 0
    if current is not None and not args.new:
        say(f"{path} already holds an API token (settings.api_token); '{command_name()} token --new' replaces it.")
        token = current
    else:
        token = secrets.token_urlsafe(32)
        set_api_token(path, token)
        say(f"{'Replaced' if current else 'Created'} the API token and saved it in {path} (settings.api_token; the "
            "file is now readable by you only).")
    say(f"\nToken: {token}\n\nUse it:\n"
        "  - the Multi-GPU sidebar panel asks for it once: paste it there (the browser keeps it)\n"
        f"  - scripts and the launcher's 'run': export {TOKEN_ENV}='{token}'\n"
        f"  - curl: -H \"Authorization: Bearer ${TOKEN_ENV}\"\n"
        "A running master uses it from its next request: no restart needed.")
    if os.environ.get(TOKEN_ENV) and os.environ[TOKEN_ENV] != token:
        print(f"warning: {TOKEN_ENV} is set in this shell to another value; on a master started with it, that value "
              "wins over the file", file=sys.stderr, flush=True)
    return 0
