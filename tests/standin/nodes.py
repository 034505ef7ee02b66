"""Core ComfyUI nodes re-implemented for the stand-in server.

Only the behaviour that a client can observe is reproduced: input/output declarations (as seen
in ``/object_info`` and used by validation), the files written by the image savers (names,
subfolders, PNG encoding and text chunks) and the ``ui`` payloads they return.

Each :class:`~tests.standin.server.StandinComfy` builds its own classes with
:func:`make_core_nodes`, bound to its own output/temp/input directories, so that several stand-ins
can live in one process.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import os
import random
import string
import sys
import time
from dataclasses import dataclass
from typing import Any
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, ImageSequence
from PIL.PngImagePlugin import PngInfo

# Module names that real ComfyUI 0.3.64 reports as ``python_module`` in /object_info.
CORE_MODULE = "nodes"
PRIMITIVE_MODULE = "comfy_extras.nodes_primitive"
TEST_PACK_MODULE = "custom_nodes.comfy_test_nodes"


@dataclass(frozen=True)
class Dirs:
    """The three directories a ComfyUI instance serves files from."""

    output: str
    temp: str
    input: str

    def by_type(self, type_name: str | None) -> str | None:
        return {"output": self.output, "temp": self.temp, "input": self.input}.get(type_name)


def split_annotation(name: str, dirs: Dirs) -> tuple[str, str | None]:
    """``name [output]`` style annotations, as ComfyUI parses them.

    ComfyUI strips one character more than the annotation itself (it expects a space before the
    bracket), so ``a.png[output]`` becomes ``a.pn``; this is reproduced on purpose.
    """
    for kind in ("output", "input", "temp"):
        tag = f"[{kind}]"
        if name.endswith(tag):
            return name[: -(len(tag) + 1)], dirs.by_type(kind)
    return name, None


def _substitute_prefix_vars(prefix: str, width: int, height: int) -> str:
    now = time.localtime()
    values = {
        "%width%": str(width),
        "%height%": str(height),
        "%year%": str(now.tm_year),
        "%month%": f"{now.tm_mon:02d}",
        "%day%": f"{now.tm_mday:02d}",
        "%hour%": f"{now.tm_hour:02d}",
        "%minute%": f"{now.tm_min:02d}",
        "%second%": f"{now.tm_sec:02d}",
    }
    for key, value in values.items():
        prefix = prefix.replace(key, value)
    return prefix


def next_save_path(prefix: str, base_dir: str, width: int = 0, height: int = 0):
    """Where the next image with ``prefix`` goes: (folder, file stem, counter, subfolder).

    Same scheme as ComfyUI: the counter is one more than the highest ``<stem>_<NNNNN>_`` already
    present in the folder (1 when none), the subfolder comes from the prefix and may not leave
    ``base_dir``.
    """
    if "%" in prefix:
        prefix = _substitute_prefix_vars(prefix, width, height)
    normalised = os.path.normpath(prefix)
    subfolder = os.path.dirname(normalised)
    stem = os.path.basename(normalised)
    folder = os.path.join(base_dir, subfolder)
    if os.path.commonpath((base_dir, os.path.abspath(folder))) != base_dir:
        raise Exception(
            "**** ERROR: Saving image outside the output folder is not allowed."
            f"\n full_output_folder: {os.path.abspath(folder)}\n         output_dir: {base_dir}"
        )
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        os.makedirs(folder, exist_ok=True)
        names = []
    highest = 0
    found = False
    cut = len(os.path.basename(prefix)) + 1
    for name in names:
        head = name[:cut]
        if head[:-1] != stem or head[-1:] != "_":
            continue
        try:
            number = int(name[cut:].split("_")[0])
        except ValueError:
            number = 0
        highest = number if not found else max(highest, number)
        found = True
    return folder, stem, (highest + 1 if found else 1), subfolder


def tensor_to_pil(image) -> Image.Image:
    """One [H, W, C] image in 0..1 to an 8-bit PIL image, the way ComfyUI converts it."""
    pixels = 255.0 * image.cpu().numpy()
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def safetensors_bytes(tensors: dict[str, Any], metadata: dict[str, str]) -> bytes:
    """A safetensors file of float32 ``tensors`` (None: an empty one), as ``safetensors.torch.save`` writes it."""
    header: dict[str, Any] = {"__metadata__": metadata}
    blobs, offset = [], 0
    for name, tensor in tensors.items():
        blob = b"" if tensor is None else tensor.float().numpy().tobytes()
        shape = [0] if tensor is None else list(tensor.shape)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    return len(encoded).to_bytes(8, "little") + encoded + b"".join(blobs)


def make_core_nodes(dirs: Dirs) -> tuple[dict[str, type], dict[str, str], dict[str, str]]:
    """Node classes bound to ``dirs``: (class mappings, display names, python modules)."""

    class SaveImage:
        OUTPUT_DIR = dirs.output
        IMAGE_TYPE = "output"
        PREFIX_SUFFIX_LETTERS = 0
        COMPRESS_LEVEL = 4

        RETURN_TYPES = ()
        FUNCTION = "save_images"
        OUTPUT_NODE = True
        CATEGORY = "image"
        DESCRIPTION = "Saves the input images to your ComfyUI output directory."

        @classmethod
        def INPUT_TYPES(cls):
            return {
                "required": {
                    "images": ("IMAGE", {"tooltip": "The images to save."}),
                    "filename_prefix": (
                        "STRING",
                        {
                            "default": "ComfyUI",
                            "tooltip": "The prefix for the file to save. This may include formatting information such as %date:yyyy-MM-dd% or %Empty Latent Image.width% to include values from nodes.",
                        },
                    ),
                },
                "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
            }

        def __init__(self):
            # A PreviewImage keeps its random suffix for as long as the node object is cached.
            self.suffix = ""
            if self.PREFIX_SUFFIX_LETTERS:
                letters = "".join(random.choice(string.ascii_lowercase) for _ in range(self.PREFIX_SUFFIX_LETTERS))
                self.suffix = f"_temp_{letters}"

        def save_images(self, images, filename_prefix="ComfyUI", prompt=None, extra_pnginfo=None):
            prefix = filename_prefix + self.suffix
            height, width = int(images[0].shape[0]), int(images[0].shape[1])
            folder, stem, counter, subfolder = next_save_path(prefix, self.OUTPUT_DIR, width, height)
            saved = []
            for batch_number, image in enumerate(images):
                info = PngInfo()
                if prompt is not None:
                    info.add_text("prompt", json.dumps(prompt))
                if extra_pnginfo is not None:
                    for key in extra_pnginfo:
                        info.add_text(key, json.dumps(extra_pnginfo[key]))
                name = f"{stem.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"
                tensor_to_pil(image).save(os.path.join(folder, name), pnginfo=info, compress_level=self.COMPRESS_LEVEL)
                saved.append({"filename": name, "subfolder": subfolder, "type": self.IMAGE_TYPE})
                counter += 1
            return {"ui": {"images": saved}}

    class PreviewImage(SaveImage):
        OUTPUT_DIR = dirs.temp
        IMAGE_TYPE = "temp"
        PREFIX_SUFFIX_LETTERS = 5
        COMPRESS_LEVEL = 1

        @classmethod
        def INPUT_TYPES(cls):
            return {
                "required": {"images": ("IMAGE",)},
                "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
            }

    class LoadImage:
        CATEGORY = "image"
        RETURN_TYPES = ("IMAGE", "MASK")
        FUNCTION = "load_image"

        @classmethod
        def INPUT_TYPES(cls):
            try:
                names = [n for n in os.listdir(dirs.input) if os.path.isfile(os.path.join(dirs.input, n))]
            except FileNotFoundError:
                names = []
            images = [n for n in names if (mimetypes.guess_type(n)[0] or "").startswith("image/")]
            return {"required": {"image": (sorted(images), {"image_upload": True})}}

        @staticmethod
        def _path(image: str) -> str:
            name, base = split_annotation(image, dirs)
            return os.path.join(base or dirs.input, name)

        def load_image(self, image):
            import torch

            with Image.open(self._path(image)) as source:  # ComfyUI leaves an animated PNG's file to the collector
                return self._frames(source)

        @staticmethod
        def _frames(source):
            import torch

            frames, masks = [], []
            size = None
            for frame in ImageSequence.Iterator(source):
                frame = ImageOps.exif_transpose(frame)
                if frame.mode == "I":
                    frame = frame.point(lambda v: v * (1 / 255))
                rgb = frame.convert("RGB")
                if size is None:
                    size = rgb.size
                if rgb.size != size:
                    continue
                frames.append(torch.from_numpy(np.array(rgb).astype(np.float32) / 255.0)[None,])
                if "A" in frame.getbands():
                    alpha = np.array(frame.getchannel("A")).astype(np.float32) / 255.0
                    mask = 1.0 - torch.from_numpy(alpha)
                elif frame.mode == "P" and "transparency" in frame.info:
                    alpha = np.array(frame.convert("RGBA").getchannel("A")).astype(np.float32) / 255.0
                    mask = 1.0 - torch.from_numpy(alpha)
                else:
                    mask = torch.zeros((64, 64), dtype=torch.float32)
                masks.append(mask.unsqueeze(0))
            if len(frames) > 1 and source.format != "MPO":
                return (torch.cat(frames, dim=0), torch.cat(masks, dim=0))
            return (frames[0], masks[0])

        @classmethod
        def IS_CHANGED(cls, image):
            return hashlib.sha256(Path(cls._path(image)).read_bytes()).hexdigest()

        @classmethod
        def VALIDATE_INPUTS(cls, image):
            if not os.path.exists(cls._path(image)):
                return f"Invalid image file: {image}"
            return True

    class SaveLatent:
        """ComfyUI's SaveLatent (``nodes.py``): a safetensors file with the latent and an empty version marker."""

        RETURN_TYPES = ()
        FUNCTION = "save"
        OUTPUT_NODE = True
        CATEGORY = "_for_testing"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"samples": ("LATENT",), "filename_prefix": ("STRING", {"default": "latents/ComfyUI"})},
                    "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

        def save(self, samples, filename_prefix="ComfyUI", prompt=None, extra_pnginfo=None):
            folder, stem, counter, subfolder = next_save_path(filename_prefix, dirs.output, 0, 0)
            metadata = {"prompt": json.dumps(prompt) if prompt is not None else ""}
            for key in extra_pnginfo or {}:
                metadata[key] = json.dumps(extra_pnginfo[key])
            name = f"{stem}_{counter:05}_.latent"
            with open(os.path.join(folder, name), "wb") as handle:
                handle.write(safetensors_bytes({"latent_tensor": samples["samples"].contiguous(),
                                                "latent_format_version_0": None}, metadata))
            return {"ui": {"latents": [{"filename": name, "subfolder": subfolder, "type": "output"}]}}

    class SaveImageWebsocket:
        """ComfyUI's ``custom_nodes/websocket_image_save.py``: each image goes to the progress hook as a PNG, which
        the server sends to the prompt's client (the executor does that here, on its loop, once this returns)."""

        RETURN_TYPES = ()
        FUNCTION = "save_images"
        OUTPUT_NODE = True
        CATEGORY = "api/image"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"images": ("IMAGE",)}}

        def save_images(self, images):
            return {}

        @classmethod
        def IS_CHANGED(cls, images):
            return time.time()

    classes: dict[str, type] = {"SaveImage": SaveImage, "PreviewImage": PreviewImage, "LoadImage": LoadImage,
                                "SaveLatent": SaveLatent, "SaveImageWebsocket": SaveImageWebsocket}
    display = {"SaveImage": "Save Image", "PreviewImage": "Preview Image", "LoadImage": "Load Image",
               "SaveLatent": "SaveLatent", "SaveImageWebsocket": "SaveImageWebsocket"}
    modules = {name: CORE_MODULE for name in classes}
    modules["SaveImageWebsocket"] = "custom_nodes.websocket_image_save"
    for cls, label in _primitive_nodes():
        classes[cls.__name__] = cls
        display[cls.__name__] = label
        modules[cls.__name__] = PRIMITIVE_MODULE
    return classes, display, modules


