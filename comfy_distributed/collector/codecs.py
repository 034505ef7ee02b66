"""Worker results (images, latents, audio) as ComfyUI values, decoded as its loaders do: one codec per kind.

PNG bytes travel as the worker wrote them; decoding runs on a worker thread as each unit's files
arrive (:meth:`ImageCodec.early`, so the Collector only joins) or on the Collector's thread, never
on the server's event loop, because decoding a large batch takes a while.

A worker's file is measured before it is decoded, because a small file can unpack to gigabytes: an image
must be a PNG whose header is valid and says the master's size (with nothing of the master's to compare,
at most :data:`MAX_PIXELS`, all of a unit's alike; as it arrives, at most :data:`EARLY_PIXELS`), a unit
may hold no more images than its batch, and audio is decoded no longer than the master's clip (with no clip
to compare, :data:`MAX_AUDIO_VALUES`). A file that fails is :class:`MediaRefused`, never decoded; one whose
header says another size than the master's becomes a value without pixels that :meth:`Codec.fits` refuses.
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image, ImageOps

from ..errors import DistributedError


class MediaRefused(DistributedError):
    """A worker's file refused before it is decoded (or as it fails to decode). The message says what the file
    was, to follow "worker 2 sent ...": "a 7000x7000 image, more than ..."; ``reason`` is the event's reason."""

    def __init__(self, message: str, reason: str = "protocol_error") -> None:
        super().__init__(message)
        self.reason = reason


def decode_png(data: bytes) -> torch.Tensor:
    """One image as a [1, H, W, 3] float tensor in 0..1 (8-bit values / 255, like LoadImage)."""
    with Image.open(io.BytesIO(data)) as image:
        image = ImageOps.exif_transpose(image) or image
        if image.mode == "I":
            image = image.point(lambda value: value * (1 / 255))
        array = np.array(image.convert("RGB")).astype(np.float32) / 255.0
    return torch.from_numpy(array)[None,]


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


BIT_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
"""The bit depths PNG allows per colour type (grey, RGB, palette, grey + alpha, RGBA)."""


def frame_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a PNG's IHDR header, without decoding anything; None if not a PNG."""
    if len(data) < 24 or data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return height, width


def png_size(data: bytes) -> tuple[int, int]:
    """(height, width) of a PNG whose header is valid (signature, IHDR, size, bit depth); MediaRefused else."""
    size = frame_size(data)
    if size is None or len(data) < 29 or data[8:12] != b"\x00\x00\x00\x0d":
        raise MediaRefused("a file that is not a PNG image")
    depth, colour = data[24], data[25]
    if not (0 < size[0] < 1 << 31 and 0 < size[1] < 1 << 31) or depth not in BIT_DEPTHS.get(colour, ()):
        raise MediaRefused(f"a PNG image whose header is invalid ({size[1]}x{size[0]}, colour type {colour}, "
                           f"bit depth {depth})")
    return size


def _pixels_text(size: tuple[int, int]) -> str:
    return f"{size[1]}x{size[0]}"


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

MAX_PIXELS = 8192 * 4096
"""Largest frame decoded with no frame of the master's to compare it with (a coordinator-only master's first
unit, a tile job's tiles before one is in): an 8K UHD frame fits; a header claiming more is refused."""

MAX_BATCH_PIXELS = 1 << 28
"""Most pixels of one unit's images decoded at once (about 3 GiB as float32 RGB), unless the master's own
batch is larger."""


def decode_batch(blobs: list[bytes]) -> torch.Tensor:
    """Unchecked: call it only on what :func:`checked_sizes` passed (or on the master's own files)."""
    return torch.cat([decode_png(blob) for blob in blobs], dim=0)


def checked_sizes(blobs: list[bytes], batch: int | None, limit: int = MAX_PIXELS) -> list[tuple[int, int]]:
    """Each image's (height, width), read from its header, when a unit's images may be decoded with nothing of
    the master's to compare: at most ``batch`` of them, each at most ``limit`` pixels, all alike, and at most
    :data:`MAX_BATCH_PIXELS` in all; MediaRefused otherwise."""
    if batch is not None and len(blobs) > batch:
        raise MediaRefused(f"{len(blobs)} images for a unit of {batch}", "size_mismatch")
    sizes = [png_size(blob) for blob in blobs]
    big = next((size for size in sizes if size[0] * size[1] > limit), None)
    if big is not None:
        raise MediaRefused(f"a {_pixels_text(big)} image, more than the {limit:,} pixels decoded with no image of "
                           "the job's to compare it with", "size_mismatch")
    if len(set(sizes)) > 1:
        raise MediaRefused(f"images of different sizes ({', '.join(sorted({_pixels_text(s) for s in sizes}))})",
                           "size_mismatch")
    _refuse_total(sizes, MAX_BATCH_PIXELS)
    return sizes


