"""Parity scenarios: drive a ComfyUI-like server over HTTP + websocket only, return transcripts.

A transcript is a JSON-able dict that keeps what a client can rely on (event order, payload key
sets, status codes, error bodies, history shape, file names, decoded pixels) and drops what
legitimately differs between runs (uuids, timestamps, tracebacks' frames, timing of progress
events where a scenario races with them). Running :func:`run_scenarios` against real ComfyUI
(with ``tests/comfy_test_nodes`` mounted as custom node ``comfy_test_nodes``) and against
:class:`tests.standin.StandinComfy` must give equal transcripts; the tier-3 test
``tests/real/test_standin_parity.py`` checks that live, and the component test checks the
stand-in against ``real_transcripts.json``, recorded from real ComfyUI 0.3.64 with::

    python -m tests.standin.parity --record http://127.0.0.1:PORT

Both servers must be fresh (empty history and output folders) and get the scenarios in the
same order: numbering, file counters and the node cache carry over from one scenario to the next.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import re
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp
import numpy as np
from PIL import Image

TRANSCRIPTS_FILE = Path(__file__).with_name("real_transcripts.json")
DEADLINE = 60.0  # seconds any single wait may take


# ---------------------------------------------------------------------------- helpers


def expected_pixels(seed: int, batch_size: int, width: int, height: int) -> list[np.ndarray]:
    """The 8-bit pixels SaveImage writes for DistributedTestImage(seed, batch, w, h)."""
    from tests.comfy_test_nodes import seeded_images

    images = seeded_images(seed, batch_size, width, height)
    return [np.clip(255.0 * img.cpu().numpy(), 0, 255).astype(np.uint8) for img in images]


def image_node(seed: int, batch_size: int = 1, width: int = 12, height: int = 8, delay: float = 0.0) -> dict:
    return {"class_type": "DistributedTestImage",
            "inputs": {"seed": seed, "batch_size": batch_size, "width": width, "height": height, "delay": delay}}


def save(source: str, prefix: str = "parity") -> dict:
    return {"class_type": "SaveImage", "inputs": {"images": [source, 0], "filename_prefix": prefix}}


def describe(event: dict) -> str:
    """One event as a short string: type plus the values that matter for ordering."""
    kind = event.get("type")
    data = event.get("data")
    if not isinstance(data, dict):
        return f"{kind}:<{type(data).__name__}>"
    if kind == "status":
        remaining = data.get("status", {}).get("exec_info", {}).get("queue_remaining")
        return f"status:{remaining}" + ("+sid" if "sid" in data else "")
    if kind == "executing":
        return f"executing:{data.get('node')}" + ("" if "prompt_id" in data else "(no prompt_id)")
    if kind == "executed":
        return f"executed:{data.get('node')}"
    if kind == "progress":
        return f"progress:{data.get('node')}:{data.get('value')!r}/{data.get('max')!r}"
    if kind == "progress_state":
        nodes = data.get("nodes", {})
        inner = ",".join(f"{k}={v.get('state')}({v.get('value')!r}/{v.get('max')!r})" for k, v in nodes.items())
        return f"progress_state:{inner}"
    if kind == "execution_cached":
        return f"execution_cached:{sorted(data.get('nodes', []))}"
    if kind in ("execution_error", "execution_interrupted"):
        return f"{kind}:{data.get('node_id')}"
    return str(kind)


def key_sets(events: list[dict]) -> dict[str, list]:
    """For each event type, the sorted union of payload keys (and of nested node-entry keys)."""
    out: dict[str, set] = {}
    for event in events:
        kind = event.get("type")
        data = event.get("data")
        keys = out.setdefault(kind, set())
        if isinstance(data, dict):
            keys.update(data.keys())
            if kind == "progress_state":
                for entry in data.get("nodes", {}).values():
                    keys.update(f"nodes.*.{k}" for k in entry)
            if kind == "status":
                keys.update(f"status.{k}" for k in data.get("status", {}))
                keys.update(f"status.exec_info.{k}" for k in data.get("status", {}).get("exec_info", {}))
    return {k: sorted(v) for k, v in sorted(out.items())}


def without_progress(sequence: list[str]) -> list[str]:
    return [s for s in sequence if not s.startswith("progress")]


def normalise_filename(name: str) -> str:
    return re.sub(r"^(.*)_temp_[a-z]{5}_", r"\1_temp_XXXXX_", name)


def normalise_outputs(outputs: dict) -> dict:
    return {
        node: {key: [{**img, "filename": normalise_filename(img["filename"])} if isinstance(img, dict) and "filename" in img else img
                     for img in items] for key, items in out.items()}
        for node, out in outputs.items()
    }


def history_shape(entry: dict, prompt_id: str, first_number: Any) -> dict:
    """History entry with the prompt_id/number/client_id/timestamps abstracted."""
    prompt = entry["prompt"]
    status = entry.get("status") or {}
    messages = status.get("messages", [])
    return {
        "keys": list(entry.keys()),
        "prompt_item": {
            "length": len(prompt),
            "number_offset": prompt[0] - first_number if isinstance(prompt[0], (int, float)) else repr(prompt[0]),
            "prompt_id_matches": prompt[1] == prompt_id,
            "prompt": prompt[2],
            "extra_data_keys": sorted(prompt[3].keys()),
            "outputs_to_execute": sorted(prompt[4]),
        },
        "outputs": normalise_outputs(entry.get("outputs", {})),
        "meta": entry.get("meta"),
        "status": {
            "keys": list(status.keys()),
            "status_str": status.get("status_str"),
            "completed": status.get("completed"),
            "messages": [m[0] for m in messages],
            "message_keys": {m[0]: sorted(m[1].keys()) for m in messages},
            "timestamps_are_ints": all(isinstance(m[1].get("timestamp"), int) for m in messages),
        },
    }


class Client:
    """A websocket client that records every JSON message it receives."""

    def __init__(self, driver: "Driver", client_id: str | None = None) -> None:
        self.driver = driver
        self.client_id = client_id or uuid.uuid4().hex
        self.events: list[dict] = []
        self.binary = 0
        self.closed = False
        self._changed = asyncio.Event()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task | None = None

    async def connect(self) -> "Client":
        self._ws = await self.driver.session.ws_connect(f"{self.driver.url}/ws?clientId={self.client_id}")
        self._reader = asyncio.create_task(self._read())
        await self.wait_for(lambda e: e["type"] == "status" and "sid" in e["data"])
        return self

    async def _read(self) -> None:
        try:
            async for msg in self._ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    self.events.append(json.loads(msg.data))
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    self.binary += 1
                self._changed.set()
        finally:
            self.closed = True
            self._changed.set()

    async def wait_for(self, predicate: Callable[[dict], bool], start: int = 0, timeout: float = DEADLINE) -> dict:
        """The first event (from index ``start``) matching ``predicate``; waits for it."""
        deadline = time.monotonic() + timeout
        index = start
        while True:
            while index < len(self.events):
                if predicate(self.events[index]):
                    return self.events[index]
                index += 1
            if self.closed:
                raise AssertionError(f"websocket closed before the awaited event; got {[describe(e) for e in self.events]}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting; got {[describe(e) for e in self.events]}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def wait_done(self, prompt_id: str, start: int = 0) -> dict:
        return await self.wait_for(
            lambda e: e["type"] == "executing" and e["data"].get("node") is None and e["data"].get("prompt_id") == prompt_id,
            start,
        )

    def events_for(self, prompt_id: str) -> list[dict]:
        """Events from the status broadcast before ``prompt_id`` was queued up to its final executing."""
        out = []
        for event in self.events:
            out.append(event)
            data = event.get("data") or {}
            if event["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                break
        return out

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            await self._reader


class Driver:
    """HTTP helpers around one server."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url.rstrip("/")
        self.first_number: Any = None

    async def request(self, method: str, path: str, **kwargs) -> tuple[int, Any]:
        async with self.session.request(method, f"{self.url}{path}", **kwargs) as response:
            body = await response.read()
            try:
                decoded = json.loads(body) if body else None
            except ValueError:
                decoded = body.decode(errors="replace")
            return response.status, decoded

    async def post_prompt(self, prompt: dict, client: Client | None = None, **extra) -> tuple[int, dict]:
        body = {"prompt": prompt, **extra}
        if client is not None:
            body["client_id"] = client.client_id
        status, answer = await self.request("POST", "/prompt", json=body)
        if status == 200 and self.first_number is None:
            self.first_number = answer["number"]
        return status, answer

    async def queue(self, prompt: dict, client: Client | None = None, **extra) -> str:
        status, answer = await self.post_prompt(prompt, client, **extra)
        if status != 200:
            raise AssertionError(f"POST /prompt answered {status}: {answer}")
        return answer["prompt_id"]

    async def history(self, prompt_id: str) -> dict:
        deadline = time.monotonic() + DEADLINE
        while True:
            status, answer = await self.request("GET", f"/history/{prompt_id}")
            if status == 200 and answer and prompt_id in answer:
                return answer[prompt_id]
            if time.monotonic() > deadline:
                raise AssertionError(f"no history for {prompt_id}")
            await asyncio.sleep(0.05)

    async def view(self, image: dict, **params) -> tuple[int, bytes, str]:
        query = {"filename": image["filename"], "subfolder": image.get("subfolder", ""), "type": image.get("type", "output"), **params}
        async with self.session.get(f"{self.url}/view", params=query) as response:
            return response.status, await response.read(), response.headers.get("Content-Type", "")

    async def pixels_match(self, images: list[dict], seed: int, batch: int, width: int, height: int) -> list[bool]:
        expected = expected_pixels(seed, batch, width, height)
        results = []
        for image, want in zip(images, expected):
            status, data, _ = await self.view(image)
            if status != 200:
                results.append(False)
                continue
            with Image.open(io.BytesIO(data)) as img:
                got = np.array(img.convert("RGB"))
            results.append(got.shape == want.shape and bool((got == want).all()))
        return results

    def number(self, answer: dict) -> Any:
        return answer["number"] - self.first_number if self.first_number is not None else None


