"""ComfyUI entry point of ComfyUI-Distributed: node mappings, web extension, prompt hook.

Everything else lives in the ``comfy_distributed`` package, which imports without ComfyUI.
"""

from .comfy_distributed import comfy_adapter
from .comfy_distributed.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web"

comfy_adapter.install()  # does nothing when imported outside a running ComfyUI

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