def _refuse_total(sizes: list[tuple[int, int]], limit: int) -> None:
    total = sum(height * width for height, width in sizes)
    if total > limit:
        raise MediaRefused(f"{len(sizes)} images of {total:,} pixels in all, more than the {limit:,} decoded at "
                           "once", "size_mismatch")


def decode_images(blobs: list[bytes]) -> torch.Tensor:
    """Checked PNG files decoded; one that fails to (a broken stream) is MediaRefused, never a traceback."""
    try:
        return decode_batch(blobs)
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error, Image.DecompressionBombError) as exc:
        raise MediaRefused(f"an image that cannot be decoded ({str(exc)[:200]})") from None


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
    """A ``.latent`` file (SaveLatent's safetensors) to its samples, as ComfyUI's LoadLatent reads it; a file
    that is not one is MediaRefused (safetensors reads no tensor past the file's own bytes)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        tensors = load(data)
        samples = tensors["latent_tensor"].float()
    except (SafetensorError, KeyError, ValueError, RuntimeError) as exc:
        raise MediaRefused(f"a latent file that cannot be read ({str(exc)[:200]})") from None
    if samples.ndim < 2:
        raise MediaRefused(f"a latent of shape {tuple(samples.shape)}, not a batch")
    if "latent_format_version_0" not in tensors:
        samples = samples * (1.0 / 0.18215)  # files from before the format version, as LoadLatent does
    return samples


MAX_AUDIO_VALUES = 1 << 26
"""Most samples (all channels together: 256 MiB as float32, some 11 minutes of 48 kHz stereo) decoded from one
audio file with no clip of the master's to compare it with; a longer file is refused part way."""

MAX_AUDIO_CHANNELS = 64


def decode_audio(data: bytes, max_samples: int | None = None, channels: int | None = None) -> dict:
    """An audio file to ComfyUI's AUDIO ({"waveform": [1, channels, samples], "sample_rate"}), read as
    ComfyUI's LoadAudio reads files (PyAV, integer samples scaled by 2^15 or 2^31).

    Decoding stops once more than ``max_samples`` per channel came out (the master's clip is that long): the
    clip is then longer than wanted, which is all the caller needs to know. With no ``max_samples``, a clip
    past :data:`MAX_AUDIO_VALUES` is MediaRefused, as is one of other ``channels`` or one PyAV cannot read."""
    import av

    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.audio:
                raise MediaRefused("a file with no audio stream")
            return _decoded_audio(container, container.streams.audio[0], max_samples, channels)
    except (av.error.FFmpegError, OSError, ValueError, RuntimeError) as exc:
        raise MediaRefused(f"audio that cannot be decoded ({str(exc)[:200]})") from None


def _decoded_audio(container: Any, stream: Any, max_samples: int | None, channels: int | None) -> dict:
    rate, count = stream.codec_context.sample_rate, stream.channels
    if channels is not None and count != channels:
        raise MediaRefused(f"audio of {count} channel(s), the job's has {channels}", "size_mismatch")
    if not 0 < count <= MAX_AUDIO_CHANNELS:
        raise MediaRefused(f"audio of {count} channels", "size_mismatch")
    bound = max_samples if max_samples is not None else MAX_AUDIO_VALUES // count
    frames, samples = [], 0
    for frame in container.decode(streams=stream.index):
        buffer = torch.from_numpy(frame.to_ndarray())
        if buffer.shape[0] != count:  # packed samples
            buffer = buffer.view(-1, count).t()
        frames.append(buffer)
        samples += buffer.shape[1]
        if samples > bound:
            if max_samples is None:
                raise MediaRefused(f"audio longer than {bound:,} samples per channel ({bound / max(rate, 1):.0f} s "
                                   f"at {rate} Hz), the most decoded with no clip of the job's to compare it with",
                                   "size_mismatch")
            break
    if not frames:
        raise MediaRefused("audio with no samples")
    waveform = torch.cat(frames, dim=1)
    if waveform.dtype == torch.int16:
        waveform = waveform.float() / (2**15)
    elif waveform.dtype == torch.int32:
        waveform = waveform.float() / (2**31)
    return {"waveform": waveform.float()[None], "sample_rate": rate}


