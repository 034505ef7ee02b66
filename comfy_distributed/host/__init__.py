"""What the extension needs from the ComfyUI it runs in, and where its nodes find it: below every folder that
uses it, so nothing reaches up for it.

:mod:`.interface` is the one interface the extension asks ComfyUI through (``Host``; ``DetachedHost`` outside
ComfyUI: tools, tests, the CLI); :mod:`.runtime` holds the running extension (host, orchestrator, queue balancer)
for the nodes, which ComfyUI creates itself. Its implementation over ComfyUI's own modules is
:mod:`..comfy.adapter`, the only code that imports them.
"""
