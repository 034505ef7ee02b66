"""Graph execution for the stand-in, with the observable behaviour of ComfyUI 0.3.64.

What is reproduced: the "classic" output cache (outputs are reused across prompts when a node's
input signature is unchanged, entries that the current prompt does not use are dropped), the
order nodes run in, ``executing``/``executed``/``progress``/``progress_state`` events, error and
interrupt reporting, and the history record (``outputs``/``meta``/status messages).
Not reproduced: lazy inputs, node expansion (subgraphs), async node functions. Preview images only
from simulated work, when the stand-in has a ``preview_method`` (each step, as a sampler's).
"""

from __future__ import annotations

import asyncio
import inspect
import time
import traceback
from io import BytesIO
from typing import TYPE_CHECKING, Any

from .validation import input_info, is_link, qualified_type_name

if TYPE_CHECKING:  # pragma: no cover
    from .server import StandinComfy


# Node classes whose simulated work the stand-in performs itself: class_type -> the input that
# holds the number of seconds. The node function is then called with that input set to 0, and
# the stand-in sleeps (scaled by ``execution_delay_scale``) in the same number of steps as the
# node pack's ``simulate_work``, reporting progress and honouring interrupts between steps.
SIMULATED_WORK_INPUTS = {"DistributedTestImage": "delay", "DistributedTestTileWork": "delay"}


def _work_steps(class_def: type) -> int:
    module = inspect.getmodule(class_def)
    simulate = getattr(module, "simulate_work", None)
    if simulate is not None:
        steps = inspect.signature(simulate).parameters.get("steps")
        if steps is not None and isinstance(steps.default, int):
            return steps.default
    return 10


class InterruptProcessing(Exception):
    """Raised where ComfyUI raises InterruptProcessingException."""


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return ("dict",) + tuple((k, _freeze(v)) for k, v in sorted(value.items()))
    if isinstance(value, (list, tuple)):
        return ("list",) + tuple(_freeze(v) for v in value)
    if isinstance(value, (int, float, str, bool, type(None))):
        return value
    return object()  # never equal to anything else: not cacheable


class Caches:
    """Outputs/UI keyed by input signature, node objects keyed by (node id, class)."""

    def __init__(self) -> None:
        self.outputs: dict[Any, list] = {}
        self.ui: dict[Any, dict] = {}
        self.objects: dict[tuple[str, str], Any] = {}
        self.keys: dict[str, Any] = {}

    def set_prompt(self, prompt: dict, classes: dict[str, type]) -> None:
        self.keys = {node_id: self._signature(prompt, node_id, classes) for node_id in prompt}
        used = set(self.keys.values())
        self.outputs = {k: v for k, v in self.outputs.items() if k in used}
        self.ui = {k: v for k, v in self.ui.items() if k in used}
        used_objects = {(node_id, node["class_type"]) for node_id, node in prompt.items()}
        self.objects = {k: v for k, v in self.objects.items() if k in used_objects}

    def output(self, node_id: str):
        return self.outputs.get(self.keys.get(node_id))

    def ui_of(self, node_id: str):
        return self.ui.get(self.keys.get(node_id))

    def _signature(self, prompt: dict, node_id: str, classes: dict[str, type]):
        ancestors: list[str] = []
        order: dict[str, int] = {}

        def walk(current: str) -> None:
            if current not in prompt:
                return
            inputs = prompt[current]["inputs"]
            for key in sorted(inputs):
                if is_link(inputs[key]):
                    parent = inputs[key][0]
                    if parent not in order:
                        ancestors.append(parent)
                        order[parent] = len(ancestors) - 1
                        walk(parent)

        walk(node_id)
        parts = [self._immediate(prompt, node_id, order, classes)]
        parts += [self._immediate(prompt, a, order, classes) for a in ancestors]
        return _freeze(parts)

    @staticmethod
    def _immediate(prompt: dict, node_id: str, order: dict[str, int], classes: dict[str, type]):
        if node_id not in prompt:
            return [object()]
        node = prompt[node_id]
        class_def = classes[node["class_type"]]
        parts: list = [node["class_type"], _is_changed(class_def, node, node_id)]
        hidden = (class_def.INPUT_TYPES().get("hidden") or {}).values()
        if getattr(class_def, "NOT_IDEMPOTENT", False) or "UNIQUE_ID" in hidden:
            parts.append(node_id)
        for key in sorted(node["inputs"]):
            value = node["inputs"][key]
            if is_link(value):
                parts.append((key, ("ANCESTOR", order[value[0]], value[1])))
            else:
                parts.append((key, value))
        return parts


