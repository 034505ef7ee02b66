"""Every fact the sidebar panel shares with the Python side, written once here and generated into
``web/multigpu_contract.js`` (``python -m comfy_distributed.api.panel_contract``; a test fails while the committed
file differs): the event names, the worker statuses and the unit states in the order the panel shows them, the
states after which a unit changes no more, the token command, the Value node's class and widget names, and the
worker form's rules (from the config model).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .. import events
from ..cluster.health import STATUSES
from ..engine.scheduler import FINISHED, UnitState
from ..graph.values import DEFAULT_INPUT, VALUES_INPUT
from ..config.models import MAX_EXTRA_ARGS, MAX_WORKER_NAME, WorkerConfig
from ..graph.workflow import VALUE_CLASS
from .schemas_in import WORKER_ID_PATTERN
from .access import TOKEN_COMMAND

TARGET = Path(__file__).resolve().parents[2] / "web" / "multigpu_contract.js"
REGENERATE = "python -m comfy_distributed.api.panel_contract"

WORKER_STATUS_ORDER = ("idle", "busy", "offline", "disabled", "error", "launching")
"""How the panel lists worker statuses (its summary line); every status of the health monitor, once."""

UNIT_ORDER = (UnitState.RUNNING, UnitState.PENDING, UnitState.MASTER, UnitState.DONE, UnitState.SKIPPED,
              UnitState.GIVEN_UP)
"""Which unit of a worker its card shows first; every unit state, once."""


def windows_command(command: str) -> str:
    """The same command for the Windows wrapper."""
    return command.replace("/", "\\").replace(".sh ", ".bat ")


def worker_rules() -> dict[str, Any]:
    """The worker form's rules, from the config model's own schema and limits: the panel checks a field as the
    master will."""
    fields = WorkerConfig.model_json_schema()["properties"]
    port = fields["port"]
    (cuda,) = [branch for branch in fields["cuda_device"]["anyOf"] if branch.get("type") == "integer"]
    return {"port": {"min": port["minimum"], "max": port["maximum"]},
            "cuda_device": {"min": cuda["minimum"], "max": cuda.get("maximum")},
            "name": {"max_length": MAX_WORKER_NAME}, "extra_args": {"max_length": MAX_EXTRA_ARGS},
            "id_pattern": WORKER_ID_PATTERN}


def facts() -> dict[str, Any]:
    if sorted(WORKER_STATUS_ORDER) != sorted(STATUSES):
        raise ValueError(f"WORKER_STATUS_ORDER must list every status of the health monitor: {STATUSES}")
    if sorted(UNIT_ORDER) != sorted(UnitState):
        raise ValueError("UNIT_ORDER must list every unit state")
    return {
        "EVENTS": {name.split(".", 1)[1].upper(): name for name in events.NAMES},
        "WORKER_STATUSES": list(WORKER_STATUS_ORDER),
        "UNIT_ORDER": {state.value: rank for rank, state in enumerate(UNIT_ORDER)},
        "FINISHED_STATES": sorted(state.value for state in FINISHED),
        "TOKEN_COMMAND": TOKEN_COMMAND,
        "TOKEN_COMMAND_WINDOWS": windows_command(TOKEN_COMMAND),
        "VALUE_NODE": {"CLASS": VALUE_CLASS, "DEFAULT": DEFAULT_INPUT, "VALUES": VALUES_INPUT},
        "WORKER_RULES": worker_rules(),
    }


def panel_module() -> str:
    """The text of ``web/multigpu_contract.js``."""
    lines = [f"// What the panel shares with the master's Python code, generated from comfy_distributed/api/"
             f"panel_contract.py\n// by `{REGENERATE}`; a test fails when this file and the Python facts differ.\n"]
    for name, value in facts().items():
        text = json.dumps(value, indent=2)
        lines.append(f"export const {name} = {text if isinstance(value, str) else f'Object.freeze({text})'};\n")
    return "".join(lines)


if __name__ == "__main__":
    TARGET.write_text(panel_module(), encoding="utf-8")
    print(f"wrote {TARGET}")
