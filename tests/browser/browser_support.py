"""What the browser tests need from the machine: Node.js with playwright-core, a Chromium, a real ComfyUI, and
optionally a newer frontend for the master (``COMFYUI_FRONT_END_ROOT``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tests.real.harness import COMFYUI_PATH, SKIP_REASON

ROOT = Path(__file__).resolve().parents[2]
FRONT_END_ROOT = os.environ.get("COMFYUI_FRONT_END_ROOT")
"""A newer frontend than the one ComfyUI pins (the ``static`` folder of comfyui-frontend-package), for the master."""
NODE = shutil.which("node")
CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or shutil.which("chromium-browser")


def skip_reason() -> str | None:
    """Why the browser tests cannot run here (None: they can)."""
    if not COMFYUI_PATH:
        return SKIP_REASON
    if NODE is None:
        return "node is not installed: the browser tests run playwright-core on Node.js 20+"
    if not (ROOT / "node_modules" / "playwright-core").is_dir():
        return "node_modules/playwright-core is missing: run `npm ci` at the repository root"
    if CHROMIUM is None:
        return "no Chromium: `apt-get install chromium` (or set CHROMIUM_PATH)"
    return None


def run_driver(script: Path, plan: dict[str, Any], plan_path: Path, master: Any, timeout: float) -> str:
    """Run the Node.js driver ``script`` with ``plan`` (written to ``plan_path``); its output, printed (shown with
    -rA or on failure). Fails with the output and ``master``'s log tail when the driver does."""
    plan_path.write_text(json.dumps(plan))
    result = subprocess.run([NODE or "node", str(script), str(plan_path)], cwd=ROOT, capture_output=True, text=True,
                            timeout=timeout)
    print(result.stdout)
    assert result.returncode == 0, (f"{result.stdout[-6000:]}\n{result.stderr[-4000:]}\n"
                                    f"--- master log ---\n{master.log_tail(80)}")
    return result.stdout