def _is_changed(class_def: type, node: dict, node_id: str):
    check = getattr(class_def, "IS_CHANGED", None)
    if check is None:
        return False
    try:
        constants = {}
        for name, value in node["inputs"].items():
            _, category, _ = input_info(class_def, name)
            if is_link(value):
                constants[name] = [None]
            elif category is not None:
                constants[name] = [value]
        return [check(**call) for call in _slices(constants, getattr(class_def, "INPUT_IS_LIST", False))]
    except Exception:
        return object()


def _slices(values: dict[str, list], input_is_list: bool) -> list[dict]:
    if input_is_list:
        return [values]
    count = max((len(v) for v in values.values()), default=0)
    if count == 0:
        return [{}]
    return [{k: v[i if len(v) > i else -1] for k, v in values.items()} for i in range(count)]


def _format_value(value: Any):
    if value is None or isinstance(value, (int, float, bool, str)):
        return value
    return str(value)


class ExecutionOrder:
    """Topological dissolve of the graph, skipping cached nodes, output nodes first."""

    def __init__(self, prompt: dict, classes: dict[str, type], caches: Caches) -> None:
        self.prompt = prompt
        self.classes = classes
        self.caches = caches
        self.pending: dict[str, bool] = {}
        self.block_count: dict[str, int] = {}
        self.blocking: dict[str, dict[str, dict]] = {}

    def _cached(self, node_id: str) -> bool:
        return self.caches.output(node_id) is not None

    def add_node(self, node_id: str) -> None:
        stack = [node_id]
        links = []
        while stack:
            current = stack.pop()
            if current in self.pending:
                continue
            self.pending[current] = True
            self.block_count[current] = 0
            self.blocking[current] = {}
            class_def = self.classes[self.prompt[current]["class_type"]]
            for name, value in self.prompt[current]["inputs"].items():
                if not is_link(value):
                    continue
                _, _, options = input_info(class_def, name)
                lazy = bool(options and options.get("lazy"))
                if not lazy and not self._cached(value[0]):
                    stack.append(value[0])
                    links.append((value[0], value[1], current))
        for source, socket, target in links:
            self._link(source, socket, target)

    def _link(self, source: str, socket: int, target: str) -> None:
        if self._cached(source):
            return
        self.add_node(source)
        if target not in self.blocking[source]:
            self.blocking[source][target] = {}
            self.block_count[target] += 1
        self.blocking[source][target][socket] = True

    def empty(self) -> bool:
        return not self.pending

    def _is_output(self, node_id: str) -> bool:
        return getattr(self.classes[self.prompt[node_id]["class_type"]], "OUTPUT_NODE", False) is True

    def next(self) -> str | None:
        ready = [n for n in self.pending if self.block_count[n] == 0]
        if not ready:
            return None
        for node_id in ready:
            if self._is_output(node_id):
                return node_id
        for node_id in ready:
            if any(self._is_output(b) for b in self.blocking[node_id]):
                return node_id
        for node_id in ready:
            for b in self.blocking[node_id]:
                if any(self._is_output(c) for c in self.blocking[b]):
                    return node_id
        return ready[0]

    def done(self, node_id: str) -> None:
        del self.pending[node_id]
        for blocked in self.blocking[node_id]:
            self.block_count[blocked] -= 1
        del self.blocking[node_id]


