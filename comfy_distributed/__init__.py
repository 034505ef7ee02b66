"""ComfyUI-Distributed: one ComfyUI over many GPUs. The importable core needs no ComfyUI."""

__version__ = "0.1.0"
