"""comfy."""
