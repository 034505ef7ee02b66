"""Worker results to ComfyUI tensors, decoded exactly as ComfyUI's LoadImage does.

PNG bytes travel as the worker wrote them; this runs on the Collector's thread, never on
the server's event loop, because decoding a large batch takes a while.
"""

from __future__ import annotations

import io

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
