"""Worker results (images, latents, audio) as ComfyUI values, decoded as its loaders do: one codec per kind.

PNG bytes travel as the worker wrote them; decoding runs on a worker thread as each unit's files
arrive (:meth:`ImageCodec.early`, so the Collector only joins) or on the Collector's thread, never
on the server's event loop, because decoding a large batch takes a while. A worker's file is
measured before it is decoded: an image whose header says it is not the master's size (or, before
the master's size is known, larger than :data:`EARLY_PIXELS`, or one of more files than the unit's
batch), or audio longer than the master's, is not decoded in full (a small file can unpack to gigabytes).
"""

from __future__ import annotations

import io
import struct
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image, ImageOps


def decode_png(data: bytes) -> torch.Tensor:
    """One image as a [1, H, W, 3] float tensor in 0..1 (8-bit values / 255, like LoadImage)."""
    with Image.open(io.BytesIO(data)) as image:
        image = ImageOps.exif_transpose(image) or image
        if image.mode == "I":
            image = image.point(lambda value: value * (1 / 255))
        array = np.array(image.convert("RGB")).astype(np.float32) / 255.0
    return torch.from_numpy(array)[None,]


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def frame_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a PNG's IHDR header, without decoding anything; None if not a PNG."""
    if len(data) < 24 or data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return height, width


def _unlike_reference(blobs: list[bytes], reference: torch.Tensor) -> torch.Tensor | None:
    """A stand-in of the size a PNG's header claims, when that is not the master's frame.

    It holds no pixels (one zero, expanded), so ``fits`` refuses it by its shape and a
    30000 x 30000 PNG is never decoded. Either orientation passes: EXIF may turn the image.
    """
    wanted = {tuple(reference.shape[1:3]), tuple(reference.shape[2:0:-1])}
    for blob in blobs:
        size = frame_size(blob)
        if size is not None and size not in wanted:
            nothing = torch.zeros((1, 1, 1, 1), device=reference.device, dtype=reference.dtype)
            return nothing.expand(len(blobs), size[0], size[1], reference.shape[3])
    return None


EARLY_PIXELS = 4096 * 4096
"""Largest frame decoded as it arrives, before the master's own frame says what size is right."""


def decode_batch(blobs: list[bytes]) -> torch.Tensor:
    return torch.cat([decode_png(blob) for blob in blobs], dim=0)


def same_frame(master: torch.Tensor, other: torch.Tensor) -> bool:
    """Whether two IMAGE batches can be concatenated (height, width, channels)."""
    return tuple(master.shape[1:]) == tuple(other.shape[1:])


def quantize_like_png(images: torch.Tensor) -> torch.Tensor:
    """What a batch becomes after a trip through an 8-bit PNG (Save/Preview Image, then LoadImage).

    Units re-run on the master are passed through this so that they equal the same units
    run on a worker, whose images travel as PNG files.
    """
    return (255.0 * images).clamp(0, 255).to(torch.uint8).to(images.dtype) / 255.0


def decode_latent(data: bytes) -> torch.Tensor:
    """A ``.latent`` file (SaveLatent's safetensors) to its samples, as ComfyUI's LoadLatent reads it."""
    from safetensors.torch import load

    tensors = load(data)
    samples = tensors["latent_tensor"].float()
    if "latent_format_version_0" not in tensors:
        samples = samples * (1.0 / 0.18215)  # files from before the format version, as LoadLatent does
    return samples


def decode_audio(data: bytes, max_samples: int | None = None) -> dict:
    """An audio file to ComfyUI's AUDIO ({"waveform": [1, channels, samples], "sample_rate"}), read as
    ComfyUI's LoadAudio reads files (PyAV, integer samples scaled by 2^15 or 2^31).

    Decoding stops once more than ``max_samples`` per channel came out: the clip is then
    longer than wanted, which is all the caller needs to know."""
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        rate, channels = stream.codec_context.sample_rate, stream.channels
        frames, samples = [], 0
        for frame in container.decode(streams=stream.index):
            buffer = torch.from_numpy(frame.to_ndarray())
            if buffer.shape[0] != channels:  # packed samples
                buffer = buffer.view(-1, channels).t()
            frames.append(buffer)
            samples += buffer.shape[1]
            if max_samples is not None and samples > max_samples:
                break
    waveform = torch.cat(frames, dim=1)
    if waveform.dtype == torch.int16:
        waveform = waveform.float() / (2**15)
    elif waveform.dtype == torch.int32:
        waveform = waveform.float() / (2**31)
    return {"waveform": waveform.float()[None], "sample_rate": rate}


