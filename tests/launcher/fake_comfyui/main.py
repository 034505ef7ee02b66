"""A stand-in for ComfyUI's ``main.py`` in launcher tests: serves ``tests.standin.StandinComfy`` as a process.

Honours ``--listen`` (first address), ``--port`` and ``--base-directory`` (default: the current
folder) like ComfyUI, and accepts ComfyUI's other arguments without using them, except that an
argument starting with ``--no-such-`` is refused the way argparse refuses unknown ones. It prints
one line ``fake-comfyui: {json}`` with its argv, cwd, interpreter and ``CUDA_VISIBLE_DEVICES``, so a
test can check what the launcher gave it. Extra knobs, passed through ``extra_args``:

    --fake-exit CODE       print --fake-message, then exit with CODE before listening
    --fake-message TEXT    what to print first (default: a RuntimeError line)
    --fake-delay SECONDS   wait this long before listening (a slow start)

Run it with an interpreter that can import the stand-in (the test venv's). A ComfyUI folder for
a test is a folder whose ``main.py`` runs this file (see ``tests/launcher/helpers.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

from tests.standin import StandinComfy  # noqa: E402


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="main.py")
    parser.add_argument("--listen", nargs="?", const="0.0.0.0,::", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8188)
    parser.add_argument("--base-directory")
    parser.add_argument("--fake-exit", type=int)
    parser.add_argument("--fake-message", default="RuntimeError: fake start-up failure")
    parser.add_argument("--fake-delay", type=float, default=0.0)
    args, unknown = parser.parse_known_args(argv)
    refused = [a for a in unknown if a.startswith("--no-such-")]
    if refused:
        parser.error(f"unrecognized arguments: {' '.join(refused)}")
    return args, unknown


async def serve(args: argparse.Namespace) -> None:
    host = args.listen.split(",")[0].strip() or "127.0.0.1"
    base = Path(args.base_directory or os.getcwd())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = StandinComfy(base, name=f"fake-{args.port}", host=host, port=args.port)
    await server.start()
    print(f"To see the GUI go to: http://{host}:{args.port}", flush=True)
    await stop.wait()
    await server.stop()
    print("fake-comfyui: stopped", flush=True)


def main() -> None:
    args, unknown = parse(sys.argv[1:])
    print("fake-comfyui: " + json.dumps({
        "argv": sys.argv[1:], "cwd": os.getcwd(), "python": sys.executable, "pid": os.getpid(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "ignored": unknown,
        "config_env": os.environ.get("COMFY_DISTRIBUTED_CONFIG"), "state_env": os.environ.get("COMFY_DISTRIBUTED_STATE_DIR"),
    }), flush=True)
    if args.fake_exit is not None:
        print(args.fake_message, file=sys.stderr, flush=True)
        raise SystemExit(args.fake_exit)
    if args.fake_delay:
        time.sleep(args.fake_delay)
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
