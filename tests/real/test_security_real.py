"""Tier 3: the master's defences on real ComfyUI (a loopback master without a token, real plain workers).

A DNS-rebinding page is played by a client that sends a foreign ``Host`` and ``Origin``; a junk result
callback by a client that streams 60 MB at ``job_complete``.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.real.cluster import Cluster, decoded, image_workflow, worker_failures
from tests.real.harness import output_images, requires_comfyui

pytestmark = [requires_comfyui, pytest.mark.timeout(900)]

FOREIGN = "attacker.example"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    made = Cluster(tmp_path_factory.mktemp("security"))
    made.use_workers(made.w1, made.w2)
    yield made
    made.stop()


def request(port: int, method: str, path: str, body: bytes | None = None, host: str | None = None,
            headers: dict | None = None, timeout: float = 30) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        sent = {"Content-Type": "application/json", **(headers or {})}
        if host is not None:
            sent.update({"Host": host, "Origin": f"http://{host}"})
        connection.request(method, path, body=body, headers=sent)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        connection.close()


@pytest.mark.parametrize("prefix", ["", "/api"])
def test_rebinding_requests_are_refused(cluster, prefix):
    port = cluster.master.port
    before = cluster.config_path.read_bytes()
    host = f"{FOREIGN}:{port}"
    attempts = [
        ("GET", "/multigpu/config", None),
        ("GET", "/multigpu/status", None),
        ("POST", "/multigpu/config/update_worker",
         json.dumps({"worker_id": 1, "extra_args": "--base-directory /tmp/evil"}).encode()),
        ("POST", "/multigpu/config/update_setting", json.dumps({"key": "api_token", "value": "x" * 20}).encode()),
        ("POST", "/multigpu/workers/launch", b"{}"),
        ("POST", "/multigpu/clear_memory", b"{}"),
    ]
    for method, path, body in attempts:
        status, answer = request(port, method, prefix + path, body, host=host)
        assert status == 403, (path, answer)
        assert "settings.allowed_hosts" in answer["error"]
    assert cluster.config_path.read_bytes() == before
    for name in (f"127.0.0.1:{port}", f"localhost:{port}"):  # the master's own page still works
        status, answer = request(port, "GET", prefix + "/multigpu/config", host=name)
        assert status == 200 and answer["auth"]["public"] is False


def test_the_api_cannot_move_a_workers_folders(cluster):
    before = cluster.config_path.read_bytes()
    for extra_args in ("--base-directory /tmp/evil", "--listen --input-directory=/tmp", "--base-dir /tmp",
                       "--front-end-root /tmp/fe"):
        status, answer = request(cluster.master.port, "POST", "/api/multigpu/config/update_worker",
                                 json.dumps({"worker_id": 1, "extra_args": extra_args}).encode())
        assert status == 400 and "cannot be set through the API" in answer["error"], answer
    assert cluster.config_path.read_bytes() == before
    status, answer = request(cluster.master.port, "POST", "/multigpu/config/update_worker",
                             json.dumps({"worker_id": 1, "extra_args": "--reserve-vram 2"}).encode())
    assert status == 200, answer
    cluster.use_workers(cluster.w1, cluster.w2)


def _memory_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def _stream_junk(port: int, headers: dict[str, str], total: int, outcome: dict) -> None:
    """POST a valid JSON body of about ``total`` bytes of tiny objects; records the status the master answered."""
    prefix, unit, suffix = b'{"outputs": {"3": [', b'{"a":1},', b"{}]}}"
    count = (total - len(prefix) - len(suffix)) // len(unit)
    length = len(prefix) + count * len(unit) + len(suffix)
    lines = ["POST /multigpu/job_complete HTTP/1.1", f"Host: 127.0.0.1:{port}", "Content-Type: application/json",
             f"Content-Length: {length}", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sent = 0
        try:
            sock.sendall("\r\n".join(lines).encode() + prefix)
            block = unit * 65536
            for _ in range(count // 65536):
                sock.sendall(block)
                sent += len(block)
            sock.sendall(unit * (count % 65536) + suffix)
            sent = length
        except OSError:
            pass  # the master answered and closed: it will not read the rest
        outcome["sent"] = sent
        try:
            outcome["status"] = int(sock.recv(65536).split(b" ", 2)[1])
        except (OSError, IndexError, ValueError):
            outcome["status"] = None


@pytest.mark.parametrize("headers", [
    {},  # the old body-only form
    {"X-MultiGPU-Job": "0" * 32, "X-MultiGPU-Worker": "1", "X-MultiGPU-Share-Token": "guess"},
])
def test_a_junk_callback_neither_bloats_nor_stalls_the_master(cluster, headers):
    pid = cluster.master.process.pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current size
    rss_before = _memory_kb(pid, "VmRSS")
    outcome: dict = {}
    sender = threading.Thread(target=_stream_junk, args=(cluster.master.port, headers, 60 * 1024 * 1024, outcome))
    sender.start()
    slowest = 0.0
    while sender.is_alive():
        started = time.monotonic()
        status, _ = request(cluster.master.port, "GET", "/multigpu/status", timeout=10)
        slowest = max(slowest, time.monotonic() - started)
        assert status == 200
    sender.join()
    assert outcome["status"] in (400, 404), outcome
    assert slowest < 1.0, f"/multigpu/status took {slowest:.2f} s during the callback"
    peak = _memory_kb(pid, "VmHWM")
    assert peak - rss_before < 400 * 1024, f"the master grew by {(peak - rss_before) / 1024:.0f} MB"
    # and it still does its job
    entry, _, _ = cluster.run(image_workflow(seed=3, delay=0.0, batch=1))
    assert entry["status"]["status_str"] == "success"
    assert len(entry["outputs"]["4"]["images"]) == 3



class _StandinThread:
    """A stand-in worker served from its own event loop in a thread, beside the real instances."""

    def __init__(self, base: Path) -> None:
        from tests.standin import StandinComfy

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.standin = StandinComfy(base, name="malformed")
        self.call(self.standin.start())

    def call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(60)

    def stop(self) -> None:
        self.call(self.standin.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def _break_inputs(info: dict) -> dict:
    """``/object_info`` with each node's ``input`` of the wrong shape, as a broken worker sent it."""
    return {name: {**node, "input": []} for name, node in info.items()}


