"""Build a random-weight SD1.5 checkpoint with ComfyUI's own model classes.

Usage (run with ComfyUI's interpreter, cwd and PYTHONPATH set to the ComfyUI root)::

    python make_random_sd15.py OUT_PATH

Why: tier-3 tests need a checkpoint that real ``CheckpointLoaderSimple`` detects as SD1.5 and
that samples to finite, non-constant images, without downloading anything. The modules are
built on the ``meta`` device (no memory, no slow default init) only to learn the exact key
names and shapes; every tensor is then drawn from one ``torch.Generator`` seeded with 0, in
key order, so the file is the same on every run and machine. Scaled-down fan-in init
(std = 1/sqrt(fan_in), norms = 1, biases = 0) keeps activations bounded through the UNet,
the CLIP text encoder and the VAE.

After building, the script checks the state dict with ComfyUI's own detection code
(``comfy.model_detection``) so that a layout mistake fails here and not inside a test.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch

SEED = 0
UNET_PREFIX = "model.diffusion_model."
CLIP_PREFIX = "cond_stage_model.transformer."
VAE_PREFIX = "first_stage_model."


def _force_cpu() -> None:
    """Make ComfyUI pick the CPU: ``comfy.model_management`` probes CUDA at import time."""
    import comfy.cli_args

    comfy.cli_args.args.cpu = True


def _clip_l_config() -> dict:
    """CLIP-L text config shipped beside ``comfy/sd1_clip.py`` (``comfy`` is a namespace package)."""
    import comfy.sd1_clip

    return json.loads((Path(comfy.sd1_clip.__file__).resolve().parent / "sd1_clip_config.json").read_text())


def unet_config() -> dict:
    """Full UNet config for SD1.5, starting from ComfyUI's ``supported_models.SD15``."""
    import comfy.supported_models

    config = {
        "use_checkpoint": False,
        "image_size": 32,
        "in_channels": 4,
        "out_channels": 4,
        "use_spatial_transformer": True,
        "legacy": False,
        "num_res_blocks": [2, 2, 2, 2],
        "channel_mult": [1, 2, 4, 4],
        "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
        "transformer_depth_middle": 1,
        "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        "use_temporal_resblock": False,
    }
    config.update(comfy.supported_models.SD15.unet_config)
    config.update(comfy.supported_models.SD15.unet_extra_config)
    return config


def vae_ddconfig() -> dict:
    """The SD1.x/2.x KL-f8 VAE config (the one ComfyUI's VAE class assumes for this layout)."""
    return {
        "double_z": True,
        "z_channels": 4,
        "resolution": 256,
        "in_channels": 3,
        "out_ch": 3,
        "ch": 128,
        "ch_mult": [1, 2, 4, 4],
        "num_res_blocks": 2,
        "attn_resolutions": [],
        "dropout": 0.0,
    }


def build_meta_modules() -> dict[str, torch.nn.Module]:
    """Instantiate UNet, CLIP-L text model and VAE on the meta device, keyed by checkpoint prefix."""
    import comfy.clip_model
    import comfy.ops
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    ops = comfy.ops.disable_weight_init
    clip_config = _clip_l_config()
    with torch.device("meta"):
        unet = UNetModel(**unet_config(), dtype=torch.float32, device=torch.device("meta"), operations=ops)
        clip = comfy.clip_model.CLIPTextModel(clip_config, torch.float32, torch.device("meta"), ops)
        vae = AutoencoderKL(ddconfig=vae_ddconfig(), embed_dim=4)
    return {UNET_PREFIX: unet, CLIP_PREFIX: clip, VAE_PREFIX: vae}


def _is_norm(module: torch.nn.Module) -> bool:
    return isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.BatchNorm2d))


def random_state_dict(modules: dict[str, torch.nn.Module], dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """Fill every parameter deterministically: norms 1/0, biases 0, weights N(0, 1/fan_in)."""
    generator = torch.Generator(device="cpu").manual_seed(SEED)
    out: dict[str, torch.Tensor] = {}
    for prefix, root in modules.items():
        for module_name, module in root.named_modules():
            for param_name, param in module.named_parameters(recurse=False):
                key = f"{prefix}{module_name}.{param_name}" if module_name else f"{prefix}{param_name}"
                if key == CLIP_PREFIX + "text_projection.weight":
                    continue  # real SD1.5 checkpoints do not carry it; ComfyUI ignores its absence
                shape = tuple(param.shape)
                if _is_norm(module):
                    value = torch.ones(shape, dtype=dtype) if param_name == "weight" else torch.zeros(shape, dtype=dtype)
                elif param_name == "bias" or len(shape) < 2:
                    value = torch.zeros(shape, dtype=dtype)
                else:
                    fan_in = shape[1] if isinstance(module, torch.nn.Embedding) else math.prod(shape[1:])
                    # Drawn directly in the target dtype: ~2.5x faster than float32 then cast.
                    value = torch.empty(shape, dtype=dtype).normal_(0.0, 1.0 / math.sqrt(fan_in), generator=generator)
                out[key] = value
        for buffer_name, buffer in root.named_buffers():
            # No buffer is expected in these modules; fail loudly rather than save garbage.
            raise RuntimeError(f"unexpected buffer {prefix}{buffer_name} {tuple(buffer.shape)}")
    return out


def check_detection(state_dict: dict[str, torch.Tensor]) -> None:
    """Assert that ComfyUI's checkpoint detection sees SD1.5 with all three parts present."""
    import comfy.model_detection
    import comfy.supported_models

    prefix = comfy.model_detection.unet_prefix_from_state_dict(state_dict)
    if prefix != UNET_PREFIX:
        raise RuntimeError(f"ComfyUI detects UNet prefix {prefix!r}, expected {UNET_PREFIX!r}")
    model_config = comfy.model_detection.model_config_from_unet(state_dict, prefix)
    if type(model_config) is not comfy.supported_models.SD15:
        raise RuntimeError(f"ComfyUI detects {type(model_config).__name__}, expected SD15")
    for needed in ("first_stage_model.decoder.conv_in.weight", "first_stage_model.post_quant_conv.weight",
                   "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"):
        if needed not in state_dict:
            raise RuntimeError(f"missing {needed}")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out_path = Path(argv[1])
    _force_cpu()
    torch.manual_seed(SEED)
    started = time.monotonic()
    modules = build_meta_modules()
    state_dict = random_state_dict(modules)
    check_detection(state_dict)
    built = time.monotonic()

    from safetensors.torch import save_file

    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state_dict, str(out_path), metadata={"format": "pt", "comfy_distributed_tests": "sd15-random-v1"})
    n_params = sum(t.numel() for t in state_dict.values())
    print(f"wrote {out_path}: {len(state_dict)} tensors, {n_params / 1e6:.1f}M params, "
          f"build {built - started:.1f}s, save {time.monotonic() - built:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