class Codec(Protocol):
    """How one media kind's worker files become the value the master's Collector holds, and join it."""

    def decode(self, blobs: list[bytes], reference: Any) -> Any:
        """The worker's files as one value, on the device and in the dtype of the master's ``reference``."""

    def fits(self, reference: Any, value: Any) -> str | None:
        """Why ``value`` cannot join ``reference`` (None when it can)."""

    def join(self, values: list[Any]) -> Any:
        """One value from the values of every position, in order."""

    def early(self, blobs: list[bytes]) -> Any | None:
        """The decoded value, made as the files arrive (None: decode later, against the master's value)."""

    def adopt(self, value: Any, reference: Any) -> Any:
        """An ``early`` value made like ``reference`` (device, type), as ``decode`` would have made it."""


class ImageCodec:
    def decode(self, blobs: list[bytes], reference: torch.Tensor) -> torch.Tensor:
        unlike = _unlike_reference(blobs, reference)
        if unlike is not None:
            return unlike
        return decode_batch(blobs).to(device=reference.device, dtype=reference.dtype)

    def fits(self, reference: torch.Tensor, value: torch.Tensor) -> str | None:
        if same_frame(reference, value):
            return None
        return f"images are {tuple(value.shape[1:3])} (height, width), the master's {tuple(reference.shape[1:3])}"

    def join(self, values: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(values, dim=0)

    def early(self, blobs: list[bytes]) -> torch.Tensor | None:
        sizes = [frame_size(blob) for blob in blobs]
        if not blobs or any(size is None or size[0] * size[1] > EARLY_PIXELS for size in sizes):
            return None
        return decode_batch(blobs)

    def adopt(self, value: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        return value.to(device=reference.device, dtype=reference.dtype) if same_frame(reference, value) else value


class LatentCodec:
    def decode(self, blobs: list[bytes], reference: dict[str, Any]) -> dict[str, Any]:
        samples = torch.cat([decode_latent(blob) for blob in blobs], dim=0)
        return {"samples": samples.to(device=reference["samples"].device, dtype=reference["samples"].dtype)}

    def fits(self, reference: dict[str, Any], value: dict[str, Any]) -> str | None:
        ours, theirs = tuple(reference["samples"].shape[1:]), tuple(value["samples"].shape[1:])
        return None if ours == theirs else f"latents are {theirs}, the master's {ours}"

    def join(self, values: list[dict[str, Any]]) -> dict[str, Any]:
        return {"samples": torch.cat([v["samples"] for v in values], dim=0)}

    def early(self, blobs: list[bytes]) -> None:
        return None  # small, and decoded against the master's latent

    def adopt(self, value: Any, reference: Any) -> Any:
        return value


class AudioCodec:
    def decode(self, blobs: list[bytes], reference: dict[str, Any]) -> dict[str, Any]:
        length = reference["waveform"].shape[-1]  # no clip of the master's length needs more decoding
        audio = [decode_audio(blob, max_samples=length) for blob in blobs]
        wanted = (tuple(reference["waveform"].shape[1:]), reference["sample_rate"])
        odd = next((a for a in audio if (tuple(a["waveform"].shape[1:]), a["sample_rate"]) != wanted), None)
        if odd is not None:
            return odd  # refused by fits (and clips of other lengths could not be joined)
        return self.join(audio)

    def fits(self, reference: dict[str, Any], value: dict[str, Any]) -> str | None:
        ours, theirs = reference["waveform"], value["waveform"]
        if reference["sample_rate"] == value["sample_rate"] and tuple(ours.shape[1:]) == tuple(theirs.shape[1:]):
            return None
        return (f"audio is {tuple(theirs.shape[1:])} at {value['sample_rate']} Hz, the master's "
                f"{tuple(ours.shape[1:])} at {reference['sample_rate']} Hz")

    def join(self, values: list[dict[str, Any]]) -> dict[str, Any]:
        return {"waveform": torch.cat([v["waveform"] for v in values], dim=0), "sample_rate": values[0]["sample_rate"]}

    def early(self, blobs: list[bytes]) -> None:
        return None  # its length is bounded by the master's clip, known only then

    def adopt(self, value: Any, reference: Any) -> Any:
        return value


CODECS: dict[str, Codec] = {"images": ImageCodec(), "latent": LatentCodec(), "audio": AudioCodec()}
"""The codec of each kind of :data:`.media.KINDS`."""


def decode_alone(kind: str, blobs: list[bytes]) -> Any:
    """A unit's files of ``kind`` decoded with nothing of the master's to compare with (float32, on the CPU)."""
    if kind == "images":
        return decode_batch(blobs)
    if kind == "latent":
        return CODECS[kind].decode(blobs, {"samples": torch.zeros(1)})
    return CODECS[kind].join([decode_audio(blob) for blob in blobs])


def decode_kind(kind: str, blobs: list[bytes], reference: Any) -> Any:
    return CODECS[kind].decode(blobs, reference)


def fits(kind: str, reference: Any, value: Any) -> str | None:
    return CODECS[kind].fits(reference, value)


def join_kind(kind: str, values: list[Any]) -> Any:
    return CODECS[kind].join(values)