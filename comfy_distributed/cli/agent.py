"""``agent``: run a pool agent beside one plain ComfyUI, until Ctrl+C (or SIGTERM).

The first signal lets the unit it runs finish, then it leaves; a second one gives that unit back to the pool at
once (the master runs it elsewhere). A ComfyUI that does not answer yet is waited for, not an error: the agent says
so and takes units once it answers. A bad pool URL, name or tag is an error before anything starts. The pool's URL
comes from ``--pool`` or, so that a password in it stays out of the process list (the launcher starts agents so), from
``COMFY_DISTRIBUTED_POOL``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from pathlib import Path

from ..errors import PoolError
from ..pool.settings import POOL_ENV
from .site import say

DEFAULT_COMFYUI = "http://127.0.0.1:8188"


def agent_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pool", metavar="URL",
                        help=f"the pool's Redis: redis://[user:password@]host:port/db (rediss:// for TLS); default: "
                             f"${POOL_ENV}, which keeps a password out of the process list")
    parser.add_argument("--pool-name", default="default", metavar="NAME", help="the pool on that Redis")
    parser.add_argument("--name", metavar="NAME", help="how masters show this agent (default: agent-<id>)")
    parser.add_argument("--tags", default="", metavar="a,b",
                        help="what this GPU offers, e.g. gpu48,video: a job that requires tags runs only on agents "
                             "with all of them")


def cmd_agent(args: argparse.Namespace) -> int:
    from ..pool.agent import Agent
    from ..pool.connection import redis_asyncio
    from ..pool.settings import pool_label, parse_pool

    url, source = pool_url(args.pool)
    pool = parse_pool(url, args.pool_name, source)
    comfyui = comfyui_address(getattr(args, "comfyui", None))
    redis_asyncio()  # redis-py missing: said now, not from inside the loop
    tags = [tag.strip() for tag in args.tags.split(",") if tag.strip()]
    agent = Agent(pool.url, comfyui, pool=pool.name, name=args.name, tags=tags, say=say)
    say(f"Starting agent {agent.name} for {pool_label(pool)}; Ctrl+C finishes the running unit and stops, twice "
        "gives it back")
    asyncio.run(_run(agent))
    return 0


def pool_url(option: str | None) -> tuple[str, str]:
    """The pool's URL and where it came from: ``--pool``, else ``$COMFY_DISTRIBUTED_POOL``; PoolError: neither."""
    if option:
        return option, "--pool"
    url = os.environ.get(POOL_ENV, "").strip()
    if not url:
        raise PoolError(f"give the pool's Redis with --pool URL or in {POOL_ENV} (e.g. redis://127.0.0.1:6379/0)")
    return url, POOL_ENV


def comfyui_address(value: str | None) -> str:
    """The address of the agent's ComfyUI from the common ``--comfyui``: an address as given; none, or ComfyUI's
    own folder (what the ``launch_distributed`` wrappers pass first), its default address on this machine."""
    if not value or (Path(value) / "main.py").is_file():
        return DEFAULT_COMFYUI
    if not value.startswith(("http://", "https://")):
        raise PoolError(f"--comfyui {value[:200]!r}: for an agent, give its ComfyUI's address, e.g. "
                        f"{DEFAULT_COMFYUI}")
    return value


async def _run(agent: object) -> None:
    from ..pool.agent import Agent

    assert isinstance(agent, Agent)
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        agent.stop(give_back=signals > 1)
        say("giving the running unit back and stopping" if signals > 1 else
            "stopping after the running unit (again: give it back now)")

    for number in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(number, on_signal)
        except (NotImplementedError, RuntimeError):  # Windows: Ctrl+C raises KeyboardInterrupt instead
            pass
    try:
        await agent.run()
    except PoolError as exc:
        raise PoolError(f"agent {agent.name}: {exc}") from None
