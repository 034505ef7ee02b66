"""What an instance's log says went wrong, in words that say what to do."""

from __future__ import annotations

import re

from .model import Instance
from .discovery import command_name


def explain(log: str, instance: Instance, python: str) -> str | None:
    """A hint for a newcomer from the last lines an instance wrote before it died."""
    text = log.lower()
    modules = re.findall(r"No module named '([^']+)'", log)
    if modules:
        module = modules[-1]
        return (f"the Python it ran ({python}) lacks ComfyUI's requirements (module {module!r} is missing): "
                f"install them with '{python} -m pip install -r requirements.txt' in ComfyUI's folder (or "
                f"'{command_name()} update'), or set {instance.field}.python to ComfyUI's own interpreter")
    if "address already in use" in text or "errno 98" in text or "10048" in text:
        return (f"port {instance.port} is taken by another program: change {instance.field}.port in "
                "gpu_config.json, or stop that program")
    if any(s in text for s in ("torch not compiled with cuda", "no nvidia driver", "invalid device ordinal",
                               "no cuda gpus are available", "cuda driver version is insufficient")):
        return (f"no usable GPU for {instance.field}.cuda_device = {instance.cuda_device} (CUDA_VISIBLE_DEVICES): "
                "check the number against nvidia-smi and that the NVIDIA driver and a CUDA build of torch are "
                "installed, or add --cpu to extra_args and set cuda_device to null")
    if "unrecognized arguments" in text or "error: argument" in text:
        return (f"ComfyUI refused an argument of {instance.field}.extra_args ({instance.extra_args!r}): check the "
                "spelling ('python main.py --help' lists them)")
    if "permission denied" in text:
        return "a file or folder is not accessible to this user: check the permissions named above"
    if "out of memory" in text:
        return "the GPU ran out of memory at start-up: add --lowvram or --reserve-vram to extra_args"
    return None
