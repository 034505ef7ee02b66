"""Multi-GPU Clips: the Collector's batch cut into one clip per participant, its audio paired, and its refusals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from comfy_distributed.collector.clip_nodes import CLIPS_CLASS, MultiGPUClips, clip_length
from comfy_distributed.collector.codecs import join_kind
from comfy_distributed.comfy.node_catalog import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from comfy_distributed.graph.workflow import JOB_INPUT, mark_master_prompt

ROOT = Path(__file__).resolve().parents[2]


def video_workflow(batch: object = 8, between: bool = False) -> dict:
    """Frames -> Collector -> (an ImageInvert, with ``between``) -> Clips (node 5) -> Save Animated WEBP."""
    prompt = {
        "1": {"class_type": "MultiGPUSeedDistributor", "inputs": {"seed": 7}},
        "2": {"class_type": "DistributedTestImage", "inputs": {"seed": ["1", 0], "batch_size": batch, "width": 8,
                                                               "height": 6, "delay": 0.0}},
        "3": {"class_type": "MultiGPUCollector", "inputs": {"images": ["2", 0]}},
        "5": {"class_type": CLIPS_CLASS, "inputs": {"images": ["3", 0], "frames_per_clip": 0}},
        "6": {"class_type": "SaveAnimatedWEBP", "inputs": {"images": ["5", 0], "filename_prefix": "clip", "fps": 8.0,
                                                           "lossless": True, "quality": 80, "method": "default"}},
    }
    if between:
        prompt["4"] = {"class_type": "ImageInvert", "inputs": {"image": ["3", 0]}}
        prompt["5"]["inputs"]["images"] = ["4", 0]
    return prompt


def frames(count: int) -> torch.Tensor:
    """``count`` frames, frame i filled with i / 255 so that a frame shows where it came from."""
    return torch.arange(count, dtype=torch.float32).div(255).view(count, 1, 1, 1).expand(count, 6, 8, 3).clone()


def split(images: torch.Tensor, prompt: dict | None = None, frames_per_clip: int = 0, audio: dict | None = None):
    return MultiGPUClips().split(images, frames_per_clip, audio, unique_id="5",
                                 prompt=video_workflow() if prompt is None else prompt)


def test_the_node_is_listed_and_outputs_lists():
    assert NODE_CLASS_MAPPINGS[CLIPS_CLASS] is MultiGPUClips
    assert NODE_DISPLAY_NAME_MAPPINGS[CLIPS_CLASS] == "Multi-GPU Clips"
    assert MultiGPUClips.CATEGORY == "multigpu" and not getattr(MultiGPUClips, "DEPRECATED", False)
    assert MultiGPUClips.RETURN_TYPES == ("IMAGE", "AUDIO") and MultiGPUClips.OUTPUT_IS_LIST == (True, True)
    inputs = MultiGPUClips.INPUT_TYPES()
    assert inputs["required"]["frames_per_clip"][1]["default"] == 0
    assert inputs["optional"]["audio"][0] == "AUDIO"
    assert inputs["hidden"] == {"unique_id": "UNIQUE_ID", "prompt": "PROMPT"}


def test_a_clip_is_the_batch_size_above_the_collector_in_the_collectors_order():
    images = frames(24)  # master, worker 1, worker 2: 8 frames each
    clips, audio = split(images)
    assert [clip.shape[0] for clip in clips] == [8, 8, 8]
    for index, clip in enumerate(clips):
        assert torch.equal(clip, images[8 * index:8 * (index + 1)])
    assert audio == [None, None, None]  # no audio in: Create Video's optional audio gets nothing per clip


def test_the_collector_is_found_through_nodes_between_it_and_the_clips():
    clips, _ = split(frames(16), video_workflow(batch=4, between=True))
    assert len(clips) == 4


def test_a_frames_per_clip_is_used_as_it_is():
    clips, _ = split(frames(12), prompt={}, frames_per_clip=3)  # the prompt is not even read
    assert [int(round(float(clip[0, 0, 0, 0]) * 255)) for clip in clips] == [0, 3, 6, 9]


def test_alone_the_collector_passes_one_clip():
    clips, audio = split(frames(8))
    assert len(clips) == 1 and len(audio) == 1


def test_each_clip_keeps_the_audio_collected_with_it():
    rate = 16000
    master = {"waveform": torch.full((1, 2, 400), 0.25), "sample_rate": rate}
    worker = {"waveform": torch.full((1, 2, 400), -0.5), "sample_rate": rate}
    collected = join_kind("audio", [master, worker])  # what the Collector's audio output holds
    clips, audio = split(frames(16), audio=collected)
    assert len(clips) == len(audio) == 2
    for got, want in zip(audio, (master, worker)):
        assert got["sample_rate"] == rate and torch.equal(got["waveform"], want["waveform"])


def test_a_total_that_is_not_whole_clips_is_refused_with_the_numbers():
    with pytest.raises(RuntimeError, match=r"Multi-GPU Clips 5: 12 frames are not a whole number of clips of 8"):
        split(frames(12))
    with pytest.raises(RuntimeError, match=r"Multi-GPU Clips 5: 10 frames .* clips of 4 frames"):
        split(frames(10), frames_per_clip=4)


@pytest.mark.parametrize("prompt, why", [
    (video_workflow(batch=["9", 0]), "no single literal batch size"),
    ({"5": {"class_type": CLIPS_CLASS, "inputs": {"images": ["2", 0]}},
      "2": {"class_type": "LoadImage", "inputs": {"image": "a.png"}}}, "no Multi-GPU Collector above"),
    ({}, "its images input is not in the prompt"),
], ids=["batch from a link", "no Collector", "not in the prompt"])
def test_without_a_single_literal_batch_size_frames_per_clip_is_asked_for(prompt, why):
    with pytest.raises(RuntimeError, match=f"Multi-GPU Clips 5: {why}.*set frames_per_clip"):
        split(frames(16), prompt)


def test_two_collectors_of_different_batch_sizes_are_refused_naming_both():
    prompt = video_workflow()
    prompt["7"] = {"class_type": "DistributedTestImage", "inputs": {"seed": 1, "batch_size": 4, "width": 8,
                                                                    "height": 6, "delay": 0.0}}
    prompt["8"] = {"class_type": "MultiGPUCollector", "inputs": {"images": ["7", 0]}}
    prompt["4"] = {"class_type": "ImageBatch", "inputs": {"image1": ["3", 0], "image2": ["8", 0]}}
    prompt["5"]["inputs"]["images"] = ["4", 0]
    with pytest.raises(RuntimeError, match=r"Collector 3: 8, Collector 8: 4"):
        split(frames(24), prompt)


def test_a_video_latents_batch_size_counts_videos_so_frames_per_clip_is_asked_for():
    prompt = video_workflow()
    prompt["2"] = {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 848, "height": 480, "length": 25,
                                                                       "batch_size": 1}}
    with pytest.raises(RuntimeError, match=r"node\(s\) 2 counts videos.*frames of one video"):
        split(frames(50), prompt)
    assert len(split(frames(50), prompt, frames_per_clip=25)[0]) == 2


def test_in_weighted_and_dynamic_jobs_a_clip_is_one_unit():
    """The master's prompt carries its unit's batch size: each unit is a run of its own, cut as its own clip."""
    marked = mark_master_prompt(video_workflow(), ["3"], "job", batch=2)
    assert clip_length(marked, "5") == 2
    assert clip_length(mark_master_prompt(video_workflow(), ["3"], "job"), "5") == 8  # static: untouched


def test_a_coordinator_only_masters_prompt_asks_for_frames_per_clip():
    """Such a master's Collector has its job but no links: what fed it, the batch size too, is not in the prompt."""
    prompt = video_workflow()
    prompt["3"]["inputs"] = {JOB_INPUT: "job"}
    with pytest.raises(RuntimeError, match=r"Multi-GPU Clips 5: Collector 3 .* only coordinates.*set frames_per_clip"):
        split(frames(16), prompt)
    assert len(split(frames(16), prompt, frames_per_clip=8)[0]) == 2


@pytest.mark.parametrize("audio, why", [
    ({"waveform": torch.zeros(1, 2, 100), "sample_rate": 8000}, r"has 1 waveform\(s\) for 2 clip\(s\)"),
    ({"waveform": torch.zeros(4, 2, 100), "sample_rate": 8000}, r"has 4 waveform\(s\) for 2 clip\(s\)"),
    ({"waveform": torch.zeros(2, 100), "sample_rate": 8000}, r"got waveform shape \(2, 100\)"),
    ({"waveform": torch.zeros(2, 1, 100)}, r"must be ComfyUI's AUDIO"),
], ids=["one for two clips", "two per clip", "no batch axis", "no sample rate"])
def test_audio_that_is_not_one_waveform_per_clip_is_refused(audio, why):
    with pytest.raises(RuntimeError, match=f"Multi-GPU Clips 5: .*{why}"):
        split(frames(16), audio=audio)


def test_no_frames_is_refused():
    with pytest.raises(RuntimeError, match="Multi-GPU Clips 5: no frames"):
        split(frames(0), frames_per_clip=4)


def test_the_module_imports_and_plans_clips_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "from comfy_distributed.collector.clip_nodes import clip_length\n"
            f"print(clip_length({video_workflow()!r}, '5'))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "8"
