"""ComfyUI entry point of ComfyUI-Distributed: node mappings, web extension, prompt hook.

Everything else lives in the ``comfy_distributed`` package, which imports without ComfyUI.
"""

if __package__:  # loaded by ComfyUI as the custom node package
    from .comfy_distributed.comfy import adapter as comfy_adapter
    from .comfy_distributed.comfy.node_catalog import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:  # imported as a plain module by tooling (pytest collecting the repository root)
    from comfy_distributed.comfy import adapter as comfy_adapter
    from comfy_distributed.comfy.node_catalog import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web"

comfy_adapter.install()  # does nothing when imported outside a running ComfyUI

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
