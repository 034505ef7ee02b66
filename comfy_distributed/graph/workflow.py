"""The API-format prompt graph: find our nodes, prune, and build each worker's copy.

A prompt is ``{node_id: {"class_type": str, "inputs": {name: literal | [node_id, output_index]}}}``.
A worker's copy holds only what the Collectors need, uses no class of this extension
(Distributors become literal seeds, Collectors become core ``PreviewImage`` output nodes
under the same node id), so any plain ComfyUI can run it.
"""

from __future__ import annotations

import copy
from typing import Any, Iterable, Mapping

from . import media
from ..errors import WorkflowError

COLLECTOR_CLASS = "MultiGPUCollector"
DISTRIBUTOR_CLASS = "MultiGPUSeedDistributor"
SCHEDULING_INPUT = "scheduling"
"""The Collector's own choice of scheduling mode ("default" follows the setting)."""
SCHEDULING_MODES = ("static", "weighted", "dynamic")
MASTER_ROLE_INPUT = "master_role"
"""The Collector's option: whether the master makes images too (``master.participates`` by default)."""
MASTER_ROLES = ("participates", "coordinator only")
JOB_INPUT = "multigpu_job_id"
"""Input added to the master's Collector nodes so that they find their job when they run."""

WORKER_OUTPUT_CLASS = "PreviewImage"
TILE_SPLIT_CLASS = "MultiGPUTileSplit"
TILE_MERGE_CLASS = "MultiGPUTileMerge"
TILED_UPSCALE_CLASS = "MultiGPUTiledUpscale"
TILE_CLASSES = (TILE_SPLIT_CLASS, TILE_MERGE_CLASS, TILED_UPSCALE_CLASS)
"""The tile nodes (``tiles.nodes``, ``tiles.expanded``): they never run on a worker."""
VALUE_CLASS = "MultiGPUValue"
"""The Multi-GPU Value node (``values``): a worker's copy holds its literal value instead."""


def default_value(prompt: Prompt, node_id: str) -> Any:
    """A Value node's default as typed into it (used where no typed value was given)."""
    value = prompt[node_id].get("inputs", {}).get("default", "")
    return "" if is_link(value) else value


def literal_sources(prompt: Prompt, nodes: Iterable[str], seed_offset: int = 0,
                    values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The nodes among ``nodes`` that a copy replaces by a literal: each Distributor by its seed (offset),
    each Value node by its value in ``values`` (else its default)."""
    found: dict[str, Any] = {}
    for node_id in nodes:
        class_type = prompt[node_id].get("class_type")
        if class_type == DISTRIBUTOR_CLASS:
            found[node_id] = offset_seed(distributor_seed(prompt, node_id), seed_offset)
        elif class_type == VALUE_CLASS:
            found[node_id] = (values or {}).get(node_id, default_value(prompt, node_id))
    return found



def collector_links(prompt: Prompt, collector: str) -> dict[str, list]:
    """The Collector's connected inputs, by kind."""
    inputs = prompt[collector].get("inputs", {})
    links = {kind: list(inputs[kind]) for kind in media.NAMES if is_link(inputs.get(kind))}
    if not links:
        raise WorkflowError(f"Multi-GPU Collector {collector}: connect images, a latent or audio")
    return links


def output_key(collector: str, kind: str) -> str:
    """The node id of a Collector's output of this kind in a worker's copy (images keep the Collector's id)."""
    return collector if kind == "images" else f"{collector}_{kind}"


def _worker_output_nodes(collector: str, links: dict[str, list]) -> Prompt:
    nodes: Prompt = {}
    for kind, link in links.items():
        spec = media.BY_NAME[kind]
        inputs: dict[str, Any] = {spec.worker_input: link, **dict(spec.worker_literals)}
        nodes[output_key(collector, kind)] = {
            "class_type": spec.worker_node, "inputs": inputs,
            "_meta": {"title": f"Multi-GPU Collector {collector} {kind} (worker share)"},
        }
    return nodes
SEED_MODULUS = 2**64
"""ComfyUI seeds are 64-bit unsigned; an offset seed wraps around instead of overflowing."""

LITERAL_SOURCES = {"PrimitiveInt": "value"}
"""Core nodes whose output is one of their literal inputs, so a seed linked from them is known."""

Prompt = dict[str, dict[str, Any]]


def is_link(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], (str, int))
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def validate_prompt_shape(prompt: Any) -> Prompt:
    """Check the structure we rely on; ComfyUI validates the rest."""
    if not isinstance(prompt, dict):
        raise WorkflowError("the prompt must be a JSON object of nodes")
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
            raise WorkflowError(f"node {node_id}: must be an object with a class_type")
        if not isinstance(node.get("inputs", {}), dict):
            raise WorkflowError(f"node {node_id} ({node['class_type']}): inputs must be an object")
    return prompt


def nodes_of_class(prompt: Prompt, class_type: str) -> list[str]:
    return [node_id for node_id, node in prompt.items() if node.get("class_type") == class_type]