class ProgressRegistry:
    """Per-prompt node progress, sent as ``progress_state`` like ComfyUI's WebUIProgressHandler."""

    def __init__(self, host: "StandinComfy", prompt_id: str) -> None:
        self.host = host
        self.prompt_id = prompt_id
        self.nodes: dict[str, dict] = {}

    def _entry(self, node_id: str) -> dict:
        return self.nodes.setdefault(node_id, {"state": "pending", "value": 0, "max": 1})

    def _send(self) -> None:
        active = {
            node_id: {
                "value": s["value"], "max": s["max"], "state": s["state"], "node_id": node_id,
                "prompt_id": self.prompt_id, "display_node_id": node_id, "parent_node_id": None, "real_node_id": node_id,
            }
            for node_id, s in self.nodes.items()
            if s["state"] != "pending"
        }
        self.host._send("progress_state", {"prompt_id": self.prompt_id, "nodes": active}, self.host._client_id)

    def start(self, node_id: str) -> None:
        self._entry(node_id).update(state="running", value=0.0, max=1.0)
        self._send()

    def update(self, node_id: str, value, maximum, preview: bool = False, image: bytes | None = None) -> None:
        """A step, in the order of ComfyUI's progress hook: ``progress_state`` (and a type-4 preview to a client
        that announced preview metadata), ``progress``, then a type-1 preview to any other client. ``image``: a PNG
        the node gave the hook (SaveImageWebsocket), sent instead of a sampler's preview."""
        self._entry(node_id).update(state="running", value=value, max=maximum)
        self._send()
        metadata = self.host._supports_preview_metadata()
        if (preview or image is not None) and metadata:
            self.host._preview(self.prompt_id, node_id, value, metadata=True, image=image)
        self.host._send("progress", {"value": value, "max": maximum, "prompt_id": self.prompt_id, "node": node_id}, self.host._client_id)
        if (preview or image is not None) and not metadata:
            self.host._preview(self.prompt_id, node_id, value, metadata=False, image=image)

    def finish(self, node_id: str) -> None:
        entry = self._entry(node_id)
        entry.update(state="finished", value=entry["max"])
        self._send()