class Codec(Protocol):
    """How one media kind's worker files become the value the master's Collector holds, and join it."""

    def decode(self, blobs: list[bytes], reference: Any, batch: int | None = None) -> Any:
        """The worker's files as one value, on the device and in the dtype of the master's ``reference``; at most
        ``batch`` images (None: not known). MediaRefused for a file that is not decoded."""

    def alone(self, blobs: list[bytes], batch: int | None = None) -> Any:
        """The worker's files with nothing of the master's to compare them with (float32, on the CPU), within the
        caps of such a decode (:data:`MAX_PIXELS`, :data:`MAX_AUDIO_VALUES`); MediaRefused otherwise."""

    def fits(self, reference: Any, value: Any) -> str | None:
        """Why ``value`` cannot join ``reference`` (None when it can)."""

    def join(self, values: list[Any]) -> Any:
        """One value from the values of every position, in order."""

    def early(self, blobs: list[bytes]) -> Any | None:
        """The decoded value, made as the files arrive (None: decode later, against the master's value)."""

    def adopt(self, value: Any, reference: Any) -> Any:
        """An ``early`` value made like ``reference`` (device, type), as ``decode`` would have made it."""


class ImageCodec:
    def decode(self, blobs: list[bytes], reference: torch.Tensor, batch: int | None = None) -> torch.Tensor:
        if batch is not None and len(blobs) > batch:
            raise MediaRefused(f"{len(blobs)} images for a unit of {batch}", "size_mismatch")
        sizes = [png_size(blob) for blob in blobs]
        unlike = _unlike_reference(blobs, reference)
        if unlike is not None:
            return unlike
        _refuse_total(sizes, max(MAX_BATCH_PIXELS, int(reference.shape[0] * reference.shape[1] * reference.shape[2])))
        return decode_images(blobs).to(device=reference.device, dtype=reference.dtype)

    def alone(self, blobs: list[bytes], batch: int | None = None) -> torch.Tensor:
        checked_sizes(blobs, batch)
        return decode_images(blobs)

    def fits(self, reference: torch.Tensor, value: torch.Tensor) -> str | None:
        if same_frame(reference, value):
            return None
        return f"images are {tuple(value.shape[1:3])} (height, width), the master's {tuple(reference.shape[1:3])}"

    def join(self, values: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(values, dim=0)

    def early(self, blobs: list[bytes]) -> torch.Tensor | None:
        """Only what is surely fine (PNG files of one size up to :data:`EARLY_PIXELS`, that decode): the rest is
        left to the Collector's checks, which name what is wrong."""
        try:
            checked_sizes(blobs, None, EARLY_PIXELS)
            return decode_images(blobs) if blobs else None
        except MediaRefused:
            return None

    def adopt(self, value: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        return value.to(device=reference.device, dtype=reference.dtype) if same_frame(reference, value) else value


class LatentCodec:
    def decode(self, blobs: list[bytes], reference: dict[str, Any], batch: int | None = None) -> dict[str, Any]:
        samples = self.alone(blobs)["samples"]
        return {"samples": samples.to(device=reference["samples"].device, dtype=reference["samples"].dtype)}

    def alone(self, blobs: list[bytes], batch: int | None = None) -> dict[str, Any]:
        latents = [decode_latent(blob) for blob in blobs]
        if len({tuple(latent.shape[1:]) for latent in latents}) > 1:
            raise MediaRefused(f"latents of different shapes ({', '.join(str(tuple(x.shape)) for x in latents)})",
                               "size_mismatch")
        return {"samples": torch.cat(latents, dim=0)}

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
    def decode(self, blobs: list[bytes], reference: dict[str, Any], batch: int | None = None) -> dict[str, Any]:
        length, channels = reference["waveform"].shape[-1], reference["waveform"].shape[1]
        # no clip of the master's length needs more decoding
        audio = [decode_audio(blob, max_samples=length, channels=channels) for blob in blobs]
        wanted = (tuple(reference["waveform"].shape[1:]), reference["sample_rate"])
        odd = next((a for a in audio if (tuple(a["waveform"].shape[1:]), a["sample_rate"]) != wanted), None)
        if odd is not None:
            return odd  # refused by fits (and clips of other lengths could not be joined)
        return self.join(audio)

    def alone(self, blobs: list[bytes], batch: int | None = None) -> dict[str, Any]:
        audio = [decode_audio(blob) for blob in blobs]
        shapes = {(tuple(a["waveform"].shape[1:]), a["sample_rate"]) for a in audio}
        if len(shapes) > 1:
            raise MediaRefused("clips of different lengths or rates in one unit", "size_mismatch")
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


def decode_alone(kind: str, blobs: list[bytes], batch: int | None = None) -> Any:
    """A unit's files of ``kind`` decoded with nothing of the master's to compare with (float32, on the CPU),
    within the caps of such a decode; MediaRefused otherwise."""
    return CODECS[kind].alone(blobs, batch)


def decode_kind(kind: str, blobs: list[bytes], reference: Any, batch: int | None = None) -> Any:
    return CODECS[kind].decode(blobs, reference, batch)


def fits(kind: str, reference: Any, value: Any) -> str | None:
    return CODECS[kind].fits(reference, value)


def join_kind(kind: str, values: list[Any]) -> Any:
    return CODECS[kind].join(values)
