"""``run``: queue a workflow on the master, follow it on the websocket, save its images."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable

import aiohttp

from ..errors import RunError
from ..prompt_hook import JOB_ID_EXTRA_DATA
from ..worker_client import summarize_rejection

if TYPE_CHECKING:
    from ..worker_client.transport import WebSocket
from ..launcher import command_name
from .site import TOKEN_ENV, auth_headers, say, setup
from .workflow_file import apply_override, load_workflow
from .progress import Progress, ProgressDisplay, apply_event
from .results import history_images, save_images


DEFAULT_OUTPUT = "comfy-distributed-output"



DEFAULT_TIMEOUT = 3600.0



def cmd_run(args: argparse.Namespace) -> int:
    url = args.master
    if url is None:
        try:
            url = setup(args, quiet=True).master_url
        except RunError:  # not in ComfyUI's folder: the default master
            url = "http://127.0.0.1:8188"
    prompt, extra_data = load_workflow(Path(args.workflow))
    for override in args.overrides:
        apply_override(prompt, override)
    output = Path(args.output)
    saved = asyncio.run(run_workflow(url.rstrip("/"), prompt, extra_data, output, args.timeout, sys.stdout))
    if not saved:
        say("The workflow finished but produced no images (it has no Save Image or Preview Image).")
    else:
        say(f"Saved {len(saved)} image(s) to {output.resolve()} (the master keeps its own: Save Image writes into its "
            "output folder, Preview Image into its temp folder)")
    return 0



async def run_workflow(url: str, prompt: dict[str, Any], extra_data: dict[str, Any], output: Path, timeout: float,
                       stream: IO[str]) -> list[Path]:
    """Queue ``prompt`` on the master, follow it on the websocket with a progress bar, save its images."""
    client_id = uuid.uuid4().hex
    display = ProgressDisplay(stream)
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(headers=auth_headers()) as session:
        try:
            ws = await session.ws_connect(f"{url}/ws", params={"clientId": client_id}, heartbeat=30,
                                          timeout=aiohttp.ClientWSTimeout(ws_close=10))
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            raise RunError(f"the master at {url} does not answer ({exc}): start it with '{command_name()} "
                              "master', or pass --master URL") from None
        async with ws:
            job_id = await _prepare_job(session, url, prompt, display.note)
            extra = {**extra_data, **({JOB_ID_EXTRA_DATA: job_id} if job_id else {})}
            prompt_id = await _queue(session, url, {"prompt": prompt, "client_id": client_id, "extra_data": extra})
            display.note(f"Queued prompt {prompt_id} on {url}")
            progress = Progress(prompt)
            await _follow(ws, session, url, prompt_id, job_id, progress, display, deadline, timeout)
        if progress.cached >= set(prompt):
            display.note("note: the master answered from its cache: this exact workflow ran before, so these are the "
                         "earlier images. Change a seed (--set NODE.seed=N) for new ones")
        history = await get_json(session, f"{url}/history/{prompt_id}")
        refs = history_images(history, prompt_id, f"GET {url}/history/{prompt_id}")
        return await save_images(session, url, refs, output, display.note)



async def _prepare_job(session: aiohttp.ClientSession, url: str, prompt: dict[str, Any],
                       note: Callable[[str], None]) -> str | None:
    """A job id from a master that runs this extension, so that its cluster events can be told apart.

    A refusal (no token, a wrong one, a Host check, a bad config, a Distributor it cannot plan) ends
    the run with the master's message; a master without the extension and a prompt without a
    Collector run as plain ComfyUI would.
    """
    status, text, answer = await _post_json(session, f"{url}/multigpu/prepare_job", {"prompt": prompt}, 30,
                                            f"POST {url}/multigpu/prepare_job failed")
    error = answer.get("error") if isinstance(answer, dict) and isinstance(answer.get("error"), str) else None
    if status == 200 and isinstance(answer, dict):
        return str(answer.get("job_id") or "") or None
    if status in (404, 405) and error is None:
        return None  # a master without this extension: the workflow runs there as it is
    if status == 400 and error is not None and "no Multi-GPU Collector" in error:
        note("note: the workflow has no Multi-GPU Collector, so it is not distributed (it runs on one instance)")
        return None
    if status == 401:
        hint = (f"set {TOKEN_ENV} to the master's token" if TOKEN_ENV not in os.environ
                else f"{TOKEN_ENV} does not hold the master's token")
        raise RunError(f"the master refused the job: {error or text[:300]} ({hint}; "
                          f"'{command_name()} token' creates one)")
    raise RunError(f"the master refused the job (HTTP {status} from POST /multigpu/prepare_job): "
                      f"{error or text[:300]}")



async def _post_json(session: aiohttp.ClientSession, url: str, body: dict[str, Any], timeout: float,
                     failure: str) -> tuple[int, str, Any]:
    """POST ``body``; the status, the text and its JSON (None when it is not JSON). ``failure`` starts the error."""
    try:
        async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            text = await response.text()
            status = response.status
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        raise RunError(f"{failure}: {exc}") from None
    try:
        return status, text, json.loads(text)
    except ValueError:
        return status, text, None



async def _queue(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> str:
    status, text, answer = await _post_json(session, f"{url}/prompt", body, 60, f"queueing on {url} failed")
    if status == 200 and isinstance(answer, dict) and "prompt_id" in answer:
        return str(answer["prompt_id"])
    if status == 400:
        raise RunError(f"the master refused the workflow: {summarize_rejection(answer)}")
    raise RunError(f"the master answered POST /prompt with HTTP {status}: {text[:300]}")



async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=60)) as response:
            response.raise_for_status()
            return await response.json()
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
        raise RunError(f"GET {url} failed: {exc}") from None



async def _follow(ws: WebSocket, session: aiohttp.ClientSession, url: str, prompt_id: str,
                  job_id: str | None, progress: Progress, display: ProgressDisplay, deadline: float,
                  timeout: float) -> None:
    """Read the master's events until our prompt has finished; errors end it with a message."""
    looked_up: set[str] = set()
    while True:
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise asyncio.TimeoutError
            message = await ws.receive(timeout=remaining)
        except asyncio.TimeoutError:
            display.end()
            raise RunError(f"the workflow did not finish within {timeout:.0f} s (--timeout); it may still run "
                              f"on the master (prompt {prompt_id})") from None
        if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            display.end()
            raise RunError(f"the master at {url} closed the connection before the workflow finished: did it "
                              f"crash or restart? Its log says why ({command_name()} status shows where it is)")
        if message.type != aiohttp.WSMsgType.TEXT:
            continue  # previews
        try:
            event = json.loads(message.data)
            kind, data = event["type"], event.get("data") or {}
        except (ValueError, KeyError, TypeError):
            continue
        if kind.startswith("multigpu.") and job_id is None and str(data.get("job_id")) not in looked_up:
            looked_up.add(str(data.get("job_id")))
            job_id = await _job_of(session, url, prompt_id)
        if apply_event(kind, data, prompt_id, job_id, progress, display):
            display.show(progress)
            display.end()
            return
        display.show(progress)



async def _job_of(session: aiohttp.ClientSession, url: str, prompt_id: str) -> str | None:
    try:
        status = await get_json(session, f"{url}/multigpu/status")
        return next((j["job_id"] for j in status.get("jobs", []) if j.get("prompt_id") == prompt_id), None)
    except (RunError, AttributeError, KeyError, TypeError):
        return None
