"""The master's startup heap is left out of ComfyUI's later garbage collections, unless turned off."""

from __future__ import annotations

import gc

from comfy_distributed.comfy.gc_freeze import GC_FREEZE_ENV, freeze_startup_heap


def test_the_startup_heap_is_frozen_once_comfyui_runs_unless_turned_off():
    gc.unfreeze()
    try:
        for off in ("0", "false", "off", " no "):
            assert not freeze_startup_heap({GC_FREEZE_ENV: off}) and gc.get_freeze_count() == 0
        assert freeze_startup_heap({}) and gc.get_freeze_count() > 1000, "the modules loaded by now"
        made = [[] for _ in range(10)]
        cycle: list = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1, "what is made afterwards is still collected"
        del made
    finally:
        gc.unfreeze()