@pytest.mark.parametrize("tamper", [_break_inputs, lambda info: "not an object"], ids=["input-list", "string"])
def test_a_malformed_worker_among_healthy_ones_still_gives_the_full_ordered_batch(cluster, tmp_path, tamper):
    malformed = _StandinThread(tmp_path / "malformed")
    try:
        config = json.loads(cluster.config_path.read_text())
        config["workers"].append({"id": 3, "name": "GPU 3 (malformed)", "port": malformed.standin.port,
                                  "enabled": True})
        cluster.config_path.write_text(json.dumps(config))
        malformed.standin.tamper_json["/object_info"] = tamper
        entry, events, _ = cluster.run(image_workflow(seed=500, delay=0.2))
        assert entry["status"]["status_str"] == "success", entry["status"]
        faulty = decoded(output_images(cluster.master.url, entry))
        (message,) = worker_failures(events)
        assert "GPU 3 (malformed)" in message, message
        malformed.standin.tamper_json.clear()
        entry, events, _ = cluster.run(image_workflow(seed=500, delay=0.2))
        assert worker_failures(events) == []
        reference = decoded(output_images(cluster.master.url, entry))
    finally:
        cluster.use_workers(cluster.w1, cluster.w2)
        malformed.stop()
    assert len(faulty) == len(reference) == 8, "4 participants x batch 2"
    for index, (got, want) in enumerate(zip(faulty, reference)):
        assert np.array_equal(got, want), f"image {index} differs from the run with a healthy third worker"


CROSS_SITE_ATTACKS = {
    "sandboxed iframe, text/plain": {"Origin": "null", "Content-Type": "text/plain;charset=UTF-8"},
    "Sec-Fetch-Site cross-site only": {"Sec-Fetch-Site": "cross-site", "Content-Type": "text/plain"},
    "another site, JSON": {"Origin": "http://attacker.example", "Content-Type": "application/json"},
}


