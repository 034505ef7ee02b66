"""Every decode of a worker's bytes is checked first: a PNG whose header claims a huge image, audio that unpacks
to hours, files that are not what they say: refused, named, never decoded in full, never a traceback."""

from __future__ import annotations

import functools
import io
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from comfy_distributed.collector import codecs as media_codecs
from comfy_distributed.engine.jobs import Collected, CollectorResult
from comfy_distributed.collector.codecs import (
    PNG_SIGNATURE,
    MediaRefused,
    decode_alone,
    decode_audio,
    decode_kind,
    png_size,
)
from comfy_distributed.collector.nodes import decode_parts
from comfy_distributed.tiles.grid import plan_tiles, worker_tile
from tests.audio_support import flac_like_comfyui


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@functools.lru_cache(maxsize=4)
def png_bomb(width: int = 7000, height: int = 7000, whole: bool = True) -> bytes:
    """A PNG claiming ``width`` x ``height`` RGB pixels; ``whole``: its IDAT really holds them all (zeros, which
    deflate compresses about 1000 times: a 7000x7000 one is some 140 KiB and decodes to gigabytes as float)."""
    packer = zlib.compressobj(9)
    row = bytes(1 + 3 * width)
    rows = height if whole else 1
    data = b"".join(packer.compress(row * min(256, rows - start)) for start in range(0, rows, 256)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def unit(position: int, name: str, batch: int | None = None) -> Collected:
    return Collected(position, position, batch, {}, position, name, None)


def small_peak(call) -> tuple[object, int]:
    """What ``call()`` gave (or raised) and the most memory Python and numpy held meanwhile."""
    tracemalloc.start()
    try:
        try:
            value: object = call()
        except MediaRefused as exc:
            value = exc
        return value, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_the_bomb_is_small_and_claims_7000x7000():
    bomb = png_bomb()
    assert 100 * 1024 < len(bomb) < 200 * 1024 and png_size(bomb) == (7000, 7000)


def test_a_coordinator_only_master_refuses_a_huge_first_unit_and_takes_the_next_as_reference():
    good = png(np.full((24, 32, 3), 9, dtype=np.uint8))
    events: list = []
    result = CollectorResult(outputs=[(unit(1, "GPU 2"), {"images": [good]}), (unit(0, "GPU 1"), {"images": [png_bomb()]}),
                                      (unit(2, "GPU 3"), {"images": [good, good]})], master_units=[], failures=[])
    parts, peak = small_peak(lambda: decode_parts(None, result, "3", lambda e, d: events.append((e, d)), job_id="J",
                                                  batch=1))
    assert peak < 20 * 2**20, f"{peak / 2**20:.0f} MiB held to refuse a bomb"
    assert list(parts) == [1] and parts[1]["images"].shape == (1, 24, 32, 3)
    bomb, batch = (data for _, data in events)
    assert bomb["worker"] == "GPU 1" and bomb["reason"] == "size_mismatch" and bomb["job_id"] == "J"
    assert bomb["message"].startswith("Worker GPU 1: sent a 7000x7000 image, more than the 33,554,432 pixels")
    assert batch["worker"] == "GPU 3" and "sent 2 images for a unit of 1; left out" in batch["message"]


def test_with_the_master_s_reference_a_bomb_is_still_refused_undecoded():
    reference = torch.zeros(1, 24, 32, 3)
    value, peak = small_peak(lambda: decode_kind("images", [png_bomb()], reference, batch=1))
    assert peak < 20 * 2**20 and "(7000, 7000)" in media_codecs.fits("images", reference, value)


@pytest.mark.parametrize("blob, words", [
    (b"GIF89a" + b"\0" * 40, "not a PNG image"),
    (PNG_SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 7, 2, 0, 0, 0)), "header is invalid"),
    (PNG_SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 16, 8, 2, 0, 0, 0)), "header is invalid"),
    (png_bomb(16, 16, whole=False)[:-20], "cannot be decoded"),
])
def test_a_file_that_is_not_a_sound_png_is_refused_by_name_not_a_traceback(blob, words):
    with pytest.raises(MediaRefused, match=words):
        decode_alone("images", [blob])
    assert media_codecs.CODECS["images"].early([blob]) is None  # as files arrive: left to the checks above


def test_images_of_a_unit_must_be_alike_and_within_the_cap():
    small, other = png(np.zeros((8, 8, 3), dtype=np.uint8)), png(np.zeros((8, 16, 3), dtype=np.uint8))
    with pytest.raises(MediaRefused, match="different sizes"):
        decode_alone("images", [small, other])
    assert media_codecs.CODECS["images"].early([small, other]) is None  # never a torch.cat error on the loop
    assert decode_alone("images", [small, small], batch=2).shape == (2, 8, 8, 3)