def _primitive(name: str, kind: str, options: dict):
    def execute(self, value):
        return (value,)

    @classmethod
    def input_types(cls):
        return {"required": {"value": (kind, dict(options))}}

    return type(
        name,
        (),
        {
            "INPUT_TYPES": input_types,
            "RETURN_TYPES": (kind,),
            "FUNCTION": "execute",
            "CATEGORY": "utils/primitive",
            "execute": execute,
            # Real ComfyUI declares these as "v3" nodes; their /object_info entry has these extra keys.
            "STANDIN_EXTRA_INFO": {"output_tooltips": [None], "deprecated": False, "experimental": False, "api_node": False},
        },
    )


def _primitive_nodes():
    big = sys.maxsize
    return [
        (_primitive("PrimitiveInt", "INT", {"min": -big, "max": big, "control_after_generate": True}), "Int"),
        (_primitive("PrimitiveFloat", "FLOAT", {"min": -big, "max": big}), "Float"),
        (_primitive("PrimitiveString", "STRING", {"multiline": False}), "String"),
        (_primitive("PrimitiveBoolean", "BOOLEAN", {}), "Boolean"),
    ]


def test_pack_nodes() -> tuple[dict[str, type], dict[str, str], dict[str, str]]:
    """The node classes of ``tests/comfy_test_nodes`` (the very classes real ComfyUI loads)."""
    from tests import comfy_test_nodes as pack

    classes = dict(pack.NODE_CLASS_MAPPINGS)
    display = dict(getattr(pack, "NODE_DISPLAY_NAME_MAPPINGS", {}))
    modules = {name: TEST_PACK_MODULE for name in classes}
    return classes, display, modules


