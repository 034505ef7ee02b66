"""Multi-GPU Clips: the Collector's frames cut back into one clip per participant, for video workflows.

With a video model every participant makes a clip (a batch of frames). The Collector joins them into one
batch, the master's clip first, then each worker's, so a Save Animated WEBP after it writes one long video.
This node outputs ComfyUI lists instead (``OUTPUT_IS_LIST``): one image batch per clip and the audio that
goes with it, so that the save node downstream runs once per clip.

Where a clip ends is read from the prompt, not from the job: a clip is the literal ``batch_size`` above the
Collector that feeds the node (every participant runs the whole workflow with its own seed: static
scheduling), or ``frames_per_clip`` when it is set. In weighted and dynamic jobs the master's prompt carries
its unit's batch size, so a clip is then one unit (one run). Torch is never needed: slicing is the tensors' own.
"""

from __future__ import annotations

from typing import Any

from ..graph import media
from ..engine.plan import literal_batch_size
from ..graph.workflow import COLLECTOR_CLASS, JOB_INPUT, Prompt, is_link, upstream

CLIPS_CLASS = "MultiGPUClips"
VIDEO_LENGTH_INPUT = "length"
"""The frame count input of core video latents (Hunyuan, LTXV, Mochi, Cosmos, Wan): there ``batch_size`` counts
videos, not frames, so it cannot say where a clip ends."""


class MultiGPUClips:
    """The Collector's batch in, one clip per participant out (lists: the nodes after it run once per clip)."""

    CATEGORY = "multigpu"
    DESCRIPTION = (
        "Multi-GPU Clips: cuts the Multi-GPU Collector's frames back into one clip per GPU (the master's first, "
        "then each worker's), with each clip's audio, so that Save Animated WEBP / PNG or Save Video after it "
        "saves every clip as its own video. A clip is the batch size above the Collector (frames_per_clip 0) "
        "or frames_per_clip frames."
    )
    RETURN_TYPES = ("IMAGE", "AUDIO")
    RETURN_NAMES = ("clips", "audio")
    OUTPUT_IS_LIST = (True, True)
    FUNCTION = "split"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "the Multi-GPU Collector's images"}),
                "frames_per_clip": ("INT", {
                    "default": 0, "min": 0, "max": 1 << 20,
                    "tooltip": "frames in each clip; 0: the batch size above the Collector feeding 'images'"}),
            },
            "optional": {"audio": ("AUDIO", {"tooltip": "the Collector's audio: one waveform per clip"})},
            "hidden": {"unique_id": "UNIQUE_ID", "prompt": "PROMPT"},
        }

    def split(self, images: Any, frames_per_clip: int = 0, audio: dict[str, Any] | None = None,
              unique_id: str | None = None, prompt: Prompt | None = None) -> tuple[list[Any], list[Any]]:
        node = str(unique_id)
        length = frames_per_clip or clip_length(prompt or {}, node)
        count = clip_count(int(images.shape[0]), length, node)
        return cut_frames(images, length, count), cut_audio(audio, count, node)


def clip_length(prompt: Prompt, node: str) -> int:
    """Frames per clip when ``frames_per_clip`` is 0: the one literal batch size of the Collector(s) nearest
    above the node's ``images`` input. RuntimeError when none, or more than one, decides it."""
    link = prompt.get(node, {}).get("inputs", {}).get("images")
    if not is_link(link):
        raise RuntimeError(f"Multi-GPU Clips {node}: its images input is not in the prompt; set frames_per_clip")
    collectors = nearest_collectors(prompt, str(link[0]))
    if not collectors:
        raise RuntimeError(f"Multi-GPU Clips {node}: no Multi-GPU Collector above its images, so nothing says "
                           "where a clip ends; set frames_per_clip")
    refuse_unreadable(prompt, node, collectors)
    sizes = {collector: literal_batch_size(prompt, collector) for collector in collectors}
    found = {size for size in sizes.values() if size is not None}
    if len(found) != 1 or None in sizes.values():
        said = ", ".join(f"Collector {c}: {'no single literal batch_size' if s is None else s}"
                         for c, s in sizes.items())
        raise RuntimeError(f"Multi-GPU Clips {node}: no single literal batch size says where a clip ends ({said}); "
                           "set frames_per_clip")
    length = found.pop()
    if length < 1:
        raise RuntimeError(f"Multi-GPU Clips {node}: batch_size {length} is not a positive number")
    return length