class PromptExecution:
    """Runs one queued prompt on behalf of a StandinComfy (the body of ComfyUI's PromptExecutor)."""

    def __init__(self, host: "StandinComfy", prompt: dict, prompt_id: str, extra_data: dict, outputs: list[str]) -> None:
        self.host = host
        self.prompt = prompt
        self.prompt_id = prompt_id
        self.extra_data = extra_data
        self.outputs = outputs
        self.classes = dict(host.node_classes)
        self.status_messages: list = []
        self.success = True
        self.executed: set[str] = set()
        self.gate_pending = True
        self.inject_error: str | None = host.execution_error

    def message(self, event: str, data: dict, broadcast: bool) -> None:
        data = {**data, "timestamp": int(time.time() * 1000)}
        self.status_messages.append((event, data))
        if self.host._client_id is not None or broadcast:
            self.host._send(event, data, self.host._client_id)

    async def run(self) -> dict:
        host = self.host
        host._interrupted = False
        host._client_id = self.extra_data.get("client_id")
        self.message("execution_start", {"prompt_id": self.prompt_id}, broadcast=False)
        caches = host._caches
        if self.inject_error is not None:
            # an injected failure must happen even for a prompt whose outputs are cached
            caches.outputs.clear()
            caches.ui.clear()
        caches.set_prompt(self.prompt, self.classes)
        self.progress = ProgressRegistry(host, self.prompt_id)
        cached = [node_id for node_id in self.prompt if caches.output(node_id) is not None]
        self.message("execution_cached", {"nodes": cached, "prompt_id": self.prompt_id}, broadcast=False)

        order = ExecutionOrder(self.prompt, self.classes, caches)
        current_outputs = list(self.prompt.keys())
        for node_id in self.outputs:
            order.add_node(node_id)
        failed = False
        while not order.empty():
            node_id = order.next()
            if node_id is None:
                break  # cycles are not supported by the stand-in
            ok, error, exc = await self.run_node(node_id)
            self.success = ok
            if not ok:
                self.report_error(current_outputs, error, exc)
                failed = True
                break
            order.done(node_id)
        if not failed:
            self.message("execution_success", {"prompt_id": self.prompt_id}, broadcast=False)

        outputs, meta = {}, {}
        for node_id in self.prompt:
            ui = caches.ui_of(node_id)
            if ui is not None:
                outputs[node_id] = ui["output"]
                meta[node_id] = ui["meta"]
        host._last_node_id = None
        return {"outputs": outputs, "meta": meta}

    def report_error(self, current_outputs: list[str], error: dict, exc: BaseException) -> None:
        node_id = error["node_id"]
        base = {
            "prompt_id": self.prompt_id,
            "node_id": node_id,
            "node_type": self.prompt[node_id]["class_type"],
            "executed": list(self.executed),
        }
        if isinstance(exc, InterruptProcessing):
            self.message("execution_interrupted", base, broadcast=True)
        else:
            self.message("execution_error", {
                **base,
                "exception_message": error["exception_message"],
                "exception_type": error["exception_type"],
                "traceback": error["traceback"],
                "current_inputs": error["current_inputs"],
                "current_outputs": list(current_outputs),
            }, broadcast=False)

    def check_interrupt(self) -> None:
        if self.host._interrupted:
            self.host._interrupted = False
            raise InterruptProcessing()

    async def pass_gate(self) -> None:
        if self.gate_pending:
            self.gate_pending = False
            gate = self.host.gate
            if gate is not None:
                await gate.wait()

    def gather_inputs(self, node_id: str, class_def: type) -> dict[str, list]:
        declared = class_def.INPUT_TYPES()
        values: dict[str, list] = {}
        for name, value in self.prompt[node_id]["inputs"].items():
            _, category, options = input_info(class_def, name, declared)
            if is_link(value) and not (options or {}).get("rawLink", False):
                upstream = self.host._caches.output(value[0])
                if upstream is None or value[1] >= len(upstream):
                    values[name] = [None]
                else:
                    values[name] = upstream[value[1]]
            elif category is not None:
                values[name] = [value]
        for name, kind in (declared.get("hidden") or {}).items():
            if kind == "PROMPT":
                values[name] = [self.prompt]
            elif kind == "DYNPROMPT":
                values[name] = [None]
            elif kind == "EXTRA_PNGINFO":
                values[name] = [self.extra_data.get("extra_pnginfo", None)]
            elif kind == "UNIQUE_ID":
                values[name] = [node_id]
            elif kind in ("AUTH_TOKEN_COMFY_ORG", "API_KEY_COMFY_ORG"):
                values[name] = [self.extra_data.get(kind.lower(), None)]
        return values

    async def run_node(self, node_id: str):
        host = self.host
        caches = host._caches
        class_type = self.prompt[node_id]["class_type"]
        class_def = self.classes[class_type]
        if caches.output(node_id) is not None:
            await self.pass_gate()
            if host._client_id is not None:
                ui = caches.ui_of(node_id) or {}
                host._send("executed", {
                    "node": node_id, "display_node": node_id, "output": ui.get("output", None), "prompt_id": self.prompt_id,
                }, host._client_id)
            self.progress.finish(node_id)
            return True, None, None

        values = None
        try:
            self.progress.start(node_id)
            values = self.gather_inputs(node_id, class_def)
            if host._client_id is not None:
                host._last_node_id = node_id
                host._send("executing", {"node": node_id, "display_node": node_id, "prompt_id": self.prompt_id}, host._client_id)
            await self.pass_gate()
            obj = caches.objects.get((node_id, class_type))
            if obj is None:
                obj = class_def()
                caches.objects[(node_id, class_type)] = obj
            returns = []
            for call in _slices(values, getattr(class_def, "INPUT_IS_LIST", False)):
                self.check_interrupt()
                returns.append(await self.call_node(node_id, class_type, class_def, obj, call))
                if class_type == "SaveImageWebsocket":
                    await self.send_images(node_id, call["images"])
            output, ui = _collect(returns, class_def)
            if ui:
                caches.ui[caches.keys[node_id]] = {
                    "meta": {"node_id": node_id, "display_node": node_id, "parent_node": None, "real_node_id": node_id},
                    "output": ui,
                }
                if host._client_id is not None:
                    host._send("executed", {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": self.prompt_id}, host._client_id)
            caches.outputs[caches.keys[node_id]] = output
        except InterruptProcessing as exc:
            return False, {"node_id": node_id}, exc
        except Exception as exc:
            formatted = {}
            if values is not None:
                formatted = {name: [_format_value(v) for v in items] for name, items in values.items()}
            return False, {
                "node_id": node_id,
                "exception_message": f"{exc}\n",
                "exception_type": qualified_type_name(type(exc)),
                "traceback": traceback.format_tb(exc.__traceback__),
                "current_inputs": formatted,
            }, exc
        self.progress.finish(node_id)
        self.executed.add(node_id)
        return True, None, None

    async def send_images(self, node_id: str, images: Any) -> None:
        """SaveImageWebsocket's images through the progress hook, as ComfyUI sends them: one step each (value 0 for
        the first), with the image as a PNG (``send_image_with_metadata``/``send_image``, compress level 1)."""
        from .nodes import tensor_to_pil

        def encode(image: Any) -> bytes:
            buffer = BytesIO()
            tensor_to_pil(image).save(buffer, format="PNG", compress_level=1)
            return buffer.getvalue()

        loop = asyncio.get_running_loop()
        for step, image in enumerate(images):
            png = await loop.run_in_executor(self.host._executor, encode, image)
            self.progress.update(node_id, step, len(images), image=png)

    async def call_node(self, node_id: str, class_type: str, class_def: type, obj: Any, call: dict):
        host = self.host
        work_input = SIMULATED_WORK_INPUTS.get(class_type)
        if work_input is not None and work_input in call and self.inject_error is None:
            seconds = float(call[work_input] or 0.0) * float(host.execution_delay_scale)
            call = {**call, work_input: 0.0}
            if seconds > 0:
                steps = _work_steps(class_def)
                for step in range(steps):
                    self.check_interrupt()
                    await asyncio.sleep(seconds / steps)
                    self.check_interrupt()
                    self.progress.update(node_id, step + 1, steps, preview=host.preview_method != "none")
        function = getattr(obj, class_def.FUNCTION)
        injected = self.inject_error
        if injected is not None:
            self.inject_error = None  # one failure per prompt is enough: the prompt stops there

        def invoke():
            if injected is not None:
                raise RuntimeError(injected)
            return function(**call)

        return await asyncio.get_running_loop().run_in_executor(host._executor, invoke)


def _collect(returns: list, class_def: type):
    results = []
    uis = []
    for r in returns:
        if isinstance(r, dict):
            if "ui" in r:
                uis.append(r["ui"])
            if "result" in r:
                results.append(r["result"])
        else:
            results.append(r)
    output: list = []
    if results:
        flags = getattr(class_def, "OUTPUT_IS_LIST", [False] * len(results[0]))
        for index, is_list in zip(range(len(results[0])), flags):
            if is_list:
                merged = []
                for r in results:
                    merged.extend(r[index])
                output.append(merged)
            else:
                output.append([r[index] for r in results])
    ui = {}
    if uis:
        ui = {key: [item for u in uis for item in u[key]] for key in uis[0].keys()}
    return output, ui
