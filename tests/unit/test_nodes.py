import importlib.util
import io
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from comfy_distributed.collector.codecs import decode_png
from comfy_distributed.collector.codecs import quantize_like_png
from comfy_distributed.comfy.node_catalog import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from comfy_distributed.collector.nodes import (
    MultiGPUCollector,
    MultiGPUSeedDistributor,
    MultiGPUUnitPart,
    assemble,
    decode_parts,
)
from comfy_distributed.engine.jobs import Collected, CollectorResult

ROOT = Path(__file__).resolve().parents[2]


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def unit(position: int, name: str, error: str | None = None, decoded: dict | None = None) -> Collected:
    return Collected(position, position, None, decoded or {}, name, name, error)


SHOWN = {"Multi-GPU Collector", "Multi-GPU Distributor", "Multi-GPU Tile Split", "Multi-GPU Tile Merge",
         "Multi-GPU Tiled Upscale", "Multi-GPU Value", "Multi-GPU Clips"}


def test_display_names_are_the_original_readmes():
    names = set(NODE_DISPLAY_NAME_MAPPINGS.values())
    assert SHOWN <= names
    assert all(n.endswith("(internal)") for n in names - SHOWN)
    assert set(NODE_CLASS_MAPPINGS) == set(NODE_DISPLAY_NAME_MAPPINGS)


def test_only_the_announced_nodes_show_in_the_node_library():
    # the frontend leaves nodes whose /object_info says "deprecated" out of the library and the search
    shown = {name for name, cls in NODE_CLASS_MAPPINGS.items() if not getattr(cls, "DEPRECATED", False)}
    hidden = set(NODE_CLASS_MAPPINGS) - shown
    assert {NODE_DISPLAY_NAME_MAPPINGS[name] for name in shown} == SHOWN
    assert len(hidden) == 6
    assert all(NODE_CLASS_MAPPINGS[name].CATEGORY == "multigpu/internal" for name in hidden)


def test_distributor_passes_the_seed_on_the_master():
    assert MultiGPUSeedDistributor().distribute(123) == (123,)


def test_collector_without_job_is_a_pass_through():
    images = torch.rand(2, 8, 8, 3)
    out, latent, audio = MultiGPUCollector().collect(images, unique_id="3", prompt={"3": {"inputs": {}}})
    assert out is images and latent is None and audio is None
    samples = {"samples": torch.rand(1, 4, 8, 8)}
    assert MultiGPUCollector().collect(latent=samples, unique_id="3", prompt={})[1] is samples


def test_decode_matches_comfyui_load_image_and_round_trips_8_bit():
    array = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    tensor = decode_png(png(array))
    assert tensor.shape == (1, 5, 7, 3) and tensor.dtype == torch.float32
    # SaveImage's conversion gives the same bytes back
    assert (np.clip(255.0 * tensor[0].numpy(), 0, 255).astype(np.uint8) == array).all()


def test_parts_are_ordered_by_position_and_a_mismatched_size_is_left_out():
    master = torch.zeros(2, 4, 4, 3)
    one = np.full((4, 4, 3), 10, dtype=np.uint8)
    two = np.full((4, 4, 3), 20, dtype=np.uint8)
    wrong = np.full((6, 4, 3), 30, dtype=np.uint8)
    events = []
    result = CollectorResult(
        outputs=[(unit(3, "GPU 3"), {"images": [png(two)]}), (unit(1, "GPU 1"), {"images": [png(one), png(one)]}),
                 (unit(2, "GPU 2"), {"images": [png(wrong)]})],
        master_units=[],
        failures=[unit(4, "GPU 4", "offline")],
    )
    parts = {0: {"images": master}, **decode_parts({"images": master}, result, "3",
                                                   lambda e, d: events.append((e, d)))}
    merged = assemble(parts, "3")["images"]
    values = [round(float(image[0, 0, 0]) * 255) for image in merged]
    assert values == [0, 0, 10, 10, 20]
    assert events and "GPU 2" in events[0][1]["message"]


def test_latents_travel_exactly_like_save_latent_writes_them():
    from safetensors.torch import save

    from comfy_distributed.collector.codecs import decode_kind, join_kind

    samples = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    blob = save({"latent_tensor": samples.contiguous(), "latent_format_version_0": torch.tensor([])})
    decoded = decode_kind("latent", [blob], {"samples": torch.zeros(1, 4, 8, 8)})
    assert torch.equal(decoded["samples"], samples)
    joined = join_kind("latent", [{"samples": samples[:1]}, decoded])
    assert joined["samples"].shape == (3, 4, 8, 8)


def test_unit_run_on_the_master_equals_its_png_round_trip():
    images = torch.rand(2, 5, 5, 3, generator=torch.Generator().manual_seed(1))
    (parts,) = MultiGPUUnitPart().add(2, images=images)
    ((position, values),) = parts
    quantized = values["images"]
    array = np.clip(255.0 * images.numpy(), 0, 255).astype(np.uint8)
    assert position == 2
    # exactly what a worker's PNG gives after ComfyUI's LoadImage-style decode
    assert torch.equal(quantized, torch.cat([decode_png(png(a)) for a in array]))
    assert torch.equal(quantize_like_png(quantized), quantized)


def test_root_package_loads_like_comfyui_loads_custom_nodes():
    """ComfyUI imports the folder's __init__.py by location under the folder's name."""
    name = "ComfyUI-Distributed-under-test"
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        assert set(module.NODE_CLASS_MAPPINGS) == set(NODE_CLASS_MAPPINGS)
        assert (ROOT / module.WEB_DIRECTORY / "multigpu.js").is_file()
    finally:
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]


def test_outside_comfyui_the_host_is_detached_and_internal_nodes_say_so():
    from comfy_distributed.host import runtime
    from comfy_distributed.host.interface import DetachedHost
    from comfy_distributed.queue_mode.nodes import MultiGPURemoteOutput

    assert runtime.current is None and isinstance(runtime.host(), DetachedHost)
    host = runtime.host()
    assert not host.interrupted() and host.running_prompts() == set() and host.queue_load() == 0
    try:
        MultiGPURemoteOutput().deliver("f", "9")
    except RuntimeError as exc:
        assert "not running here" in str(exc)
    else:
        raise AssertionError("an internal node outside a running master must refuse, not guess")


def test_units_decoded_as_they_arrived_are_only_joined_and_still_checked():
    from comfy_distributed.collector.codecs import CODECS

    master = torch.zeros(1, 4, 4, 3, dtype=torch.float16)
    one, wrong = png(np.full((4, 4, 3), 10, dtype=np.uint8)), png(np.full((6, 4, 3), 30, dtype=np.uint8))
    early_one, early_wrong = CODECS["images"].early([one]), CODECS["images"].early([wrong])
    assert torch.equal(early_one, decode_png(one))  # the same decoding, done sooner
    events = []
    result = CollectorResult(
        outputs=[(unit(1, "GPU 1", decoded={"3": early_one}), {"images": [b"not read: decoded already"]}),
                 (unit(2, "GPU 2", decoded={"3": early_wrong}), {"images": [wrong]})],
        master_units=[], failures=[])
    parts = decode_parts({"images": master}, result, "3", lambda e, d: events.append((e, d)))
    assert list(parts) == [1] and parts[1]["images"].dtype == torch.float16  # made like the master's
    assert round(float(parts[1]["images"][0, 0, 0, 0]) * 255) == 10
    assert "GPU 2" in events[0][1]["message"]  # a wrong size is refused however early it was decoded