def refuse_unreadable(prompt: Prompt, node: str, collectors: list[str]) -> None:
    """RuntimeError when the Collectors' batch size is in the prompt but does not give the frames of a clip."""
    videos = [n for c in collectors for n in video_latents(prompt, c)]
    if videos:
        raise RuntimeError(
            f"Multi-GPU Clips {node}: the batch_size of node(s) {', '.join(videos)} counts videos, not frames "
            f"(the node has a '{VIDEO_LENGTH_INPUT}'); set frames_per_clip to the frames of one video")
    unlinked = [c for c in collectors if JOB_INPUT in prompt[c].get("inputs", {})
                and not any(is_link(prompt[c]["inputs"].get(kind)) for kind in media.NAMES)]
    if unlinked:  # a coordinator-only master's prompt: the workers make every clip, the master runs nothing above
        raise RuntimeError(
            f"Multi-GPU Clips {node}: Collector {', '.join(unlinked)} collects for a master that only coordinates, "
            "so what feeds it, its batch size included, is not in the master's prompt; set frames_per_clip")


def nearest_collectors(prompt: Prompt, start: str) -> list[str]:
    """The Collectors that feed ``start`` (itself included) with no other Collector in between."""
    found: list[str] = []
    seen, stack = {start}, [start]
    while stack:
        node_id = stack.pop()
        node = prompt.get(node_id)
        if node is None:
            continue
        if node.get("class_type") == COLLECTOR_CLASS:
            found.append(node_id)
            continue
        for value in node.get("inputs", {}).values():
            if is_link(value) and str(value[0]) not in seen:
                seen.add(str(value[0]))
                stack.append(str(value[0]))
    return sorted(found)


def video_latents(prompt: Prompt, collector: str) -> list[str]:
    """Nodes above ``collector`` whose literal ``batch_size`` sits beside a video ``length``."""
    return sorted(node_id for node_id in upstream(prompt, [collector])
                  if VIDEO_LENGTH_INPUT in prompt[node_id].get("inputs", {})
                  and isinstance(prompt[node_id]["inputs"].get("batch_size"), int))


def clip_count(frames: int, length: int, node: str) -> int:
    """How many clips of ``length`` frames ``frames`` make; RuntimeError unless a whole number of them."""
    if length < 1:
        raise RuntimeError(f"Multi-GPU Clips {node}: frames_per_clip {length} is not a positive number")
    if frames == 0:
        raise RuntimeError(f"Multi-GPU Clips {node}: no frames to cut into clips")
    if frames % length:
        raise RuntimeError(
            f"Multi-GPU Clips {node}: {frames} frames are not a whole number of clips of {length} frames; "
            "every participant must make a whole clip (static scheduling, or a unit_size that is the batch "
            "size), and frames_per_clip must divide the Collector's total")
    return frames // length


def cut_frames(images: Any, length: int, count: int) -> list[Any]:
    """``count`` image batches of ``length`` frames, in the Collector's order (views, no copy)."""
    return [images[index * length:(index + 1) * length] for index in range(count)]


def cut_audio(audio: dict[str, Any] | None, count: int, node: str) -> list[dict[str, Any] | None]:
    """Clip ``i``'s audio: waveform ``i`` of the collected audio (the Collector joins one per participant along
    the batch). No audio: None for every clip, which the optional audio input of Create Video takes."""
    if audio is None:
        return [None] * count
    waveform: Any = audio.get("waveform") if isinstance(audio, dict) else None
    shape = tuple(getattr(waveform, "shape", ()))
    if len(shape) != 3 or "sample_rate" not in audio:
        raise RuntimeError(f"Multi-GPU Clips {node}: audio must be ComfyUI's AUDIO (a waveform of shape "
                           f"[batch, channels, samples] and a sample_rate), got waveform shape {shape}")
    if shape[0] != count:
        raise RuntimeError(
            f"Multi-GPU Clips {node}: the audio has {shape[0]} waveform(s) for {count} clip(s); each clip "
            "takes one, so connect the Collector's audio output, collected from participants that each make "
            "one waveform per clip. Audio that every clip shares goes straight to the video node instead")
    return [{**audio, "waveform": waveform[index:index + 1]} for index in range(count)]


NODE_CLASS_MAPPINGS = {CLIPS_CLASS: MultiGPUClips}
NODE_DISPLAY_NAME_MAPPINGS = {CLIPS_CLASS: "Multi-GPU Clips"}