@pytest.mark.parametrize("attack", CROSS_SITE_ATTACKS)
@pytest.mark.parametrize("prefix", ["", "/api"])
def test_cross_site_requests_are_refused_whatever_the_host(cluster, prefix, attack):
    """What a page in another tab can send without a preflight, passing ComfyUI 0.3.64's own origin check."""
    port = cluster.master.port
    before = cluster.config_path.read_bytes()
    attempts = [
        ("POST", "/multigpu/config/update_setting", {"key": "queue_mode", "value": "all"}),
        ("POST", "/multigpu/config/add_worker", {"name": "evil", "host": "attacker.example", "port": 80}),
        ("POST", "/multigpu/config/update_worker", {"worker_id": 1, "extra_args": "--enable-cors-header *"}),
        ("POST", "/multigpu/workers/launch", {}),
        ("POST", "/multigpu/events", {"client_id": "attacker", "on": True, "previews": True}),
        ("GET", "/multigpu/status", None),
    ]
    for method, path, body in attempts:
        data = json.dumps(body).encode() if body is not None else None
        status, answer = request(port, method, prefix + path, data, headers=CROSS_SITE_ATTACKS[attack])
        assert status == 403, (path, answer)
        # a foreign host name in Origin is refused by ComfyUI's own origin check first (an empty 403); null and
        # Sec-Fetch-Site pass it and reach ours
        assert answer is None if attack == "another site, JSON" else "cross-site" in answer["error"], answer
    assert cluster.config_path.read_bytes() == before
    status, answer = request(port, "POST", prefix + "/multigpu/config/update_setting",
                             json.dumps({"key": "queue_mode", "value": "all"}).encode(),
                             headers={"Content-Type": "text/plain"})  # no Origin, but not JSON either
    assert status == 415 and "application/json" in answer["error"], answer
    assert cluster.config_path.read_bytes() == before
    own = {"Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"}
    status, answer = request(port, "GET", prefix + "/multigpu/status", headers=own)  # the panel's own page
    assert status == 200, answer


async def _listen(url: str, headers: dict[str, str], seen: list[dict], ready: asyncio.Event,
                  stop: asyncio.Event, client_id: str | None = None) -> None:
    import aiohttp

    query = f"?clientId={client_id}" if client_id else ""
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{url.replace('http', 'ws', 1)}/ws{query}", headers=headers) as websocket:
            ready.set()
            while not stop.is_set():
                try:
                    message = await websocket.receive(timeout=0.2)
                except asyncio.TimeoutError:
                    continue
                if message.type == aiohttp.WSMsgType.TEXT:
                    seen.append(json.loads(message.data))
                elif message.type != aiohttp.WSMsgType.BINARY:
                    return


def test_a_socket_that_did_not_register_receives_no_multigpu_event(cluster):
    """A sandboxed iframe's websocket (``Origin: null``: ComfyUI lets it connect) and a plain socket that did not
    register see the master's own events, but no worker address, error, progress or preview of ours."""
    foreign: list[dict] = []
    plain: list[dict] = []

    async def scenario() -> list[dict]:
        ready_a, ready_b, stop = asyncio.Event(), asyncio.Event(), asyncio.Event()
        url = cluster.master.url
        listeners = [asyncio.create_task(_listen(url, {"Origin": "null"}, foreign, ready_a, stop)),
                     asyncio.create_task(_listen(url, {}, plain, ready_b, stop))]
        await asyncio.wait_for(asyncio.gather(ready_a.wait(), ready_b.wait()), 30)
        try:
            _, events, _ = await asyncio.to_thread(cluster.run, image_workflow(seed=77, delay=0.2))
        finally:
            stop.set()
            await asyncio.gather(*listeners)
        return events

    registered_events = asyncio.run(scenario())
    ours = {event["type"] for event in registered_events if event["type"].startswith("multigpu.")}
    assert {"multigpu.job_progress", "multigpu.job_done"} <= ours, ours  # the registered client got them
    for seen in (foreign, plain):
        assert any(event["type"] == "status" for event in seen), "the socket did not work at all"
        leaked = [event for event in seen if str(event.get("type", "")).startswith("multigpu.")]
        assert leaked == [], leaked[:3]
