"""Tile Split / Tile Merge pairs in an API-format prompt: find them, check them, build each tile's graph.

Whatever lies between a Split and its Merge is the *per-tile pipeline*. A worker runs it for one tile
as a plain prompt: the Split becomes a core ``LoadImage`` of the tile's crop (uploaded to the
worker's temp folder), the Merge a core ``PreviewImage`` under the Merge's id, Distributors their
literal seed (every tile gets the same seed: tiles are parts of one image); nodes that only fed the
Split are left out. The master runs its own tiles as a graph expansion in which only the nodes that
depend on the Split are copied, so a loaded model is not loaded again.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from .errors import WorkflowError
from .workflow import (  # the tile class names are re-exported for tile_nodes
    COLLECTOR_CLASS,
    DISTRIBUTOR_CLASS,
    TILE_MERGE_CLASS,
    TILE_SPLIT_CLASS,
    Prompt,
    _node_sort_key,
    distributor_seed,
    is_link,
    nodes_of_class,
    upstream,
)

TILE_INPUT = "tile"
"""The Merge's input that receives the processed tile."""
TEMP_SUFFIX = " [temp]"
"""How LoadImage names a file of ComfyUI's temp folder (where the crops are uploaded: emptied at start-up)."""


@dataclass(frozen=True, slots=True)
class TilePair:
    split: str
    merge: str
    pipeline: frozenset[str]
    """The nodes that depend on the Split's tile and feed the Merge (the Split and Merge excluded)."""


def _downstream(prompt: Prompt, start: str) -> set[str]:
    """Every node that depends on ``start`` through links."""
    found: set[str] = set()
    changed = True
    while changed:
        changed = False
        for node_id, node in prompt.items():
            if node_id in found or node_id == start:
                continue
            if any(is_link(v) and (str(v[0]) == start or str(v[0]) in found) for v in node.get("inputs", {}).values()):
                found.add(node_id)
                changed = True
    return found


def tile_link(prompt: Prompt, merge: str) -> list:
    value = prompt[merge].get("inputs", {}).get(TILE_INPUT)
    if not is_link(value):
        raise WorkflowError(f"Multi-GPU Tile Merge {merge}: connect the processed tile to its '{TILE_INPUT}' input")
    return list(value)


def tile_pairs(prompt: Prompt) -> list[TilePair]:
    """Every Split with its Merge, in the Merges' node order; WorkflowError naming the nodes of a pair that is
    incomplete, nested, or holds a Collector."""
    splits = set(nodes_of_class(prompt, TILE_SPLIT_CLASS))
    merges = sorted(nodes_of_class(prompt, TILE_MERGE_CLASS), key=_node_sort_key)
    above = {merge: upstream(prompt, [str(tile_link(prompt, merge)[0])]) | {str(tile_link(prompt, merge)[0])}
             for merge in merges}
    found: dict[str, TilePair] = {}
    # a Merge above another is paired first: the Splits it closes are not the other's
    for merge in sorted(merges, key=lambda m: (len(set(merges) & above[m]), _node_sort_key(m))):
        closed = {found[m].split for m in merges if m != merge and m in above[merge] and m in found}
        open_splits = (splits & above[merge]) - closed
        # the nearest: a Split feeding another Split's image is that one's source, not this Merge's Split
        candidates = sorted((s for s in open_splits if not any(s in upstream(prompt, [o]) for o in open_splits)),
                            key=_node_sort_key)
        if not candidates:
            raise WorkflowError(f"Multi-GPU Tile Merge {merge}: no Multi-GPU Tile Split above its '{TILE_INPUT}' "
                                "input; put a Tile Split where the per-tile pipeline begins")
        if len(candidates) > 1:
            raise WorkflowError(f"Multi-GPU Tile Merge {merge}: more than one Tile Split above it "
                                f"({', '.join(candidates)}); each Merge closes exactly one Split")
        split = candidates[0]
        pipeline = _downstream(prompt, split) & above[merge]
        nested = sorted((set(merges) | splits) & pipeline, key=_node_sort_key)
        if nested:
            raise WorkflowError(f"Multi-GPU Tile Split {split} / Merge {merge}: node(s) {', '.join(nested)} of "
                                "another tile pair lie between them; tile pairs cannot be nested")
        collectors = sorted(n for n in pipeline if prompt[n].get("class_type") == COLLECTOR_CLASS)
        if collectors:
            raise WorkflowError(f"Multi-GPU Tile Split {split} / Merge {merge}: Collector {', '.join(collectors)} "
                                "lies between them; a tile's pipeline makes one tile, not a batch to share out")
        for node_id in sorted(pipeline | {merge}, key=_node_sort_key):
            if any(is_link(v) and str(v[0]) == split and v[1] != 0 for v in prompt[node_id].get("inputs", {}).values()):
                raise WorkflowError(f"Multi-GPU Tile Split {split}: node {node_id} takes an output other than "
                                    "its tile; only the tile output may feed the per-tile pipeline")
        found[merge] = TilePair(split, merge, frozenset(pipeline))
    pairs = [found[merge] for merge in merges]
    paired = [p.split for p in pairs]
    for split in sorted(splits, key=_node_sort_key):
        if paired.count(split) > 1:
            merges_of = [p.merge for p in pairs if p.split == split]
            raise WorkflowError(f"Multi-GPU Tile Split {split}: closed by more than one Tile Merge "
                                f"({', '.join(merges_of)}); give each Merge its own Split")
        if split not in paired:
            raise WorkflowError(f"Multi-GPU Tile Split {split}: no Multi-GPU Tile Merge below it; its tiles "
                                f"would never be put back together (connect the end of the per-tile pipeline "
                                f"to a Tile Merge's '{TILE_INPUT}' input)")
    return pairs