def upstream(prompt: Prompt, start: Iterable[str]) -> set[str]:
    """Every node that the ``start`` nodes depend on, through links (``start`` excluded)."""
    seen: set[str] = set()
    stack = [str(node_id) for node_id in start]
    while stack:
        node = prompt.get(stack.pop())
        if node is None:
            continue
        for value in node.get("inputs", {}).values():
            if is_link(value):
                source = str(value[0])
                if source not in seen and source in prompt:
                    seen.add(source)
                    stack.append(source)
    return seen


def distributed_collectors(prompt: Prompt) -> list[str]:
    """Collectors whose inputs come from no other Collector, in node-id order.

    A Collector downstream of another one already receives every participant's images,
    so it is a pass-through and takes no part in distribution.
    """
    collectors = nodes_of_class(prompt, COLLECTOR_CLASS)
    result = []
    for node_id in collectors:
        if not any(other in upstream(prompt, [node_id]) for other in collectors if other != node_id):
            result.append(node_id)
    return sorted(result, key=_node_sort_key)


def _node_sort_key(node_id: str) -> tuple[int, int | str]:
    """Numeric ids in numeric order first (as ComfyUI's UI numbers nodes), then the others."""
    numeric = node_id.isascii() and node_id.isdigit() and len(node_id) <= 30
    return (0, int(node_id)) if numeric else (1, node_id)


def offset_seed(seed: int, offset: int) -> int:
    """The seed of the unit with this seed offset (worker k's own unit has offset k + 1)."""
    return (seed + offset) % SEED_MODULUS


def batch_source(prompt: Prompt, collector: str) -> tuple[str, str] | None:
    """The (node, input) whose literal ``batch_size`` decides the Collector's batch, if exactly one does.

    Units of another size than the workflow's (weighted and dynamic scheduling) are made by
    rewriting this literal.
    """
    found = [
        node_id
        for node_id in sorted(upstream(prompt, [collector]), key=_node_sort_key)
        if isinstance(prompt[node_id].get("inputs", {}).get("batch_size"), int)
        and not isinstance(prompt[node_id]["inputs"]["batch_size"], bool)
    ]
    return (found[0], "batch_size") if len(found) == 1 else None


def distributor_seed(prompt: Prompt, node_id: str) -> int:
    """The master's seed at a Distributor, read from the prompt before anything runs."""
    node = prompt[node_id]
    value = node.get("inputs", {}).get("seed")
    if is_link(value):
        source_id = str(value[0])
        source = prompt.get(source_id, {})
        literal_input = LITERAL_SOURCES.get(source.get("class_type", ""))
        literal = source.get("inputs", {}).get(literal_input) if literal_input else None
        if literal_input is None or is_link(literal) or value[1] != 0:
            raise WorkflowError(
                f"Multi-GPU Distributor {node_id}: its seed comes from node {source_id} "
                f"({source.get('class_type', 'missing')}), whose value is only known when it runs; "
                "type the seed into the Distributor or feed it from a core Int (PrimitiveInt) node"
            )
        value = literal
    if isinstance(value, bool) or not isinstance(value, int):
        raise WorkflowError(f"Multi-GPU Distributor {node_id}: seed must be an integer, got {value!r}")
    if not 0 <= value < SEED_MODULUS:
        raise WorkflowError(f"Multi-GPU Distributor {node_id}: seed {value} is outside 0..2^64-1")
    return value


def mark_master_prompt(prompt: Prompt, collectors: Iterable[str], job_id: str, batch: int | None = None,
                       coordinator: bool = False) -> Prompt:
    """The master's prompt with the job id on each distributed Collector (a new dict).

    With ``batch``, the master's own unit gets that batch size too (weighted and dynamic plans). A
    ``coordinator`` master makes no images: its Collectors lose their links to what they collect, so ComfyUI
    neither checks nor runs what only feeds them (the master needs no model for it); the workers run unit 0.
    """
    marked = dict(prompt)
    for node_id in collectors:
        node = copy.deepcopy(prompt[node_id])
        node.setdefault("inputs", {})[JOB_INPUT] = job_id
        if coordinator:
            for kind in media.NAMES:
                node["inputs"].pop(kind, None)
        marked[node_id] = node
    if coordinator:
        return marked
    if batch is not None:
        for node_id, name in _batch_sources(prompt, collectors):
            node = copy.deepcopy(marked[node_id])
            node["inputs"][name] = batch
            marked[node_id] = node
    return marked


def _batch_sources(prompt: Prompt, collectors: Iterable[str]) -> set[tuple[str, str]]:
    sources = set()
    for collector in collectors:
        source = batch_source(prompt, collector)
        if source is None:
            raise WorkflowError(f"Multi-GPU Collector {collector}: no single literal batch_size above it, "
                                "so its units cannot be resized; use the static scheduling mode")
        sources.add(source)
    return sources