def run_transcript(client: Client, prompt_id: str, start: int = 0) -> dict:
    events = [e for e in client.events_for(prompt_id)[start:]]
    mine = [e for e in events if (e.get("data") or {}).get("prompt_id", prompt_id) == prompt_id]
    return {"sequence": [describe(e) for e in mine], "keys": key_sets(mine)}


# ---------------------------------------------------------------------------- scenarios

INFO_CLASSES = ["DistributedTestImage", "DistributedTestFail", "SaveImage", "PreviewImage", "LoadImage",
                "PrimitiveInt", "PrimitiveFloat", "PrimitiveString", "PrimitiveBoolean", "NoSuchNode"]


async def scenario_object_info(d: Driver) -> dict:
    single = {}
    for name in INFO_CLASSES:
        status, body = await d.request("GET", f"/object_info/{name}")
        single[name] = {"status": status, "body": body}
    status, everything = await d.request("GET", "/object_info")
    present = {name: everything.get(name) == single[name]["body"].get(name) for name in INFO_CLASSES if name in everything}
    return {"single": single, "all_status": status, "all_has_same_entries": present}


async def scenario_system_stats(d: Driver) -> dict:
    status, body = await d.request("GET", "/system_stats")
    system = body["system"]
    device = body["devices"][0]
    status_f, features = await d.request("GET", "/features")
    return {
        "status": status,
        "keys": list(body.keys()),
        "system_keys": sorted(system.keys()),
        "system_types": {k: type(v).__name__ for k, v in sorted(system.items())},
        "comfyui_version": system["comfyui_version"],
        "device_count": len(body["devices"]),
        "device_keys": sorted(device.keys()),
        "device": {k: device[k] for k in ("name", "type", "index")},
        "device_types": {k: type(v).__name__ for k, v in sorted(device.items())},
        "features": [status_f, features],
        "api_prefix": (await d.request("GET", "/api/system_stats"))[0],
    }


