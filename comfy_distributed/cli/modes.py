"""The CLI's modes as one table: the help, the interactive menu and the dispatch are all drawn from it."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Callable

from ..errors import DistributedError
from ..launcher import command_name
from .agent import agent_arguments, cmd_agent
from .instances import cmd_launch, cmd_logs, cmd_restart, cmd_status, cmd_stop, cmd_watch
from .maintenance import cmd_token, cmd_update, cmd_update_nodes, cmd_venv
from .run import DEFAULT_OUTPUT, DEFAULT_TIMEOUT, cmd_run
from .site import TOKEN_ENV, say


def _names(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="*", metavar="NAME", help="master, a worker id or a worker name")


def _name(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="master, a worker id or a worker name")


def _logs(parser: argparse.ArgumentParser) -> None:
    _name(parser)
    parser.add_argument("-f", "--follow", action="store_true", help="then show what it writes next (Ctrl+C ends)")
    parser.add_argument("-n", "--lines", type=int, default=40, metavar="N", help="how many last lines (max 1000)")


def _run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("workflow", metavar="WORKFLOW.json", help="a workflow: the UI's format (Save, a template) or the API format (Export (API))")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, metavar="DIR", help="where to save the images")
    parser.add_argument("--master", metavar="URL", help="the master's address; default: from the config")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help="give up after this long")
    parser.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE", dest="overrides",
                        help="change one input of the workflow for this run, e.g. --set 4.ckpt_name=my.safetensors"
                             " --set 5.width=256 (repeatable; the file is not changed)")


def _token(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--new", action="store_true", help="replace the token the config already has")
    parser.add_argument("--remove", action="store_true", help="remove the token from the config")


@dataclass(frozen=True, slots=True)
class Mode:
    name: str
    help: str
    """Empty for an internal mode: not listed in the help or the menu."""
    handler: Callable[[argparse.Namespace], int]
    arguments: Callable[[argparse.ArgumentParser], None] | None = None
    in_menu: bool = True
    """Offered by the menu (a double-clicked launcher): modes that need no further argument."""


MODES: tuple[Mode, ...] = (
    Mode("all-slow", "start the master and every enabled worker, each ready before the next", cmd_launch),
    Mode("all-fast", "start the master and every enabled worker, 2 s apart, then wait until all answer", cmd_launch),
    Mode("master", "start the master", cmd_launch),
    Mode("workers", "start every enabled worker (local ones here, ssh ones on their machines)", cmd_launch),
    Mode("status", "show every instance; exit code 1 when an enabled one is down", cmd_status),
    Mode("stop", "stop what the launcher started (everything, or the instances named)", cmd_stop, _names),
    Mode("restart", "stop and start one instance (master, a worker id or name)", cmd_restart, _name, in_menu=False),
    Mode("logs", "the last lines of a launched instance's log (master, a worker id or name); -f follows it",
         cmd_logs, _logs, in_menu=False),
    Mode("run", "queue a workflow (UI or API format) on the master, show progress, save the images", cmd_run, _run,
         in_menu=False),
    Mode("agent", "run a pool agent beside one plain ComfyUI: it takes units from the pool's Redis and runs them "
                  "there (--pool URL or $COMFY_DISTRIBUTED_POOL; [--comfyui http://127.0.0.1:8188] [--name NAME] "
                  "[--tags a,b])", cmd_agent, agent_arguments, in_menu=False),
    Mode("token", "create the API token, save it in gpu_config.json (readable by you only) and say how to use it", cmd_token,
         _token),
    Mode("venv", "open a shell with ComfyUI's Python environment active", cmd_venv),
    Mode("update", "update ComfyUI (git pull) and its requirements", cmd_update),
    Mode("update-nodes", "update every custom node repository and its requirements", cmd_update_nodes),
    Mode("watch", "", cmd_watch, in_menu=False),  # started by the launcher: stops the workers when the master exits
)
BY_NAME = {mode.name: mode for mode in MODES}
MENU = [mode for mode in MODES if mode.in_menu and mode.help]


def _common(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument("--comfyui", metavar="PATH", default=default,
                        help="ComfyUI's folder (the one with main.py); default: the current folder")
    parser.add_argument("--config", metavar="FILE", default=default,
                        help="gpu_config.json; default: $COMFY_DISTRIBUTED_CONFIG, else the extension's")
    parser.add_argument("--state-dir", metavar="DIR", default=default,
                        help="pid files and logs; default: $COMFY_DISTRIBUTED_STATE_DIR, else "
                             "<ComfyUI>/user/comfy-distributed")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=command_name(), description="Start and control the ComfyUI instances of gpu_config.json.",
        epilog=f"The token for the master's control endpoints is read from {TOKEN_ENV}.")
    _common(parser, None)
    common = argparse.ArgumentParser(add_help=False)
    _common(common, argparse.SUPPRESS)  # the options may also follow the mode
    modes = parser.add_subparsers(dest="mode", metavar="MODE")
    for mode in MODES:
        if mode.help:
            sub = modes.add_parser(mode.name, parents=[common], help=mode.help, description=mode.help)
        else:
            sub = modes.add_parser(mode.name, parents=[common])
        if mode.arguments is not None:
            mode.arguments(sub)
    return parser


def menu(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """No mode given: a numbered menu at a terminal (the original README's double-click behaviour), else the usage."""
    if not sys.stdin.isatty():
        parser.print_help()
        return 2
    say("ComfyUI-Distributed launcher")
    for number, mode in enumerate(MENU, 1):
        say(f"  {number}) {mode.name:<13} {mode.help}")
    answer = input(f"Choose 1-{len(MENU)} (anything else quits): ").strip()
    if not answer.isdigit() or not 1 <= int(answer) <= len(MENU):
        return 0
    chosen = MENU[int(answer) - 1]
    chosen_args = parser.parse_args([chosen.name])  # the defaults of that mode's own arguments
    for key in ("comfyui", "config", "state_dir"):
        setattr(chosen_args, key, getattr(args, key, None))
    return chosen.handler(chosen_args)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.mode is None:
            return menu(args, parser)
        return BY_NAME[args.mode].handler(args)
    except DistributedError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted: instances started so far keep running ('{command_name()} stop' stops them)",
              file=sys.stderr, flush=True)
        return 130
