"""Which checkpoint each participant ran last (queue mode's model-aware routing)."""

from __future__ import annotations

from comfy_distributed.cluster.loaded_models import LoadedModels, model_names


def checkpoint(name, linked=False) -> dict:
    return {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ["9", 0] if linked else name}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}


def test_only_literal_checkpoint_and_unet_names_count():
    prompt = checkpoint("sd15.safetensors")
    prompt["3"] = {"class_type": "UNETLoader", "inputs": {"unet_name": "flux.safetensors", "weight_dtype": "default"}}
    prompt["4"] = {"class_type": "LoraLoader", "inputs": {"lora_name": "style.safetensors"}}
    assert model_names(prompt) == {"sd15.safetensors", "flux.safetensors"}
    assert model_names(checkpoint("x", linked=True)) == frozenset()
    assert model_names({"1": "not a node", "2": {"inputs": ["odd"]}}) == frozenset()
    assert model_names(["not", "a", "prompt"]) == frozenset()


def test_a_participant_holds_what_it_ran_last_and_a_prompt_without_a_checkpoint_changes_nothing():
    models = LoadedModels()
    sd15, sdxl = model_names(checkpoint("sd15.safetensors")), model_names(checkpoint("sdxl.safetensors"))
    assert not models.holds("1", sd15)
    models.ran("1", checkpoint("sd15.safetensors"))
    assert models.holds("1", sd15) and not models.holds("1", sdxl) and not models.holds("2", sd15)
    models.ran("1", {"1": {"class_type": "ImageScale", "inputs": {"width": 8}}})  # no model: the loaded one stays
    assert models.holds("1", sd15)
    models.ran("1", checkpoint("sdxl.safetensors"))
    assert models.holds("1", sdxl) and not models.holds("1", sd15)
    assert not models.holds("1", frozenset())  # a prompt that names no checkpoint prefers nobody
    assert models.last("1") == {"sdxl.safetensors"} and models.last("master") == frozenset()
