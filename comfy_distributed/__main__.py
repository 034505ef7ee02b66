"""``python -m comfy_distributed MODE ...``: the same as the ``comfy-distributed`` command."""

from __future__ import annotations

import sys

try:
    from .cli import main
except ImportError as exc:  # run with a Python that is not ComfyUI's
    print(f"error: comfy-distributed needs aiohttp and pydantic, which ComfyUI's environment has ({exc}): run it "
          "with ComfyUI's Python (launch_distributed.sh / .bat find it for you)", file=sys.stderr)
    raise SystemExit(1) from None

if __name__ == "__main__":
    raise SystemExit(main())
