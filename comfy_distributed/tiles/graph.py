"""Tile Split / Tile Merge pairs in an API-format prompt: find them, check them, build each tile's graph.

Whatever lies between a Split and its Merge is the *per-tile pipeline*. A worker runs it for one tile
as a plain prompt: the Split becomes a core ``LoadImage`` of the tile's crop (uploaded to the
worker's temp folder), the Merge a core ``PreviewImage`` under the Merge's id, Distributors their
literal seed (every tile gets the same seed: tiles are parts of one image); nodes that only fed the
Split are left out. An image from outside the pipeline that has the size of the Split's image (the hint of a
tile ControlNet fed the same upscaled image) is cropped per tile the same way, each tile's crop uploaded next
to the tile's; everything else from outside (models, conditionings, other images) is shared. The master
runs its own tiles as a graph expansion in which only the nodes that depend on the Split are copied, so a
loaded model is not loaded again.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from collections.abc import Iterable
from typing import Any

from ..errors import WorkflowError
from ..graph.workflow import (
    COLLECTOR_CLASS,
    DISTRIBUTOR_CLASS,
    TILE_MERGE_CLASS,
    TILE_SPLIT_CLASS,
    VALUE_CLASS,
    Prompt,
    _node_sort_key,
    literal_sources,
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


def _downstream(prompt: Prompt, start: str | set[str]) -> set[str]:
    """Every node that depends on ``start`` (a node, or any of several) through links."""
    starts = {start} if isinstance(start, str) else set(start)
    found: set[str] = set()
    changed = True
    while changed:
        changed = False
        for node_id, node in prompt.items():
            if node_id in found or node_id in starts:
                continue
            if any(is_link(v) and (str(v[0]) in starts or str(v[0]) in found)
                   for v in node.get("inputs", {}).values()):
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


def _pipeline_seeds(prompt: Prompt, nodes: set[str]) -> dict[str, Any]:
    """Distributors (their seed) and Value nodes (their default) among ``nodes``: literals in a tile's copy,
    since every tile is part of one image."""
    return literal_sources(prompt, nodes)


def _region(prompt: Prompt, pair: TilePair) -> set[str]:
    """The nodes the Merge's tile is made from, the Split and what only feeds the Split left out."""
    source = str(tile_link(prompt, pair.merge)[0])
    return (_upstream_until(prompt, source, pair.split) | {source}) - {pair.split}


def outside_inputs(prompt: Prompt, pair: TilePair) -> list[tuple[str, int]]:
    """The outputs, as (node, output) in node order, of nodes that do not depend on the tile and that are used on
    the way to the Merge (a model, a conditioning, a ControlNet's hint image): the candidates for cropping per
    tile. The Split's tile and Distributors (made literal seeds) are not among them."""
    found: set[tuple[str, int]] = set()
    for node_id in _region(prompt, pair) | {pair.merge}:
        for value in prompt[node_id].get("inputs", {}).values():
            if not is_link(value):
                continue
            source = str(value[0])
            if source in pair.pipeline or source == pair.split or source not in prompt:
                continue
            if prompt[source].get("class_type") in (DISTRIBUTOR_CLASS, VALUE_CLASS):
                continue
            found.add((source, int(value[1])))
    return sorted(found, key=lambda key: (_node_sort_key(key[0]), key[1]))


def hint_node(pair: TilePair, index: int) -> str:
    """The id of the node that gives a tile's crop of cropped image ``index`` (1-based) in a worker's copy."""
    return f"{pair.split}.multigpu.hint.{index}"


def _relinked(prompt: Prompt, pair: TilePair, targets: dict[tuple[str, int], list]) -> Prompt:
    """The prompt with the links from the outputs in ``targets`` to the nodes the tile is made from moved to
    their new source."""
    result = dict(prompt)
    for node_id in _region(prompt, pair) | {pair.merge}:
        node = prompt[node_id]
        inputs = {name: list(targets[(str(value[0]), int(value[1]))])
                  if is_link(value) and (str(value[0]), int(value[1])) in targets else value
                  for name, value in node.get("inputs", {}).items()}
        result[node_id] = {**node, "inputs": inputs}
    return result


