"""``run``: queue a workflow on the master, follow it on the websocket, save its images.

The master is reached through the package's one ComfyUI client (:class:`ComfyClient`); its
errors become :class:`RunError` here, each with what to do next.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
import uuid
from pathlib import Path
from typing import IO, Any, Callable

from ..errors import RunError, WorkerError, WorkerTimeout
from ..launcher import command_name
from ..comfy.prompt_hook import JOB_ID_EXTRA_DATA
from ..worker_client import ComfyClient, EventStream, Reply, summarize_rejection
from .master_events import registered
from .progress import Progress, ProgressDisplay, apply_event
from .results import history_images, save_images
from .site import TOKEN_ENV, auth_headers, say, setup
from .workflow_file import apply_override, master_prompt, read_workflow


DEFAULT_OUTPUT = "comfy-distributed-output"



DEFAULT_TIMEOUT = 3600.0



MASTER = "the master"
"""How the master is named in the client's errors (they become RunError here)."""



def cmd_run(args: argparse.Namespace) -> int:
    url = args.master
    if url is None:
        try:
            url = setup(args, quiet=True).master_url
        except RunError:  # not in ComfyUI's folder: the default master
            url = "http://127.0.0.1:8188"
    workflow = read_workflow(Path(args.workflow))
    prompt, extra_data = asyncio.run(master_prompt(workflow, url.rstrip("/"), auth_headers(), say))
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
    async with ComfyClient(url, name=MASTER, headers=auth_headers()) as client, contextlib.AsyncExitStack() as stack:
        try:
            events = await stack.enter_async_context(client.listen(client_id, deadline))
        except WorkerError as exc:
            raise RunError(f"the master at {url} does not answer ({exc.message}): start it with '{command_name()} "
                              "master', or pass --master URL") from None
        job_id = await _prepare_job(client, prompt, display.note)
        # the master sends its cluster events only to registered clients (a master without this extension: none)
        refused = await stack.enter_async_context(registered(client, client_id))
        if refused is not None and job_id is not None:
            display.note(f"note: the workers' progress is not shown ({refused})")
        extra = {**extra_data, **({JOB_ID_EXTRA_DATA: job_id} if job_id else {})}
        prompt_id = await _queue(client, {"prompt": prompt, "client_id": client_id, "extra_data": extra})
        display.note(f"Queued prompt {prompt_id} on {url}")
        progress = Progress(prompt)
        await _follow(events, client, prompt_id, job_id, progress, display, deadline, timeout)
        await stack.aclose()  # the websocket: nothing more is read from it
        if progress.cached >= set(prompt):
            display.note("note: the master answered from its cache: this exact workflow ran before, so these are the "
                         "earlier images. Change a seed (--set NODE.seed=N) for new ones")
        history = await get_json(client, f"/history/{prompt_id}")
        refs = history_images(history, prompt_id, f"GET {url}/history/{prompt_id}")
        return await save_images(client, refs, output, display.note)



async def _prepare_job(client: ComfyClient, prompt: dict[str, Any], note: Callable[[str], None]) -> str | None:
    """A job id from a master that runs this extension, so that its cluster events can be told apart.

    A refusal (no token, a wrong one, a Host check, a bad config, a Distributor it cannot plan) ends
    the run with the master's message; a master without the extension and a prompt without a
    Collector run as plain ComfyUI would.
    """
    reply = await _post(client, "/multigpu/prepare_job", {"prompt": prompt}, 30,
                        f"POST {client.base_url}/multigpu/prepare_job failed")
    status, text, answer = reply.status, reply.text(), reply.json()
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



async def _post(client: ComfyClient, path: str, body: dict[str, Any], timeout: float, failure: str) -> Reply:
    """The master's answer to a POST, whatever its status; ``failure`` starts the error when there is none."""
    try:
        return await client.reply("POST", path, json_body=body, timeout=timeout)
    except WorkerError as exc:
        raise RunError(f"{failure}: {exc.message}") from None



async def _queue(client: ComfyClient, body: dict[str, Any]) -> str:
    """The master's id for the prompt in ``body``, queued with ComfyUI's own ``POST /prompt``."""
    reply = await _post(client, "/prompt", body, 60, f"queueing on {client.base_url} failed")
    answer = reply.json()
    if reply.status == 200 and isinstance(answer, dict) and "prompt_id" in answer:
        return str(answer["prompt_id"])
    if reply.status == 400:
        raise RunError(f"the master refused the workflow: {summarize_rejection(answer)}")
    raise RunError(f"the master answered POST /prompt with HTTP {reply.status}: {reply.text()[:300]}")



async def get_json(client: ComfyClient, path: str) -> Any:
    try:
        return await client.get_json(path)
    except WorkerError as exc:
        raise RunError(f"GET {client.base_url}{path} failed: {exc.message}") from None



async def _follow(events: EventStream, client: ComfyClient, prompt_id: str, job_id: str | None,
                  progress: Progress, display: ProgressDisplay, deadline: float, timeout: float) -> None:
    """Read the master's events until our prompt has finished; errors end it with a message."""
    looked_up: set[str] = set()
    while True:
        try:
            event = await events.next(deadline)
        except WorkerTimeout:
            display.end()
            raise RunError(f"the workflow did not finish within {timeout:.0f} s (--timeout); it may still run "
                              f"on the master (prompt {prompt_id})") from None
        except WorkerError:
            display.end()
            raise RunError(f"the master at {client.base_url} closed the connection before the workflow finished: "
                           f"did it crash or restart? Its log says why ({command_name()} status shows where it is)"
                           ) from None
        kind, data = event.get("type"), event.get("data") or {}
        if not isinstance(kind, str) or not isinstance(data, dict):
            continue
        if kind.startswith("multigpu.") and job_id is None and str(data.get("job_id")) not in looked_up:
            looked_up.add(str(data.get("job_id")))
            job_id = await _job_of(client, prompt_id)
        if apply_event(kind, data, prompt_id, job_id, progress, display):
            display.show(progress)
            display.end()
            return
        display.show(progress)



async def _job_of(client: ComfyClient, prompt_id: str) -> str | None:
    try:
        status = await get_json(client, "/multigpu/status")
        return next((j["job_id"] for j in status.get("jobs", []) if j.get("prompt_id") == prompt_id), None)
    except (RunError, AttributeError, KeyError, TypeError):
        return None
