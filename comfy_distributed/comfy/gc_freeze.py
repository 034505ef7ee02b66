"""Garbage collections out of a job's way: the startup heap frozen once ComfyUI runs, on the master and on a worker
that loads the extension (passive there).

ComfyUI collects garbage (``gc.collect()``, with the GIL held) right after a prompt whenever its last collection is
more than 10 s old: after the first job, and after every job that follows a pause of a user at the UI. A full
collection walks every object the process holds, most of them ComfyUI's, torch's and the custom nodes' modules,
loaded once and never garbage: 0.3 s on a small machine, during which the instance answers nothing. On the master the
UI hears of the finished prompt that much later; on a worker the master's fetch of the unit's files waits for it (the
``executed`` event leaves just before the collection starts, the files' ``GET /view`` lands in it; ComfyUI's own
``SaveImageWebsocket`` does not escape it either: its frames are encoded on the server loop, which the collection
holds too). ``gc.freeze()`` moves the objects alive once the server loop runs to a generation no collection walks
again; what a prompt makes is still collected as before. Set ``COMFY_DISTRIBUTED_GC_FREEZE=0`` in an instance's
environment to leave its collections as they are.
"""

from __future__ import annotations

import gc
import logging
import os

log = logging.getLogger("comfy_distributed")

GC_FREEZE_ENV = "COMFY_DISTRIBUTED_GC_FREEZE"


def freeze_startup_heap(environ: dict[str, str] | None = None) -> bool:
    """Freeze the objects alive now (once ComfyUI has loaded), unless turned off; whether it froze them."""
    if (os.environ if environ is None else environ).get(GC_FREEZE_ENV, "1").strip() in ("0", "false", "no", "off"):
        return False
    gc.freeze()
    log.info("Multi-GPU: %d objects of ComfyUI's startup left out of later garbage collections (%s=0 keeps them "
             "in)", gc.get_freeze_count(), GC_FREEZE_ENV)
    return True