def tile_pipeline(prompt: Prompt, pair: TilePair,
                  cropped: Iterable[tuple[str, int]] = ()) -> tuple[frozenset[str], list[tuple[str, int]]]:
    """What runs per tile when the outputs ``cropped`` are cropped per tile: the nodes that depend on the tile or
    on a crop (a ControlNet apply fed a cropped hint joins the pipeline), and those of ``cropped`` that are
    used (not one whose every use is made from another crop), in node order."""
    keys = sorted(set(cropped), key=lambda key: (_node_sort_key(key[0]), key[1]))
    if not keys:
        return pair.pipeline, []
    marks = {key: f"\x00crop.{index}" for index, key in enumerate(keys)}
    relinked = _relinked(prompt, pair, {key: [mark, 0] for key, mark in marks.items()})
    relinked.update({mark: {"class_type": "", "inputs": {}} for mark in marks.values()})
    source = str(tile_link(relinked, pair.merge)[0])
    reach = _upstream_until(relinked, source, pair.split) | {source}
    used = [key for key in keys if marks[key] in reach]
    depends = _downstream(relinked, {pair.split, *(marks[key] for key in used)})
    return frozenset((depends & reach) - set(marks.values())), used


def build_tile_prompt(prompt: Prompt, pair: TilePair, image_name: str,
                      hints: dict[tuple[str, int], str] | None = None) -> Prompt:
    """The plain prompt a worker runs for one tile, whose crop it holds as ``image_name`` in its temp folder.

    ``hints``: outputs outside the pipeline that are cropped per tile (an image of the Split's size, such as a
    tile ControlNet's hint), each with the file name of this tile's crop of it; the pipeline takes them from a
    ``LoadImage`` of that file, and the name ``image_name`` stands for the tile itself."""
    hints = hints or {}
    targets: dict[tuple[str, int], list] = {}
    hint_nodes: Prompt = {}
    for index, (key, name) in enumerate(sorted(hints.items(), key=lambda item: (_node_sort_key(item[0][0]),
                                                                                item[0][1])), start=1):
        if name == image_name:
            targets[key] = [pair.split, 0]
            continue
        targets[key] = [hint_node(pair, index), 0]
        hint_nodes[hint_node(pair, index)] = {
            "class_type": "LoadImage", "inputs": {"image": name + TEMP_SUFFIX},
            "_meta": {"title": f"Multi-GPU Tile Split {pair.split}: this tile's crop of node {key[0]}'s image"}}
    prompt = {**_relinked(prompt, pair, targets), **hint_nodes}
    source = tile_link(prompt, pair.merge)
    keep = _upstream_until(prompt, str(source[0]), pair.split) | {str(source[0])}
    seeds = _pipeline_seeds(prompt, keep - set(hint_nodes))
    result: Prompt = {}
    for node_id in sorted(keep, key=_node_sort_key):
        if node_id in seeds:
            continue
        if node_id in hint_nodes:
            result[node_id] = hint_nodes[node_id]
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
        node = prompt.get(node_id) or {}
        for value in node.get("inputs", {}).values():
            if is_link(value) and str(value[0]) in prompt and str(value[0]) not in seen:
                seen.add(str(value[0]))
                stack.append(str(value[0]))
    return seen


def build_master_tile(prompt: Prompt, pair: TilePair, prefix: str, source: list,
                      hints: dict[tuple[str, int], list] | None = None) -> tuple[Prompt, list]:
    """Nodes that run one tile on the master, as a graph expansion: the pipeline's nodes under ``prefix``,
    the Split's tile taken from ``source`` (a link), the outputs in ``hints`` (images cropped per tile) from
    the links given there, everything else linked to the nodes the master ran. Returns the nodes and the
    link to the processed tile."""
    hints = hints or {}
    pipeline, _ = tile_pipeline(prompt, pair, hints)
    seeds = _pipeline_seeds(prompt, set(upstream(prompt, pipeline)))

    def relink(value: Any) -> Any:
        if not is_link(value):
            return value
        node_id = str(value[0])
        if node_id == pair.split:  # its tile output (tile_pairs refuses the others)
            return list(source)
        if (node_id, int(value[1])) in hints:
            return list(hints[(node_id, int(value[1]))])
        if node_id in seeds:
            return seeds[node_id]
        return [prefix + node_id, value[1]] if node_id in pipeline else list(value)

    nodes: Prompt = {}
    for node_id in sorted(pipeline, key=_node_sort_key):
        node = copy.deepcopy(prompt[node_id])
        node["inputs"] = {name: relink(value) for name, value in node.get("inputs", {}).items()}
        nodes[prefix + node_id] = node
    return nodes, relink(tile_link(prompt, pair.merge))