def build_worker_prompt(prompt: Prompt, collectors: list[str], seed_offset: int, batch: int | None = None,
                        values: Mapping[str, Any] | None = None) -> Prompt:
    """The copy a worker runs for one unit: pruned, seeds offset, Value nodes made the unit's ``values``, batch
    resized, core output nodes only."""
    keep = upstream(prompt, collectors) | set(collectors)
    tiled = sorted(n for n in keep if prompt[n].get("class_type") in TILE_CLASSES)
    if tiled:
        raise WorkflowError(f"Multi-GPU Collector {', '.join(collectors)}: tile node(s) {', '.join(tiled)} lie above "
                            "it; a worker runs a plain copy of what a Collector collects, so put the Collector "
                            "before the Tile Split (the tiles then share out the collected batch's frames)")
    seeds = literal_sources(prompt, keep, seed_offset, values)
    resized = _batch_sources(prompt, collectors) if batch is not None else set()
    copy_: Prompt = {}
    for node_id in sorted(keep, key=_node_sort_key):
        node = prompt[node_id]
        if node_id in seeds:
            continue
        if node_id in collectors:
            copy_.update(_worker_output_nodes(node_id, collector_links(prompt, node_id)))
            continue
        new_node = copy.deepcopy(node)
        new_node["inputs"] = {
            name: (seeds[str(value[0])] if is_link(value) and str(value[0]) in seeds
                   else batch if (node_id, name) in resized else value)
            for name, value in node.get("inputs", {}).items()
        }
        copy_[node_id] = new_node
    return copy_


def unit_dependent(prompt: Prompt, collector: str, resized: set[str]) -> set[str]:
    """Nodes between a Distributor or a Value node (or a resized batch node) and ``collector``: what differs per
    unit."""
    ancestors = upstream(prompt, [collector])
    distributors = {n for n in ancestors if prompt[n].get("class_type") in (DISTRIBUTOR_CLASS, VALUE_CLASS)}
    dependent: set[str] = set(resized)
    changed = True
    while changed:
        changed = False
        for node_id in ancestors - distributors - dependent:
            for value in prompt[node_id].get("inputs", {}).values():
                if is_link(value) and (str(value[0]) in distributors or str(value[0]) in dependent):
                    dependent.add(node_id)
                    changed = True
                    break
    return dependent


def build_master_rerun(prompt: Prompt, collector: str, seed_offset: int, prefix: str,
                       batch: int | None = None,
                       values: Mapping[str, Any] | None = None) -> tuple[Prompt, dict[str, list]]:
    """Nodes that run one unit on the master, as a ComfyUI graph expansion.

    Only the nodes that depend on the unit (its seed, its batch size) are copied under
    ``prefix``; everything else is linked to the nodes the master already ran, so ComfyUI's
    cache serves it (a loaded checkpoint is not loaded again). Returns the nodes and, per
    kind the Collector collects, the link to the unit's output.
    """
    resized = {node_id for node_id, _ in _batch_sources(prompt, [collector])} if batch is not None else set()
    dependent = unit_dependent(prompt, collector, resized)
    seeds = literal_sources(prompt, upstream(prompt, [collector]), seed_offset, values)

    def relink(value: Any) -> Any:
        if not is_link(value):
            return value
        source = str(value[0])
        if source in seeds:
            return seeds[source]
        return [prefix + source, value[1]] if source in dependent else list(value)

    nodes: Prompt = {}
    for node_id in dependent:
        node = copy.deepcopy(prompt[node_id])
        node["inputs"] = {name: relink(value) for name, value in node.get("inputs", {}).items()}
        if node_id in resized:
            node["inputs"]["batch_size"] = batch
        nodes[prefix + node_id] = node
    return nodes, {kind: relink(link) for kind, link in collector_links(prompt, collector).items()}


def flatten_for_single(prompt: Prompt, values: Mapping[str, Any] | None = None) -> Prompt:
    """The prompt for one plain ComfyUI: Distributors become their seed, Value nodes their value in ``values``
    (else their default), Collectors pass through.

    Used when a whole prompt runs on one worker (queue mode): there it is not distributed.
    """
    distributors = literal_sources(prompt, [*nodes_of_class(prompt, DISTRIBUTOR_CLASS),
                                            *nodes_of_class(prompt, VALUE_CLASS)], 0, values)
    kinds = list(media.NAMES)  # a link to a Collector's output k is a link to its input of kind k
    collectors = {n: prompt[n].get("inputs", {}) for n in nodes_of_class(prompt, COLLECTOR_CLASS)}

    def resolve(value: Any) -> Any:
        while is_link(value) and str(value[0]) in collectors and 0 <= value[1] < len(kinds):
            value = collectors[str(value[0])].get(kinds[value[1]])
        if is_link(value) and str(value[0]) in distributors:
            return distributors[str(value[0])]
        return copy.deepcopy(value)

    return {
        node_id: {**copy.deepcopy(node), "inputs": {k: resolve(v) for k, v in node.get("inputs", {}).items()}}
        for node_id, node in prompt.items()
        if node_id not in distributors and node_id not in collectors
    }