def _sorted_errors(body: Any) -> Any:
    if not isinstance(body, dict):
        return body
    out = json.loads(json.dumps(body))
    error = out.get("error")
    if isinstance(error, dict) and error.get("type") == "prompt_outputs_failed_validation":
        error["details"] = sorted(error["details"].split("\n"))
    for entry in (out.get("node_errors") or {}).values():
        entry["errors"] = sorted(entry["errors"], key=lambda e: (e["type"], e["details"]))
        entry["dependent_outputs"] = sorted(entry["dependent_outputs"])
    if "prompt_id" in out:
        out["prompt_id"] = "<id>"
    if "number" in out:
        out["number"] = "<number>"
    return out


async def scenario_validation(d: Driver) -> dict:
    cases = {
        "missing_class": {"prompt": {"1": {"class_type": "NoSuchNode", "inputs": {}}, "2": save("1")}},
        "missing_class_type": {"prompt": {"1": {"inputs": {}}}},
        "no_outputs": {"prompt": {"1": image_node(1)}},
        "no_prompt": {"client_id": "x"},
        "bad_values": {"prompt": {"1": image_node(1, batch_size=100), "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}},
        "below_min": {"prompt": {"1": image_node(1, width=4), "2": save("1")}},
        "not_a_number": {"prompt": {"1": {"class_type": "DistributedTestImage", "inputs": {**image_node(1)["inputs"], "width": "wide"}}, "2": save("1")}},
        "type_mismatch": {"prompt": {"p": {"class_type": "PrimitiveInt", "inputs": {"value": 3}}, "2": save("p")}},
        "bad_link": {"prompt": {"1": image_node(1), "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0, 1], "filename_prefix": "x"}}}},
        "missing_required": {"prompt": {"1": {"class_type": "DistributedTestImage", "inputs": {"seed": 1}}, "2": save("1")}},
        "missing_image_file": {"prompt": {"1": {"class_type": "LoadImage", "inputs": {"image": "nope.png"}}, "2": save("1")}},
        "one_good_one_bad": {"prompt": {"1": image_node(11), "2": save("1", "parity_partial"), "3": image_node(1, batch_size=0), "4": save("3")}},
    }
    out = {}
    for name, body in cases.items():
        status, answer = await d.request("POST", "/prompt", json=body)
        out[name] = {"status": status, "body": _sorted_errors(answer)}
        if status == 200:
            await d.history(answer["prompt_id"])
    status, answer = await d.request("POST", "/prompt", data=b"not json", headers={"Content-Type": "application/json"})
    out["not_json"] = {"status": status}
    return out


SUCCESS_SEED = 4242


async def scenario_success(d: Driver) -> dict:
    client = await Client(d).connect()
    prompt = {"1": image_node(SUCCESS_SEED, batch_size=2, width=12, height=8, delay=0.3), "2": save("1", "parity_ok")}
    status, answer = await d.post_prompt(prompt, client)
    prompt_id = answer["prompt_id"]
    await client.wait_done(prompt_id)
    entry = await d.history(prompt_id)
    images = entry["outputs"]["2"]["images"]
    view_status, data, content_type = await d.view(images[0])
    with Image.open(io.BytesIO(data)) as img:
        text = dict(getattr(img, "text", {}))
        mode = img.mode
    await client.close()
    return {
        "post": {"status": status, "keys": sorted(answer.keys()), "node_errors": answer["node_errors"],
                 "prompt_id_is_str": isinstance(answer["prompt_id"], str), "number_type": type(answer["number"]).__name__},
        "ws": run_transcript(client, prompt_id),
        "history": history_shape(entry, prompt_id, d.first_number),
        "view": {"status": view_status, "content_type": content_type, "mode": mode, "text_keys": sorted(text),
                 "png_prompt_equals_history_prompt": json.loads(text.get("prompt", "null")) == entry["prompt"][2]},
        "pixels": await d.pixels_match(images, SUCCESS_SEED, 2, 12, 8),
    }


async def scenario_cached_rerun(d: Driver) -> dict:
    client = await Client(d).connect()
    prompt = {"1": image_node(SUCCESS_SEED, batch_size=2, width=12, height=8, delay=0.3), "2": save("1", "parity_ok")}
    prompt_id = await d.queue(prompt, client)
    await client.wait_done(prompt_id)
    entry = await d.history(prompt_id)
    executed = [e["data"]["output"] for e in client.events if e["type"] == "executed"]
    await client.close()
    # change only the SaveImage prefix: the image node stays cached, the saver runs again
    client2 = await Client(d).connect()
    prompt2 = {"1": image_node(SUCCESS_SEED, batch_size=2, width=12, height=8, delay=0.3), "2": save("1", "parity_ok2")}
    prompt_id2 = await d.queue(prompt2, client2)
    await client2.wait_done(prompt_id2)
    entry2 = await d.history(prompt_id2)
    await client2.close()
    return {
        "ws": run_transcript(client, prompt_id),
        "executed_outputs": executed,
        "history": history_shape(entry, prompt_id, d.first_number),
        "partly_cached": {"ws": run_transcript(client2, prompt_id2), "history": history_shape(entry2, prompt_id2, d.first_number)},
        "pixels": await d.pixels_match(entry2["outputs"]["2"]["images"], SUCCESS_SEED, 2, 12, 8),
    }


async def scenario_preview(d: Driver) -> dict:
    client = await Client(d).connect()
    seed = 77
    prompt = {"1": image_node(seed, width=8, height=16), "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    prompt_id = await d.queue(prompt, client)
    await client.wait_done(prompt_id)
    entry = await d.history(prompt_id)
    images = entry["outputs"]["2"]["images"]
    as_output = await d.view({**images[0], "type": "output"})
    await client.close()
    # the same node id keeps its random prefix while the node object is cached
    client2 = await Client(d).connect()
    prompt2 = {"1": image_node(seed + 1, width=8, height=16), "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    prompt_id2 = await d.queue(prompt2, client2)
    await client2.wait_done(prompt_id2)
    entry2 = await d.history(prompt_id2)
    await client2.close()
    first, second = images[0]["filename"], entry2["outputs"]["2"]["images"][0]["filename"]
    return {
        "ws": run_transcript(client, prompt_id),
        "history": history_shape(entry, prompt_id, d.first_number),
        "pixels": await d.pixels_match(images, seed, 1, 8, 16),
        "view_as_output_status": as_output[0],
        "second_run": normalise_outputs(entry2["outputs"]),
        "same_random_prefix": first.rsplit("_", 2)[0] == second.rsplit("_", 2)[0],
    }


async def scenario_primitive_chain(d: Driver) -> dict:
    client = await Client(d).connect()
    prompt = {
        "p": {"class_type": "PrimitiveInt", "inputs": {"value": 31}},
        "1": {"class_type": "DistributedTestImage", "inputs": {"seed": ["p", 0], "batch_size": 1, "width": 8, "height": 8, "delay": 0}},
        "2": save("1", "sub/dist_%width%x%height%"),
    }
    prompt_id = await d.queue(prompt, client)
    await client.wait_done(prompt_id)
    entry = await d.history(prompt_id)
    await client.close()
    return {
        "ws": run_transcript(client, prompt_id),
        "history": history_shape(entry, prompt_id, d.first_number),
        "pixels": await d.pixels_match(entry["outputs"]["2"]["images"], 31, 1, 8, 8),
    }


async def scenario_execution_error(d: Driver) -> dict:
    client = await Client(d).connect()
    prompt = {
        "1": image_node(99),
        "2": {"class_type": "DistributedTestFail", "inputs": {"images": ["1", 0], "message": "boom"}},
        "3": save("2", "never"),
    }
    prompt_id = await d.queue(prompt, client)
    await client.wait_done(prompt_id)
    entry = await d.history(prompt_id)
    error = next(e["data"] for e in client.events if e["type"] == "execution_error")
    await client.close()
    return {
        "ws": run_transcript(client, prompt_id),
        "history": history_shape(entry, prompt_id, d.first_number),
        "error": {
            "keys": sorted(error.keys()),
            "node_id": error["node_id"],
            "node_type": error["node_type"],
            "executed": sorted(error["executed"]),
            "exception_message": error["exception_message"],
            "exception_type": error["exception_type"],
            "traceback_is_list_of_str": isinstance(error["traceback"], list) and all(isinstance(t, str) for t in error["traceback"]),
            "traceback_last_line": error["traceback"][-1].strip().splitlines()[-1] if error["traceback"] else None,
            "current_inputs_keys": sorted(error["current_inputs"].keys()),
            "current_inputs_message": error["current_inputs"].get("message"),
            "current_inputs_images_are_str": all(isinstance(v, str) for v in error["current_inputs"].get("images", [])),
            "current_outputs": sorted(error["current_outputs"]),
            "history_message_equals_ws": [m for m in entry["status"]["messages"] if m[0] == "execution_error"][0][1] == error,
        },
    }


async def _interrupt_case(d: Driver, seed: int, body: dict | None, use_prompt_id: bool) -> dict:
    client = await Client(d).connect()
    prompt = {"1": image_node(seed, delay=3.0), "2": save("1", "interrupted")}
    prompt_id = await d.queue(prompt, client)
    await client.wait_for(lambda e: e["type"] == "progress")
    payload = {"prompt_id": prompt_id} if use_prompt_id else body
    status, _ = await d.request("POST", "/interrupt", json=payload) if payload is not None else await d.request("POST", "/interrupt")
    await client.wait_done(prompt_id)
    entry = await d.history(prompt_id)
    interrupted = [e["data"] for e in client.events if e["type"] == "execution_interrupted"]
    await client.close()
    transcript = run_transcript(client, prompt_id)
    return {
        "interrupt_status": status,
        "sequence": without_progress(transcript["sequence"]),
        "saw_progress": any(s.startswith("progress:") for s in transcript["sequence"]),
        "keys": transcript["keys"],
        "interrupted": [{k: (sorted(v) if isinstance(v, list) else v) for k, v in i.items() if k not in ("prompt_id", "timestamp")} for i in interrupted],
        "history": history_shape(entry, prompt_id, d.first_number),
    }


async def scenario_interrupt_global(d: Driver) -> dict:
    return await _interrupt_case(d, 501, None, False)


async def scenario_interrupt_by_prompt_id(d: Driver) -> dict:
    return await _interrupt_case(d, 502, None, True)


async def scenario_interrupt_other_prompt(d: Driver) -> dict:
    client = await Client(d).connect()
    prompt = {"1": image_node(503, delay=0.6), "2": save("1", "not_interrupted")}
    prompt_id = await d.queue(prompt, client)
    await client.wait_for(lambda e: e["type"] == "progress")
    status, _ = await d.request("POST", "/interrupt", json={"prompt_id": "not-running"})
    await client.wait_done(prompt_id)
    entry = await d.history(prompt_id)
    await client.close()
    return {"interrupt_status": status, "ws": run_transcript(client, prompt_id), "history": history_shape(entry, prompt_id, d.first_number)}


async def scenario_queue(d: Driver) -> dict:
    client = await Client(d).connect()
    observer = await Client(d).connect()
    observer_start = len(observer.events)
    first = await d.queue({"1": image_node(601, delay=5.0), "2": save("1", "queued")}, client)
    await client.wait_for(lambda e: e["type"] == "progress")
    second = await d.queue({"1": image_node(602), "2": save("1", "queued")}, client)
    third = await d.queue({"1": image_node(603), "2": save("1", "queued")}, client, extra_data={"extra_pnginfo": {"workflow": {"n": 1}}})
    status_q, queue = await d.request("GET", "/queue")
    status_p, prompt_info = await d.request("GET", "/prompt")
    queue_before = {
        "keys": sorted(queue.keys()),
        "running": [item[1] == first for item in queue["queue_running"]],
        "pending": [[second, third].index(item[1]) for item in queue["queue_pending"]],
        "item_length": len(queue["queue_running"][0]),
        "running_extra_data_keys": sorted(queue["queue_running"][0][3].keys()),
        "pending_extra_data_keys": sorted(sorted(item[3].keys()) for item in queue["queue_pending"]),
        "outputs_to_execute": queue["queue_running"][0][4],
    }
    status_d, _ = await d.request("POST", "/queue", json={"delete": [second]})
    _, after_delete = await d.request("GET", "/queue")
    pending_after = [[second, third].index(item[1]) for item in after_delete["queue_pending"]]
    await d.request("POST", "/interrupt")
    await client.wait_done(third)
    history_second = (await d.request("GET", f"/history/{second}"))[1]
    entry_third = await d.history(third)
    observed = observer.events[observer_start:]
    await observer.close()
    await client.close()
    return {
        "statuses": [status_q, status_p, status_d],
        "prompt_info": prompt_info,
        "queue_before": queue_before,
        "pending_after_delete": pending_after,
        "client_sequence": without_progress([describe(e) for e in client.events]),
        "observer_sequence": without_progress([describe(e) for e in observed]),
        "deleted_history": history_second,
        "third_history": history_shape(entry_third, third, d.first_number),
    }


async def scenario_reconnect(d: Driver) -> dict:
    client = await Client(d).connect()
    prompt_id = await d.queue({"1": image_node(701, delay=1.5), "2": save("1", "reconnect")}, client)
    await client.wait_for(lambda e: e["type"] == "progress")
    again = Client(d, client.client_id)
    await again.connect()
    await again.wait_for(lambda e: True, start=1)
    first_two = [describe(e) for e in again.events[:2]]
    # closing the first socket makes the server forget the client id, so the new socket gets nothing more
    await client.close()
    entry = await d.history(prompt_id)
    got_success = any(e["type"] == "execution_success" for e in again.events)
    got_done = any(e["type"] == "executing" and e["data"].get("node") is None for e in again.events)
    await again.close()
    return {"reconnect_first_events": first_two, "new_socket_saw_success": got_success,
            "new_socket_saw_final_executing": got_done, "status": entry["status"]["status_str"]}


async def scenario_no_client_id(d: Driver) -> dict:
    observer = await Client(d).connect()
    start = len(observer.events)
    prompt_id = await d.queue({"1": image_node(801, delay=0.2), "2": save("1", "anonymous")})
    entry = await d.history(prompt_id)
    await observer.wait_for(lambda e: e["type"] == "status" and e["data"]["status"]["exec_info"]["queue_remaining"] == 0, start + 1)
    seen = [describe(e) for e in observer.events[start:]]
    await observer.close()
    return {"observer_sequence": seen, "history": history_shape(entry, prompt_id, d.first_number)}


async def scenario_view_rules(d: Driver) -> dict:
    # uses the files written by scenario_success
    name = "parity_ok_00001_.png"
    queries = {
        "plain": {"filename": name},
        "typed": {"filename": name, "type": "output"},
        "empty_subfolder": {"filename": name, "subfolder": "", "type": "output"},
        "no_filename": {},
        "empty_filename": {"filename": ""},
        "absolute": {"filename": "/etc/passwd"},
        "dotdot": {"filename": "../x.png"},
        "bad_type": {"filename": name, "type": "bogus"},
        "escape_subfolder": {"filename": name, "subfolder": "../"},
        "absolute_subfolder": {"filename": name, "subfolder": "/tmp"},
        "missing": {"filename": "nope.png"},
        "wrong_type": {"filename": name, "type": "temp"},
        "annotated_quirk": {"filename": f"{name}[output]", "type": "temp"},
        "annotated_with_space": {"filename": f"{name} [output]", "type": "temp"},
        "path_in_name": {"filename": f"a/{name}"},
        "channel_rgb": {"filename": name, "channel": "rgb"},
        "channel_a": {"filename": name, "channel": "a"},
        "preview_jpeg": {"filename": name, "preview": "jpeg;50"},
    }
    out = {}
    for label, query in queries.items():
        async with d.session.get(f"{d.url}/view", params=query) as response:
            body = await response.read()
            out[label] = {"status": response.status,
                          "content_type": response.headers.get("Content-Type", "") if response.status == 200 else None,
                          "disposition": response.headers.get("Content-Disposition") if response.status == 200 else None,
                          "empty": not body}
    return out


def _png(seed: int, width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(expected_pixels(seed, 1, width, height)[0]).save(buffer, format="PNG")
    return buffer.getvalue()


async def _upload(d: Driver, content: bytes, filename: str, **fields) -> tuple[int, Any]:
    form = aiohttp.FormData()
    form.add_field("image", content, filename=filename, content_type="image/png")
    for key, value in fields.items():
        form.add_field(key, value)
    return await d.request("POST", "/upload/image", data=form)


async def scenario_upload_and_load(d: Driver) -> dict:
    first, other = _png(901, 10, 6), _png(902, 10, 6)
    results = {
        "new": await _upload(d, first, "upload.png"),
        "same_bytes_again": await _upload(d, first, "upload.png"),
        "other_bytes_same_name": await _upload(d, other, "upload.png"),
        "overwrite": await _upload(d, other, "upload.png", overwrite="true"),
        "subfolder": await _upload(d, first, "inner.png", subfolder="sub"),
        "temp_type": await _upload(d, first, "t.png", type="temp"),
        "escape": await _upload(d, first, "x.png", subfolder="../.."),
        "no_image": await d.request("POST", "/upload/image", data=aiohttp.FormData({"type": "input"})),
    }
    _, info = await d.request("GET", "/object_info/LoadImage")
    client = await Client(d).connect()
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "upload (1).png"}}, "2": save("1", "loaded")}
    prompt_id = await d.queue(prompt, client)
    await client.wait_done(prompt_id)
    entry = await d.history(prompt_id)
    await client.close()
    status, data, _ = await d.view(entry["outputs"]["2"]["images"][0])
    with Image.open(io.BytesIO(data)) as img:
        roundtrip = bool((np.array(img.convert("RGB")) == expected_pixels(902, 1, 10, 6)[0]).all())
    return {
        "uploads": results,
        "load_image_choices": info["LoadImage"]["input"]["required"]["image"],
        "ws": run_transcript(client, prompt_id),
        "history": history_shape(entry, prompt_id, d.first_number),
        "roundtrip_pixels": roundtrip,
    }


async def scenario_free(d: Driver) -> dict:
    """POST /free {"free_memory": true} drops the node cache once the running prompt is done.

    The flag is posted while a prompt runs: on an idle real ComfyUI it may be applied only after
    the next prompt (its worker can miss the wake-up), which would make the transcript racy.
    """
    small = {"1": image_node(1001, delay=0.2), "2": save("1", "freed")}
    bigger = {**small, "3": image_node(1002, delay=1.0), "4": save("3", "freed_slow")}
    runs = []
    free = None
    for step, prompt in (("first", small), ("cached", small), ("bigger", bigger), ("after_free", small)):
        client = await Client(d).connect()
        prompt_id = await d.queue(prompt, client)
        if step == "bigger":
            await client.wait_for(lambda e: e["type"] == "progress")
            free = (await d.request("POST", "/free", json={"free_memory": True}))[0]
        await client.wait_done(prompt_id)
        entry = await d.history(prompt_id)
        await client.close()
        transcript = run_transcript(client, prompt_id)
        runs.append({"step": step, "sequence": without_progress(transcript["sequence"]), "outputs": normalise_outputs(entry["outputs"])})
    statuses = {
        "free_memory": free,
        "unload_models": (await d.request("POST", "/free", json={"unload_models": True}))[0],
        "empty_body": (await d.request("POST", "/free"))[0],
    }
    return {"statuses": statuses, "runs": runs}


async def scenario_misc_routes(d: Driver) -> dict:
    out = {}
    for label, (method, path, kwargs) in {
        "get_queue": ("GET", "/queue", {}),
        "get_prompt": ("GET", "/prompt", {}),
        "history_unknown": ("GET", "/history/unknown-id", {}),
        "interrupt_no_body": ("POST", "/interrupt", {}),
        "interrupt_not_running": ("POST", "/interrupt", {"json": {"prompt_id": "zzz"}}),
        "queue_delete_unknown": ("POST", "/queue", {"json": {"delete": ["zzz"]}}),
        "queue_clear": ("POST", "/queue", {"json": {"clear": True}}),
        "queue_no_body": ("POST", "/queue", {}),
        "api_prefix_queue": ("GET", "/api/queue", {}),
    }.items():
        status, body = await d.request(method, path, **kwargs)
        out[label] = {"status": status, "body": body if status == 200 else None}
    status, history = await d.request("GET", "/history", params={"max_items": "2"})
    out["history_max_items"] = {"status": status, "count": len(history)}
    return out


async def scenario_priority_and_ids(d: Driver) -> dict:
    """Client-chosen prompt_id, "front" and explicit "number" decide the queue order."""
    client = await Client(d).connect()
    busy = await d.queue({"1": image_node(1100, delay=2.0), "2": save("1", "busy")}, client)
    await client.wait_for(lambda e: e["type"] == "progress")
    _, a = await d.post_prompt({"1": image_node(1101), "2": save("1", "prio")}, client, prompt_id="custom-id-a")
    _, b = await d.post_prompt({"1": image_node(1102), "2": save("1", "prio")}, client, front=True)
    _, c = await d.post_prompt({"1": image_node(1103), "2": save("1", "prio")}, client, number=5.5)
    labels = {a["prompt_id"]: "a", b["prompt_id"]: "b", c["prompt_id"]: "c", busy: "busy"}
    _, queue = await d.request("GET", "/queue")
    pending = sorted((item[0], labels[item[1]]) for item in queue["queue_pending"])
    await d.request("POST", "/interrupt")
    for prompt_id in (a["prompt_id"], b["prompt_id"], c["prompt_id"]):
        await d.history(prompt_id)
    await client.wait_done(a["prompt_id"])
    order = [labels[e["data"]["prompt_id"]] for e in client.events if e["type"] == "execution_start"]
    await client.close()
    return {
        "a_prompt_id": a["prompt_id"],
        "numbers": {"b_is_minus_a_plus_1": b["number"] == -(a["number"] + 1), "c": c["number"],
                    "types": [type(x["number"]).__name__ for x in (a, b, c)]},
        "pending_order_by_number": [label for _, label in pending],
        "execution_order": order,
    }


async def scenario_ws_feature_flags(d: Driver) -> dict:
    client = Client(d)
    await client.connect()
    await client._ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": False}})
    reply = await client.wait_for(lambda e: e["type"] == "feature_flags")
    no_id = await d.session.ws_connect(f"{d.url}/ws")
    first = await no_id.receive_json(timeout=DEADLINE)
    await no_id.close()
    await client.close()
    return {
        "reply": reply["data"],
        "sid_generated": {"type": first["type"], "sid_is_hex32": bool(re.fullmatch(r"[0-9a-f]{32}", first["data"].get("sid", "")))},
    }


SCENARIOS: list[tuple[str, Callable[[Driver], Awaitable[dict]]]] = [
    ("object_info", scenario_object_info),
    ("system_stats", scenario_system_stats),
    ("validation", scenario_validation),
    ("success", scenario_success),
    ("cached_rerun", scenario_cached_rerun),
    ("preview", scenario_preview),
    ("primitive_chain", scenario_primitive_chain),
    ("execution_error", scenario_execution_error),
    ("interrupt_global", scenario_interrupt_global),
    ("interrupt_by_prompt_id", scenario_interrupt_by_prompt_id),
    ("interrupt_other_prompt", scenario_interrupt_other_prompt),
    ("queue", scenario_queue),
    ("reconnect", scenario_reconnect),
    ("no_client_id", scenario_no_client_id),
    ("view_rules", scenario_view_rules),
    ("upload_and_load", scenario_upload_and_load),
    ("free", scenario_free),
    ("misc_routes", scenario_misc_routes),
    ("priority_and_ids", scenario_priority_and_ids),
    ("ws_feature_flags", scenario_ws_feature_flags),
]

async def run_scenarios(url: str, names: list[str] | None = None) -> dict[str, Any]:
    """Run the scenarios (all, in order, or the named ones, still in order) against ``url``."""
    transcripts: dict[str, Any] = {}
    timeout = aiohttp.ClientTimeout(total=DEADLINE)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        driver = Driver(session, url)
        for name, scenario in SCENARIOS:
            if names is None or name in names:
                transcripts[name] = await scenario(driver)
    return json.loads(json.dumps(transcripts))  # tuples -> lists, int keys -> str, like a round trip


def differences(expected: Any, actual: Any, path: str = "") -> list[str]:
    """Human-readable list of where two transcripts differ."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        out = []
        for key in list(expected) + [k for k in actual if k not in expected]:
            if key not in actual:
                out.append(f"{path}/{key}: missing (expected {json.dumps(expected[key])[:300]})")
            elif key not in expected:
                out.append(f"{path}/{key}: unexpected {json.dumps(actual[key])[:300]}")
            else:
                out.extend(differences(expected[key], actual[key], f"{path}/{key}"))
        return out
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        out = []
        for index, (a, b) in enumerate(zip(expected, actual)):
            out.extend(differences(a, b, f"{path}[{index}]"))
        return out
    if expected != actual or type(expected) is not type(actual):
        return [f"{path}: expected {json.dumps(expected)[:400]}, got {json.dumps(actual)[:400]}"]
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("url", help="base URL of a fresh ComfyUI (or stand-in) server")
    parser.add_argument("--record", action="store_true", help=f"write the transcripts to {TRANSCRIPTS_FILE.name}")
    parser.add_argument("--only", nargs="*", help="scenario names")
    args = parser.parse_args(argv)
    transcripts = asyncio.run(run_scenarios(args.url, args.only))
    text = json.dumps(transcripts, indent=1, sort_keys=False) + "\n"
    if args.record:
        TRANSCRIPTS_FILE.write_text(text)
        print(f"wrote {TRANSCRIPTS_FILE}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