def _pipeline_seeds(prompt: Prompt, nodes: set[str]) -> dict[str, int]:
    return {node_id: distributor_seed(prompt, node_id) for node_id in nodes
            if prompt[node_id].get("class_type") == DISTRIBUTOR_CLASS}


def build_tile_prompt(prompt: Prompt, pair: TilePair, image_name: str) -> Prompt:
    """The plain prompt a worker runs for one tile, whose crop it holds as ``image_name`` in its temp folder."""
    source = tile_link(prompt, pair.merge)
    keep = _upstream_until(prompt, str(source[0]), pair.split) | {str(source[0])}
    seeds = _pipeline_seeds(prompt, keep)
    result: Prompt = {}
    for node_id in sorted(keep, key=_node_sort_key):
        if node_id in seeds:
            continue
        if node_id == pair.split:
            result[node_id] = {"class_type": "LoadImage", "inputs": {"image": image_name + TEMP_SUFFIX},
                               "_meta": {"title": f"Multi-GPU Tile Split {pair.split} (this worker's tile)"}}
            continue
        node = copy.deepcopy(prompt[node_id])
        node["inputs"] = {name: seeds[str(value[0])] if is_link(value) and str(value[0]) in seeds else value
                          for name, value in node.get("inputs", {}).items()}
        result[node_id] = node
    result[pair.merge] = {"class_type": "PreviewImage", "inputs": {"images": source},
                          "_meta": {"title": f"Multi-GPU Tile Merge {pair.merge} (this worker's tile)"}}
    return result


def _upstream_until(prompt: Prompt, start: str, stop: str) -> set[str]:
    """``upstream`` of ``start`` that does not go past ``stop`` (included itself, its inputs not)."""
    seen: set[str] = set()
    stack = [start]
    while stack:
        node_id = stack.pop()
        if node_id == stop:
            continue
        for value in prompt.get(node_id, {}).get("inputs", {}).values():
            if is_link(value) and str(value[0]) in prompt and str(value[0]) not in seen:
                seen.add(str(value[0]))
                stack.append(str(value[0]))
    return seen


def build_master_tile(prompt: Prompt, pair: TilePair, prefix: str, source: list) -> tuple[Prompt, list]:
    """Nodes that run one tile on the master, as a graph expansion: the pipeline's nodes under ``prefix``,
    the Split's tile taken from ``source`` (a link), everything else linked to the nodes the master ran.
    Returns the nodes and the link to the processed tile."""
    seeds = _pipeline_seeds(prompt, set(upstream(prompt, pair.pipeline)))

    def relink(value: Any) -> Any:
        if not is_link(value):
            return value
        node_id = str(value[0])
        if node_id == pair.split:  # its tile output (tile_pairs refuses the others)
            return list(source)
        if node_id in seeds:
            return seeds[node_id]
        return [prefix + node_id, value[1]] if node_id in pair.pipeline else list(value)

    nodes: Prompt = {}
    for node_id in sorted(pair.pipeline, key=_node_sort_key):
        node = copy.deepcopy(prompt[node_id])
        node["inputs"] = {name: relink(value) for name, value in node.get("inputs", {}).items()}
        nodes[prefix + node_id] = node
    return nodes, relink(tile_link(prompt, pair.merge))
