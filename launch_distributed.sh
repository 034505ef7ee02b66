#!/bin/sh
# ComfyUI-Distributed launcher: runs `comfy-distributed MODE ...` with ComfyUI's own Python.
# Keep it in the extension's folder (ComfyUI/custom_nodes/ComfyUI-Distributed) or copy it into ComfyUI's folder.
#   ./launch_distributed.sh all-slow        no argument: a menu
# Modes: master, workers, all-fast, all-slow, stop [NAME], status, restart NAME, logs NAME, run WORKFLOW.json,
#        agent, token, venv, update, update-nodes (details: ./launch_distributed.sh --help)
set -eu
here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
ext=""
if [ -f "$here/comfy_distributed/__init__.py" ]; then
    ext=$here
else
    for candidate in "$here"/custom_nodes/*/comfy_distributed/__init__.py; do
        if [ -f "$candidate" ]; then ext=$(dirname -- "$(dirname -- "$candidate")"); break; fi
    done
fi
if [ -z "$ext" ]; then
    echo "launch_distributed.sh: ComfyUI-Distributed not found: keep this script in its folder, or in ComfyUI's folder next to custom_nodes" >&2
    exit 1
fi
root=$(CDPATH='' cd -- "$ext/../.." && pwd)
python=${COMFY_DISTRIBUTED_PYTHON:-}
if [ -z "$python" ]; then
    for candidate in "$root/venv/bin/python" "$root/.venv/bin/python"; do
        if [ -x "$candidate" ]; then python=$candidate; break; fi
    done
fi
if [ -z "$python" ]; then python=$(command -v python3 || command -v python || true); fi
if [ -z "$python" ]; then
    echo "launch_distributed.sh: no Python found: create ComfyUI's venv, or put python3 on PATH" >&2
    exit 1
fi
if ! "$python" -c "import aiohttp, pydantic" 2>/dev/null; then
    echo "launch_distributed.sh: $python cannot import aiohttp and pydantic (ComfyUI's Python has both)." >&2
    echo "  Run it with ComfyUI's Python: COMFY_DISTRIBUTED_PYTHON=/path/to/ComfyUI/venv/bin/python $0 $*" >&2
    echo "  or install them for this one: $python -m pip install aiohttp pydantic" >&2
    exit 1
fi
if [ -f "$root/main.py" ]; then set -- --comfyui "$root" "$@"; fi
COMFY_DISTRIBUTED_COMMAND=${COMFY_DISTRIBUTED_COMMAND:-$0}   # the hints it prints name this script
export COMFY_DISTRIBUTED_COMMAND
exec "$python" -c 'import sys; sys.path.insert(0, sys.argv.pop(1)); from comfy_distributed.cli import main; sys.exit(main(sys.argv[1:]))' "$ext" "$@"
