"""StandinComfy: an aiohttp server that behaves like ComfyUI 0.3.64 on its native API.

It serves the routes the ComfyUI-Distributed master uses (``/prompt``, ``/ws``, ``/history``,
``/view``, ``/queue``, ``/interrupt``, ``/free``, ``/system_stats``, ``/object_info``,
``/upload/image``, plus ``/features`` and the ``/api``-prefixed twins of every route), runs
prompts one at a time from a priority queue like ComfyUI's prompt worker, executes the real node
classes of ``tests/comfy_test_nodes`` and its own SaveImage/PreviewImage/LoadImage/Primitive*
nodes, and has fault-injection knobs for component tests. See ``tests/standin/README.md``.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import copy
import hashlib
import heapq
import json
import logging
import mimetypes
import os
import shutil
import struct
import sys
import uuid
from io import BytesIO
from pathlib import Path
from typing import Any, Callable

import aiohttp
from aiohttp import web
from PIL import Image

from .executor import Caches, PromptExecution
from .nodes import Dirs, make_core_nodes, node_info, split_annotation, test_pack_nodes
from .validation import validate_prompt

COMFYUI_VERSION = "0.3.64"
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")
MAX_UPLOAD_SIZE = 100 * 1024 * 1024
FAKE_RAM_TOTAL = 16 * 1024**3
FAKE_RAM_FREE = 12 * 1024**3
AIOHTTP_500_TEXT = "500 Internal Server Error\n\nServer got itself in trouble"
log = logging.getLogger(__name__)


class StandinComfy:
    """A ComfyUI stand-in on 127.0.0.1 (port 0 picks a free port; kept across stop/start)."""

    def __init__(self, base_dir: os.PathLike | str, name: str = "standin", host: str = "127.0.0.1", port: int = 0,
                 include_test_nodes: bool = True, websocket_image_save: bool = False) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.base_dir = Path(base_dir).absolute()
        self.dirs = Dirs(
            output=str(self.base_dir / "output"), temp=str(self.base_dir / "temp"), input=str(self.base_dir / "input"),
        )
        classes, display, modules = make_core_nodes(self.dirs)
        if not websocket_image_save:  # ComfyUI loads it from its custom_nodes folder: not with --base-directory
            for table in (classes, display, modules):
                del table["SaveImageWebsocket"]
        if include_test_nodes:
            pack_classes, pack_display, pack_modules = test_pack_nodes()
            classes.update(pack_classes)
            display.update(pack_display)
            modules.update(pack_modules)
        self.node_classes: dict[str, type] = classes
        self.display_names: dict[str, str] = display
        self.python_modules: dict[str, str] = modules

        self.answers_feature_flags = True
        """False: a ComfyUI from before feature flags (the client's announcement is ignored, nothing answered)."""
        # records for tests
        self.received: list[dict] = []
        self.free_calls: list[dict] = []
        self.interrupt_calls: list[dict] = []
        self.request_counts: collections.Counter[str] = collections.Counter()
        self.http_client_ports: set[int] = set()
        """The client ports requests came from (one per TCP connection the master opened; a /ws upgrade
        counts the connection it was sent on)."""
        """Requests per route (template, without /api), counted before any fault is injected."""
        self.huge_sent: dict[str, int] = {}
        self.huge_aborted: set[str] = set()

        # fault injection, all off by default
        self.fail_routes: dict[str, int] = {}
        self.execution_error: str | None = None
        self.gate: asyncio.Event | None = None
        self.view_delay: float = 0.0
        self.finish_delay: float = 0.0
        """Seconds between a prompt's last node and its history entry and final ``executing`` event, as
        ComfyUI's garbage collection after a prompt can hold a real worker."""
        self.drop_ws_after_start: bool = False
        self.execution_delay_scale: float = 1.0
        self.fail_text: str | None = None
        self.tamper_json: dict[str, Callable[[Any], Any]] = {}
        self.redirect_routes: dict[str, str] = {}
        self.hang_ws: bool = False
        self.huge_routes: dict[str, int] = {}
        self.huge_declared: bool = False
        self.preview_method: str = "none"
        """As ComfyUI's ``--preview-method``: other than ``"none"``, each step of a node's simulated work also
        sends a JPEG preview frame, as a sampler does on such an instance (see :meth:`_preview`)."""

        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task] = []
        self._closing: set[asyncio.Task] = set()
        self._handlers: set[asyncio.Task] = set()
        """Requests being answered: ended by stop(), even those whose client left (aiohttp would let them run)."""
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._reset_state()

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def __aenter__(self) -> "StandinComfy":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    def _reset_state(self) -> None:
        """Everything a ComfyUI process keeps in memory (lost when the process dies)."""
        self._queue: list[tuple] = []
        self._running: dict[int, tuple] = {}
        self._history: dict[str, dict] = {}
        self._flags: dict[str, Any] = {}
        self._task_counter = 0
        self._number = 0
        self._caches = Caches()
        self._client_id: str | None = None
        self._last_node_id: str | None = None
        self._interrupted = False
        self._sockets: dict[str, web.WebSocketResponse] = {}
        self._socket_flags: dict[str, dict] = {}
        self._wakeup: asyncio.Event | None = None
        self._outbox: asyncio.Queue | None = None
        self._fresh = True

    async def start(self) -> None:
        """Start serving (again, on the same port after a stop)."""
        if self._runner is not None:
            return
        for path in (self.dirs.output, self.dirs.input):
            os.makedirs(path, exist_ok=True)
        if self._fresh:  # a new "process": ComfyUI empties its temp directory at start-up
            shutil.rmtree(self.dirs.temp, ignore_errors=True)
            self._fresh = False
        os.makedirs(self.dirs.temp, exist_ok=True)
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
            self._outbox = asyncio.Queue()
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"standin-{self.name}")
        app = web.Application(client_max_size=MAX_UPLOAD_SIZE, middlewares=[self._fault_middleware])
        app.add_routes(self._routes())
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        await site.start()
        if self.port == 0:
            self.port = runner.addresses[0][1]
        self._runner = runner
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._prompt_worker(), name=f"standin-{self.name}-worker"),
                asyncio.create_task(self._publish_loop(), name=f"standin-{self.name}-publish"),
            ]

    async def stop(self, keep_state: bool = False) -> None:
        """Stop listening: connections are refused until :meth:`start`.

        By default this is the death of the ComfyUI process: websockets are closed, the running
        prompt is abandoned, queue, history and caches are lost (files on disk stay). With
        ``keep_state=True`` only the network goes away: execution carries on and queue/history are
        kept, events for the disconnected clients are dropped. Either way the requests still being
        answered are dropped, so that nothing of the server runs on after it (a leak check can count on it).
        """
        sockets = list(self._sockets.values())
        self._sockets.clear()
        self._socket_flags.clear()
        for ws in sockets:
            try:
                await ws.close()
            except Exception:
                pass
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        closing, self._closing = [*self._closing, *self._handlers], set()
        closing = [task for task in closing if task is not asyncio.current_task()]
        for task in closing:
            task.cancel()
        await asyncio.gather(*closing, return_exceptions=True)
        if keep_state:
            return
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except BaseException:
                pass
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        self._reset_state()

    # ------------------------------------------------------------------ messaging

    def _send(self, event: Any, data: Any, sid: str | None = None) -> None:
        """Queue a websocket message (ComfyUI's send_sync); sid None broadcasts."""
        if self._outbox is not None:
            self._outbox.put_nowait((event, data, sid))

    def _queue_updated(self) -> None:
        self._send("status", {"status": self._queue_info()})

    def _supports_preview_metadata(self) -> bool:
        """Whether the running prompt's client announced it (ComfyUI's feature_flags.supports_feature)."""
        flags = self._socket_flags.get(self._client_id or "", {}).get("feature_flags", {})
        return flags.get("supports_preview_metadata", False) is True

    def _preview(self, prompt_id: str, node_id: str, step: int, metadata: bool, image: bytes | None = None) -> None:
        """A preview frame of ``step`` to the running prompt's client, framed as ComfyUI 0.3.64 frames it: type 4
        (``send_image_with_metadata``: length, JSON metadata, image) for a client that announced
        ``supports_preview_metadata``, else type 1 (``send_image``: image type 1 for JPEG, 2 for PNG, image).
        ``image``: a node's PNG (SaveImageWebsocket); else a small JPEG as a sampler's preview."""
        png = image is not None
        if image is None:
            buffer = BytesIO()
            Image.new("RGB", (16, 16), ((40 * step) % 256, 128, 255 - (40 * step) % 256)).save(
                buffer, format="JPEG", quality=95)
            image = buffer.getvalue()
        if metadata:
            info = json.dumps({"node_id": node_id, "prompt_id": prompt_id, "display_node_id": node_id,
                               "parent_node_id": None, "real_node_id": node_id,
                               "image_type": "image/png" if png else "image/jpeg"}).encode()
            self._send(4, struct.pack(">I", len(info)) + info + image, self._client_id)
        else:
            self._send(1, struct.pack(">I", 2 if png else 1) + image, self._client_id)

    async def _send_now(self, event: Any, data: Any, sid: str | None) -> None:
        message = {"type": event, "data": data}
        targets = list(self._sockets.items()) if sid is None else [(sid, self._sockets.get(sid))]
        for target_sid, ws in targets:
            if ws is None:
                continue
            try:
                if isinstance(data, bytes):  # server.py encode_bytes: the event type, then the data
                    await ws.send_bytes(struct.pack(">I", event) + data)
                else:
                    await ws.send_json(message)
            except (aiohttp.ClientError, ConnectionError, RuntimeError):
                pass
            if event == "execution_start" and self.drop_ws_after_start:
                if self._sockets.get(target_sid) is ws:
                    del self._sockets[target_sid]
                # closing waits for the client's answer: do not hold up the other messages
                task = asyncio.create_task(ws.close())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)

    async def _publish_loop(self) -> None:
        while True:
            event, data, sid = await self._outbox.get()
            await self._send_now(event, data, sid)

    def finished_prompts(self) -> list[str]:
        """The prompts whose history entry is written (a test's view, not a route)."""
        return list(self._history)

    def _queue_info(self) -> dict:
        return {"exec_info": {"queue_remaining": len(self._queue) + len(self._running)}}

    # ------------------------------------------------------------------ prompt worker

    async def _prompt_worker(self) -> None:
        while True:
            while not self._queue:
                await self._apply_flags()
                if self._queue:
                    break
                self._wakeup.clear()
                await self._wakeup.wait()
            item = heapq.heappop(self._queue)
            item_id = self._task_counter
            self._task_counter += 1
            self._running[item_id] = copy.deepcopy(item)
            self._queue_updated()
            number, prompt_id, prompt, extra_data, outputs = item
            execution = PromptExecution(self, prompt, prompt_id, extra_data, outputs)
            result = await execution.run()
            if self.finish_delay:
                await asyncio.sleep(self.finish_delay)
            self._task_done(item_id, result, {
                "status_str": "success" if execution.success else "error",
                "completed": execution.success,
                "messages": execution.status_messages,
            })
            if self._client_id is not None:
                self._send("executing", {"node": None, "prompt_id": prompt_id}, self._client_id)
            await self._apply_flags()

    async def _apply_flags(self) -> None:
        flags, self._flags = self._flags, {}
        if flags.get("free_memory", False):
            self._caches = Caches()

    def _task_done(self, item_id: int, result: dict, status: dict) -> None:
        prompt = self._running.pop(item_id)
        for key in SENSITIVE_EXTRA_DATA_KEYS:
            prompt[3].pop(key, None)
        entry = {"prompt": prompt, "outputs": {}, "status": copy.deepcopy(status)}
        entry.update(result)
        self._history[prompt[1]] = entry
        self._queue_updated()

    # ------------------------------------------------------------------ HTTP

    @staticmethod
    def _route_of(request: web.Request) -> str:
        """The route's template without the /api prefix ("/history/{prompt_id}"), else the path."""
        resource = getattr(request.match_info.route, "resource", None)
        route = resource.canonical if resource is not None else request.path
        return route[4:] if route.startswith("/api/") else route

    def _fault(self, table: dict[str, Any], request: web.Request) -> Any:
        """The entry of a fault table for this request: by path, /api twin, or route template."""
        path = request.path
        for key in (path, path[4:] if path.startswith("/api/") else None, self._route_of(request)):
            if key is not None and key in table:
                return table[key]
        return None

    @web.middleware
    async def _fault_middleware(self, request: web.Request, handler):
        task = asyncio.current_task()
        assert task is not None  # aiohttp answers every request inside a task
        self._handlers.add(task)
        try:
            return await self._answer(request, handler)
        finally:
            self._handlers.discard(task)

    async def _answer(self, request: web.Request, handler):
        self.request_counts[self._route_of(request)] += 1
        peer = request.transport.get_extra_info("peername") if request.transport is not None else None
        if peer:
            self.http_client_ports.add(peer[1])
        status = self._fault(self.fail_routes, request)
        if status is not None:
            return web.Response(status=status, text=self.fail_text or f"{status}: injected by the stand-in")
        location = self._fault(self.redirect_routes, request)
        if location is not None:
            raise web.HTTPFound(location)
        size = self._fault(self.huge_routes, request)
        if size is not None:
            return await self._huge_answer(request, size)
        if self.hang_ws and self._route_of(request) == "/ws":
            await asyncio.Event().wait()  # the connection is accepted, the upgrade never answered
        try:
            response = await handler(request)
        except json.JSONDecodeError:
            # ComfyUI lets the exception escape and aiohttp answers this; no traceback in our logs
            return web.Response(status=500, text=AIOHTTP_500_TEXT)
        except (AttributeError, TypeError, KeyError, ValueError):
            # malformed requests (e.g. a JSON list where ComfyUI calls .get) fail the same way
            log.warning("stand-in %s: %s %s failed", self.name, request.method, request.path, exc_info=True)
            return web.Response(status=500, text=AIOHTTP_500_TEXT)
        tamper = self._fault(self.tamper_json, request)
        if tamper is not None and isinstance(response, web.Response) and response.content_type == "application/json":
            return web.json_response(tamper(json.loads(response.body)), status=response.status)
        return response

    async def _huge_answer(self, request: web.Request, size: int) -> web.StreamResponse:
        """``size`` zero bytes, written until the client stops reading; records how far it got."""
        route = self._route_of(request)
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        if self.huge_declared:
            response.content_length = size
        await response.prepare(request)
        chunk, sent = bytes(65536), 0
        try:
            while sent < size:
                await response.write(chunk[: size - sent])
                sent += min(len(chunk), size - sent)
                self.huge_sent[route] = sent
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            self.huge_aborted.add(route)
        return response

    def _routes(self) -> list[web.RouteDef]:
        table = [
            ("GET", "/ws", self._ws),
            ("GET", "/prompt", self._get_prompt),
            ("POST", "/prompt", self._post_prompt),
            ("GET", "/queue", self._get_queue),
            ("POST", "/queue", self._post_queue),
            ("POST", "/interrupt", self._post_interrupt),
            ("POST", "/free", self._post_free),
            ("GET", "/history", self._get_history),
            ("GET", "/history/{prompt_id}", self._get_history_item),
            ("POST", "/history", self._post_history),
            ("GET", "/view", self._view),
            ("GET", "/system_stats", self._system_stats),
            ("GET", "/features", self._features),
            ("GET", "/object_info", self._object_info),
            ("GET", "/object_info/{node_class}", self._object_info_one),
            ("POST", "/upload/image", self._upload_image),
        ]
        routes = [web.route(method, "/api" + path, handler) for method, path, handler in table]
        routes += [web.route(method, path, handler) for method, path, handler in table]
        return routes

    async def _ws(self, request: web.Request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.rel_url.query.get("clientId", "")
        if sid:
            self._sockets.pop(sid, None)
        else:
            sid = uuid.uuid4().hex
        self._sockets[sid] = ws
        self._socket_flags[sid] = {"feature_flags": {}}
        try:
            await ws.send_json({"type": "status", "data": {"status": self._queue_info(), "sid": sid}})
            if self._client_id == sid and self._last_node_id is not None:
                await ws.send_json({"type": "executing", "data": {"node": self._last_node_id}})
            first = True
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    try:
                        data = json.loads(msg.data)
                    except json.JSONDecodeError:
                        continue
                    if first and isinstance(data, dict) and data.get("type") == "feature_flags" \
                            and self.answers_feature_flags:
                        if sid in self._socket_flags:
                            self._socket_flags[sid]["feature_flags"] = data.get("data", {})
                        await ws.send_json({"type": "feature_flags", "data": self._server_features()})
                    first = False
        except (ConnectionError, RuntimeError):
            pass
        finally:
            # like ComfyUI this forgets whatever socket now has this sid (even a newer one)
            self._sockets.pop(sid, None)
            self._socket_flags.pop(sid, None)
        return ws

    @staticmethod
    def _server_features() -> dict:
        return {"supports_preview_metadata": True, "max_upload_size": MAX_UPLOAD_SIZE}

    async def _features(self, request: web.Request):
        return web.json_response(self._server_features())

    async def _get_prompt(self, request: web.Request):
        return web.json_response(self._queue_info())

    async def _post_prompt(self, request: web.Request):
        body = await request.json()
        if "number" in body:
            number = float(body["number"])
        else:
            number = self._number
            if "front" in body and body["front"]:
                number = -number
            self._number += 1
        if "prompt" not in body:
            error = {"type": "no_prompt", "message": "No prompt provided", "details": "No prompt provided", "extra_info": {}}
            return web.json_response({"error": error, "node_errors": {}}, status=400)
        record = copy.deepcopy(body)
        prompt = body["prompt"]
        prompt_id = str(body.get("prompt_id", uuid.uuid4()))
        ok, error, outputs, node_errors = validate_prompt(prompt, self.node_classes, body.get("partial_execution_targets"))
        extra_data = body.get("extra_data", {})
        if "client_id" in body:
            extra_data["client_id"] = body["client_id"]
        if not ok:
            return web.json_response({"error": error, "node_errors": node_errors}, status=400)
        record["prompt_id"] = prompt_id
        record.setdefault("client_id", None)
        record.setdefault("extra_data", {})
        record["number"] = number
        self.received.append(record)
        heapq.heappush(self._queue, (number, prompt_id, prompt, extra_data, outputs))
        self._queue_updated()
        self._wakeup.set()
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": node_errors})

    async def _get_queue(self, request: web.Request):
        return web.json_response({"queue_running": list(self._running.values()), "queue_pending": list(self._queue)})

    async def _post_queue(self, request: web.Request):
        body = await request.json()
        if body.get("clear"):
            self._queue = []
            self._queue_updated()
        for prompt_id in body.get("delete", []) if "delete" in body else []:
            for index, item in enumerate(self._queue):
                if item[1] == prompt_id:
                    if len(self._queue) == 1:
                        self._queue = []
                        self._queue_updated()
                    else:
                        self._queue.pop(index)
                        heapq.heapify(self._queue)
                    self._queue_updated()
                    break
        return web.Response(status=200)

    async def _post_interrupt(self, request: web.Request):
        try:
            body = await request.json()
        except json.JSONDecodeError:
            body = {}
        self.interrupt_calls.append(body)
        prompt_id = body.get("prompt_id")  # a JSON body that is not an object fails (500) as in ComfyUI
        if prompt_id:
            if any(item[1] == prompt_id for item in self._running.values()):
                self._interrupted = True
        else:
            self._interrupted = True
        return web.Response(status=200)

    async def _post_free(self, request: web.Request):
        body = await request.json()
        self.free_calls.append(body)
        if body.get("unload_models", False):
            self._flags["unload_models"] = body["unload_models"]
        if body.get("free_memory", False):
            self._flags["free_memory"] = body["free_memory"]
        if not self._running:
            await self._apply_flags()
        return web.Response(status=200)

    async def _get_history(self, request: web.Request):
        max_items = request.rel_url.query.get("max_items")
        max_items = int(max_items) if max_items is not None else None
        offset = request.rel_url.query.get("offset")
        offset = int(offset) if offset is not None else -1
        if offset < 0 and max_items is not None:
            offset = len(self._history) - max_items
        out = {}
        for index, (key, value) in enumerate(self._history.items()):
            if index >= offset:
                out[key] = value
                if max_items is not None and len(out) >= max_items:
                    break
        return web.json_response(out)

    async def _get_history_item(self, request: web.Request):
        prompt_id = request.match_info["prompt_id"]
        if prompt_id in self._history:
            return web.json_response({prompt_id: copy.deepcopy(self._history[prompt_id])})
        return web.json_response({})

    async def _post_history(self, request: web.Request):
        body = await request.json()
        if body.get("clear"):
            self._history = {}
        for prompt_id in body.get("delete", []) if "delete" in body else []:
            self._history.pop(prompt_id, None)
        return web.Response(status=200)

    async def _view(self, request: web.Request):
        if self.view_delay:
            await asyncio.sleep(self.view_delay)
        query = request.rel_url.query
        if "filename" not in query:
            return web.Response(status=404)
        filename, folder = split_annotation(query["filename"], self.dirs)
        if not filename:
            return web.Response(status=400)
        if filename[0] == "/" or ".." in filename:
            return web.Response(status=400)
        if folder is None:
            folder = self.dirs.by_type(query.get("type", "output"))
        if folder is None:
            return web.Response(status=400)
        if "subfolder" in query:
            full = os.path.join(folder, query["subfolder"])
            if os.path.commonpath((os.path.abspath(full), folder)) != folder:
                return web.Response(status=403)
            folder = full
        filename = os.path.basename(filename)
        path = os.path.join(folder, filename)
        if not os.path.isfile(path):
            return web.Response(status=404)
        disposition = {"Content-Disposition": f'filename="{filename}"'}
        if "preview" in query:
            parts = query["preview"].split(";")
            fmt = parts[0]
            if fmt not in ("webp", "jpeg") or "a" in query.get("channel", ""):
                fmt = "webp"
            quality = int(parts[-1]) if parts[-1].isdigit() else 90
            with Image.open(path) as img:
                if fmt == "jpeg" or query.get("channel", "") == "rgb":
                    img = img.convert("RGB")
                buffer = BytesIO()
                img.save(buffer, format=fmt, quality=quality)
            return web.Response(body=buffer.getvalue(), content_type=f"image/{fmt}", headers=disposition)
        channel = query.get("channel", "rgba")
        if channel == "rgb":
            with Image.open(path) as img:
                rgb = Image.merge("RGB", img.split()[:3]) if img.mode == "RGBA" else img.convert("RGB")
                buffer = BytesIO()
                rgb.save(buffer, format="PNG")
            return web.Response(body=buffer.getvalue(), content_type="image/png", headers=disposition)
        if channel == "a":
            with Image.open(path) as img:
                alpha = img.split()[3] if img.mode == "RGBA" else Image.new("L", img.size, 255)
                out = Image.new("RGBA", img.size)
                out.putalpha(alpha)
                buffer = BytesIO()
                out.save(buffer, format="PNG")
            return web.Response(body=buffer.getvalue(), content_type="image/png", headers=disposition)
        content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        if content_type in {"text/html", "text/html-sandboxed", "application/xhtml+xml", "text/javascript", "text/css"}:
            content_type = "application/octet-stream"
        return web.FileResponse(path, headers={**disposition, "Content-Type": content_type})

    async def _system_stats(self, request: web.Request):
        try:
            import torch

            torch_version = torch.__version__
        except ImportError:  # pragma: no cover
            torch_version = "unknown"
        return web.json_response({
            "system": {
                "os": os.name,
                "ram_total": FAKE_RAM_TOTAL,
                "ram_free": FAKE_RAM_FREE,
                "comfyui_version": COMFYUI_VERSION,
                "required_frontend_version": "1.27.10",
                "installed_templates_version": "0.1.95",
                "required_templates_version": "0.1.95",
                "python_version": sys.version,
                "pytorch_version": torch_version,
                "embedded_python": False,
                "argv": ["main.py", "--cpu", "--listen", self.host, "--port", str(self.port),
                         "--base-directory", str(self.base_dir)],
            },
            "devices": [{
                "name": "cpu",
                "type": "cpu",
                "index": None,
                "vram_total": FAKE_RAM_TOTAL,
                "vram_free": FAKE_RAM_FREE,
                "torch_vram_total": FAKE_RAM_TOTAL,
                "torch_vram_free": FAKE_RAM_FREE,
            }],
        })

    async def _object_info(self, request: web.Request):
        out = {}
        for class_type, cls in list(self.node_classes.items()):
            out[class_type] = node_info(class_type, cls, self.display_names, self.python_modules)
        return web.json_response(out)

    async def _object_info_one(self, request: web.Request):
        class_type = request.match_info["node_class"]
        out = {}
        if class_type in self.node_classes:
            out[class_type] = node_info(class_type, self.node_classes[class_type], self.display_names, self.python_modules)
        return web.json_response(out)

    async def _upload_image(self, request: web.Request):
        post = await request.post()
        image = post.get("image")
        overwrite = post.get("overwrite")
        kind = post.get("type")
        if kind is None:
            kind = "input"
        base = self.dirs.by_type(kind)
        if base is None:
            raise web.HTTPInternalServerError()  # ComfyUI fails with an exception here
        if not (image is not None and getattr(image, "file", None)):
            return web.Response(status=400)
        filename = image.filename
        if not filename:
            return web.Response(status=400)
        subfolder = post.get("subfolder", "")
        folder = os.path.join(base, os.path.normpath(subfolder))
        path = os.path.abspath(os.path.join(folder, filename))
        if os.path.commonpath((base, path)) != base:
            return web.Response(status=400)
        os.makedirs(folder, exist_ok=True)
        data = image.file.read()
        stem, ext = os.path.splitext(filename)
        duplicate = False
        if overwrite not in ("true", "1"):
            counter = 1
            while os.path.exists(path):
                if hashlib.sha256(Path(path).read_bytes()).digest() == hashlib.sha256(data).digest():
                    duplicate = True
                    break
                filename = f"{stem} ({counter}){ext}"
                path = os.path.join(folder, filename)
                counter += 1
        if not duplicate:
            Path(path).write_bytes(data)
        return web.json_response({"name": filename, "subfolder": subfolder, "type": kind})
