"""Test node pack: seeded images after simulated GPU work.

Loaded by real ComfyUI (tier 3) as a custom node folder, and imported by the stand-in
ComfyUI server (tier 2) so that both produce the very same pixels for a seed.
Nothing here imports ComfyUI at module level.

``DISTRIBUTED_TEST_DELAY_SCALE`` (environment, read when a node runs; default 1) multiplies
DistributedTestImage's ``delay`` on this instance: started with 3, an instance stands for a GPU
three times slower (the benchmarks' mixed-speed cluster, ``bench/real_suite.py``). Unset, the
delay is slept as given. The stand-in server scales the delay itself (``execution_delay_scale``)
and calls the node with a delay of 0, so the variable never applies twice.
"""

from __future__ import annotations

import os
import time

import torch

DELAY_SCALE_ENV = "DISTRIBUTED_TEST_DELAY_SCALE"


def seeded_images(seed: int, batch_size: int, width: int, height: int) -> torch.Tensor:
    """A batch of images [B, H, W, 3] in 0..1 that depends only on the arguments.

    Image i of the batch is drawn from its own generator seeded with ``seed * 1000 + i`` so
    that image i is the same whatever the batch size.
    """
    images = []
    for index in range(batch_size):
        generator = torch.Generator().manual_seed((seed * 1000 + index) % (2**63))
        images.append(torch.rand((height, width, 3), generator=generator, dtype=torch.float32))
    return torch.stack(images)


def _interrupted() -> bool:
    try:
        import comfy.model_management as mm  # only inside ComfyUI
    except ImportError:
        return False
    return bool(mm.processing_interrupted())


def delay_scale() -> float:
    """This instance's slowness: ``DISTRIBUTED_TEST_DELAY_SCALE``, 1 when unset."""
    text = os.environ.get(DELAY_SCALE_ENV, "").strip()
    if not text:
        return 1.0
    try:
        scale = float(text)
    except ValueError:
        scale = -1.0
    if not 0 < scale < float("inf"):
        raise ValueError(f"{DELAY_SCALE_ENV}={text!r}: expected a positive number (3 = three times slower)")
    return scale


def simulate_work(delay: float, steps: int = 10) -> None:
    """Sleep ``delay`` seconds in ``steps`` slices, reporting progress and honouring interrupts."""
    progress = None
    try:
        import comfy.utils

        progress = comfy.utils.ProgressBar(steps)
    except ImportError:
        pass
    for _ in range(steps):
        if _interrupted():
            import comfy.model_management as mm

            mm.throw_exception_if_processing_interrupted()
        time.sleep(delay / steps)
        if progress is not None:
            progress.update(1)


class DistributedTestImage:
    """Seeded image generator with a configurable delay that stands for GPU work."""

    CATEGORY = "testing/distributed"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "generate"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 64}),
                "width": ("INT", {"default": 64, "min": 8, "max": 4096}),
                "height": ("INT", {"default": 64, "min": 8, "max": 4096}),
                "delay": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 600.0, "step": 0.01}),
            }
        }

    def generate(self, seed: int, batch_size: int, width: int, height: int, delay: float):
        if delay > 0:
            simulate_work(delay * delay_scale())
        return (seeded_images(seed, batch_size, width, height),)


class DistributedTestLatent:
    """A seeded latent, to test collecting LATENT; ``note`` is any text (for input-handling tests)."""

    CATEGORY = "testing/distributed"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "generate"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 64}),
                "width": ("INT", {"default": 64, "min": 8, "max": 4096, "step": 8}),
                "height": ("INT", {"default": 64, "min": 8, "max": 4096, "step": 8}),
            },
            "optional": {"note": ("STRING", {"default": ""})},
        }

    def generate(self, seed: int, batch_size: int, width: int, height: int, note: str = ""):
        latents = []
        for index in range(batch_size):
            generator = torch.Generator().manual_seed((seed * 1000 + index) % (2**63))
            latents.append(torch.randn((4, height // 8, width // 8), generator=generator, dtype=torch.float32))
        return ({"samples": torch.stack(latents)},)


class DistributedTestTileWork:
    """A per-tile pipeline for tests: a 3x3 box blur (so a pixel depends on its neighbours, as a sampler's
    does), brightened by ``gain``, then upscaled ``scale`` times (nearest), after ``delay`` of simulated work.
    An optional ``hint`` image is averaged in before the upscale, resized to the tile first when its size
    differs (as a ControlNet resizes its hint): a hint cropped per tile lines up with the tile, a shared one not."""

    CATEGORY = "testing/distributed"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "work"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE",),
                "gain": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 4.0, "step": 0.01}),
                "scale": ("INT", {"default": 1, "min": 1, "max": 8}),
                "delay": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 600.0, "step": 0.01}),
            },
            "optional": {"hint": ("IMAGE",)},
        }

    def work(self, image, gain: float, scale: int, delay: float, hint=None):
        if delay > 0:
            simulate_work(delay * delay_scale())
        channels_first = image.movedim(-1, 1)
        padded = torch.nn.functional.pad(channels_first, (1, 1, 1, 1), mode="replicate")
        blurred = torch.nn.functional.avg_pool2d(padded, 3, stride=1)
        out = (blurred * gain).clamp(0, 1)
        if hint is not None:
            guide = hint.movedim(-1, 1)[:, :3]
            if guide.shape[-2:] != out.shape[-2:]:
                guide = torch.nn.functional.interpolate(guide, size=tuple(out.shape[-2:]), mode="nearest")
            out = (out + guide[:1].expand_as(out) if guide.shape[0] == 1 else out + guide[:out.shape[0]]) / 2
        if scale > 1:
            out = torch.nn.functional.interpolate(out, scale_factor=scale, mode="nearest")
        return (out.movedim(1, -1).contiguous(),)


class DistributedTestFail:
    """Raises during execution, to test how an execution error on a worker is reported."""

    CATEGORY = "testing/distributed"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "fail"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "message": ("STRING", {"default": "boom"})}}

    def fail(self, images, message: str):
        raise RuntimeError(message)


NODE_CLASS_MAPPINGS = {
    "DistributedTestImage": DistributedTestImage,
    "DistributedTestFail": DistributedTestFail,
    "DistributedTestLatent": DistributedTestLatent,
    "DistributedTestTileWork": DistributedTestTileWork,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "DistributedTestImage": "Distributed Test Image",
    "DistributedTestFail": "Distributed Test Fail",
    "DistributedTestLatent": "Distributed Test Latent",
    "DistributedTestTileWork": "Distributed Test Tile Work",
}
