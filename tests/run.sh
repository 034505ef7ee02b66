#!/usr/bin/env bash
# Sets up a virtual environment (.venv) with what the tests need, then runs them.
#   bash tests/run.sh                 every tier; the real-ComfyUI tier is skipped unless COMFYUI_PATH is set
#   bash tests/run.sh tests/unit -x   any pytest arguments
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
VENV_PY=.venv/bin/python
if ! "$VENV_PY" -c "import torch" 2>/dev/null; then
    # CPU build is enough: the tests simulate GPU work
    "$VENV_PY" -m pip install --quiet "torch==2.13.0"
fi
"$VENV_PY" -m pip install --quiet -e ".[test]"
# type check the package first (settings in pyproject.toml, [tool.mypy]); a type error fails the run
"$VENV_PY" -m mypy -p comfy_distributed
exec "$VENV_PY" -m pytest "$@"