def test_audio_with_no_clip_to_compare_is_refused_past_the_hard_cap(monkeypatch):
    monkeypatch.setattr(media_codecs, "MAX_AUDIO_VALUES", 8000)  # one second of 8 kHz mono, for a short test
    clip = flac_like_comfyui(torch.zeros(1, 8000 * 5), 8000)
    with pytest.raises(MediaRefused, match=r"audio longer than 8,000 samples per channel \(1 s at 8000 Hz\)"):
        decode_alone("audio", [clip])
    assert decode_alone("audio", [flac_like_comfyui(torch.zeros(1, 4000), 8000)])["waveform"].shape == (1, 1, 4000)


def test_coordinator_only_audio_that_is_too_long_is_left_out_not_decoded(monkeypatch):
    monkeypatch.setattr(media_codecs, "MAX_AUDIO_VALUES", 8000)
    events: list = []
    result = CollectorResult(outputs=[(unit(0, "GPU 1"), {"audio": [flac_like_comfyui(torch.zeros(1, 40000), 8000)]}),
                                      (unit(1, "GPU 2"), {"audio": [flac_like_comfyui(torch.zeros(1, 800), 8000)]})],
                             master_units=[], failures=[])
    parts = decode_parts(None, result, "3", lambda e, d: events.append((e, d)))
    assert list(parts) == [1] and "GPU 1: sent audio longer than" in events[0][1]["message"]


@pytest.mark.parametrize("blob, reference, words", [
    (b"not audio at all", {"waveform": torch.zeros(1, 1, 800), "sample_rate": 8000}, "cannot be decoded"),
    (flac_like_comfyui(torch.zeros(2, 800), 8000), {"waveform": torch.zeros(1, 1, 800), "sample_rate": 8000},
     "audio of 2 channel"),
])
def test_audio_that_does_not_decode_or_has_other_channels_is_refused(blob, reference, words):
    with pytest.raises(MediaRefused, match=words):
        decode_kind("audio", [blob], reference)


def test_a_latent_that_is_not_one_is_refused():
    with pytest.raises(MediaRefused, match="latent file that cannot be read"):
        decode_alone("latent", [b"\x08\0\0\0\0\0\0\0{garbage"])


def test_a_worker_tile_is_checked_from_its_headers_before_it_is_decoded():
    grid = plan_tiles(200, 136, 64, 64, 16)
    width, height = grid.crop_size
    good = png(np.zeros((height, width, 3), dtype=np.uint8))
    twice = png(np.zeros((2 * height, 2 * width, 3), dtype=np.uint8))
    assert worker_tile(grid, 1, [good], None, None).shape == (1, height, width, 3)
    assert worker_tile(grid, 1, [twice], None, None).shape == (1, 2 * height, 2 * width, 3)  # an upscale inside
    refused, peak = small_peak(lambda: worker_tile(grid, 1, [png_bomb()], None, None))
    assert peak < 20 * 2**20 and isinstance(refused, MediaRefused)
    assert "7000x7000" in str(refused) and refused.reason == "size_mismatch"
    for blobs, reference, words in (([good, good], None, "2 images for a unit of 1"),
                                    ([twice], torch.zeros(1, height, width, 3), "the job's tiles are 1 frame(s) of"),
                                    ([png(np.zeros((height, width + 8, 3), dtype=np.uint8))], None, "crop at one scale")):
        with pytest.raises(MediaRefused, match=words.replace("(", r"\(").replace(")", r"\)")):
            worker_tile(grid, 1, blobs, None, reference)


def test_decode_audio_with_the_master_s_length_still_stops_early():
    clip = decode_audio(flac_like_comfyui(torch.zeros(1, 8000 * 60), 8000), max_samples=800)
    assert clip["waveform"].shape[-1] < 8000 * 5


def _png_of(height: int, width: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((height, width, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_only_small_files_of_few_pixels_are_decoded_on_the_server_loop():
    from comfy_distributed.collector.orchestrator import INLINE_DECODE_PIXELS, decoded_inline

    assert decoded_inline([_png_of(24, 32), _png_of(24, 32)])
    big = _png_of(512, 512)  # one colour: a small file, but many pixels
    assert len(big) < 64 * 1024 and 512 * 512 > INLINE_DECODE_PIXELS and not decoded_inline([big])
    assert not decoded_inline([b"not a png"]), "what is not a PNG is left to the thread (and the checks there)"
    noisy = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(noisy, "PNG")
    assert len(noisy.getvalue()) > 64 * 1024 and not decoded_inline([noisy.getvalue()]), "many bytes: a thread"
