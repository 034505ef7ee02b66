"""Audio travels as the FLAC that ComfyUI's Preview/Save Audio write; decoded as its LoadAudio reads it."""

import numpy as np
import torch

from comfy_distributed.collector.codecs import decode_audio, decode_kind, fits, join_kind
from tests.audio_support import flac_like_comfyui


def test_16_bit_audio_survives_the_trip_exactly():
    samples = np.random.default_rng(1).integers(-20000, 20000, (2, 3000)).astype(np.int16)
    waveform = torch.from_numpy(samples.astype(np.float32) / 2**15)
    clip = decode_audio(flac_like_comfyui(waveform, 22050))
    assert clip["sample_rate"] == 22050
    assert torch.equal(clip["waveform"][0], waveform)


def test_audio_of_all_participants_joins_in_order_and_a_mismatch_is_named():
    one = torch.zeros(1, 1, 800)
    two = torch.full((1, 1, 800), 0.5)
    reference = {"waveform": one, "sample_rate": 8000}
    theirs = decode_kind("audio", [flac_like_comfyui(two[0], 8000)], reference)
    assert fits("audio", reference, theirs) is None
    joined = join_kind("audio", [reference, theirs])
    assert joined["waveform"].shape == (2, 1, 800) and joined["sample_rate"] == 8000
    other_rate = decode_kind("audio", [flac_like_comfyui(two[0], 16000)], reference)
    assert "16000 Hz" in fits("audio", reference, other_rate)