def node_info(class_type: str, cls: type, display_names: dict[str, str], modules: dict[str, str]) -> dict:
    """The ``/object_info`` entry of a node class, in the shape of ComfyUI 0.3.64."""
    input_types = cls.INPUT_TYPES()
    info: dict = {
        "input": input_types,
        "input_order": {section: list(entries.keys()) for section, entries in cls.INPUT_TYPES().items()},
        "output": cls.RETURN_TYPES,
        "output_is_list": getattr(cls, "OUTPUT_IS_LIST", [False] * len(cls.RETURN_TYPES)),
        "output_name": getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES),
        "name": class_type,
        "display_name": display_names.get(class_type, class_type),
        "description": getattr(cls, "DESCRIPTION", ""),
        "python_module": getattr(cls, "RELATIVE_PYTHON_MODULE", modules.get(class_type, "nodes")),
        "category": getattr(cls, "CATEGORY", "sd"),
        "output_node": getattr(cls, "OUTPUT_NODE", False) is True,
    }
    extra = getattr(cls, "STANDIN_EXTRA_INFO", None)
    if extra:
        # keep the key order of the real answer: output_tooltips right after output_name
        ordered: dict = {}
        for key, value in info.items():
            ordered[key] = value
            if key == "output_name" and "output_tooltips" in extra:
                ordered["output_tooltips"] = extra["output_tooltips"]
        ordered.update({k: v for k, v in extra.items() if k != "output_tooltips"})
        return ordered
    if hasattr(cls, "OUTPUT_TOOLTIPS"):
        info["output_tooltips"] = cls.OUTPUT_TOOLTIPS
    if getattr(cls, "DEPRECATED", False):
        info["deprecated"] = True
    if getattr(cls, "EXPERIMENTAL", False):
        info["experimental"] = True
    if hasattr(cls, "API_NODE"):
        info["api_node"] = cls.API_NODE
    return info
