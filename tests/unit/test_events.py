"""One module defines every multigpu.* event; the panel's copy of the names is generated from it."""

from __future__ import annotations

import re
from pathlib import Path

from comfy_distributed import events
from comfy_distributed.api import panel_contract
from comfy_distributed.api.access import TOKEN_COMMAND
from comfy_distributed.cluster.health import STATUSES
from comfy_distributed.engine.scheduler import UnitState

ROOT = Path(__file__).resolve().parents[2]


def test_the_panels_contract_is_generated_from_the_python_facts():
    committed = panel_contract.TARGET.read_text(encoding="utf-8")
    assert committed == panel_contract.panel_module(), f"run `{panel_contract.REGENERATE}` and commit web/"
    facts = panel_contract.facts()
    assert list(facts["EVENTS"].values()) == list(events.NAMES)
    assert set(facts["WORKER_STATUSES"]) == set(STATUSES) and set(facts["UNIT_ORDER"]) == {s.value for s in UnitState}
    assert facts["TOKEN_COMMAND"] == TOKEN_COMMAND and facts["TOKEN_COMMAND_WINDOWS"].endswith(".bat token")


def test_no_panel_module_copies_a_fact_of_the_contract():
    copies = re.compile(r'"(launch_distributed\.(sh|bat) token|MultiGPUValue|given_up|multigpu\.[a-z_]+)"')
    offenders = [f"{path.name}:{number}: {line.strip()}" for path in (ROOT / "web").glob("*.js")
                 if path.name != "multigpu_contract.js"
                 for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                 if copies.search(line)]
    assert offenders == [], "the panel imports these from multigpu_contract.js"


def test_no_event_is_named_outside_the_events_module():
    literal = re.compile(r"""["']multigpu\.[a-z_]+["']""")
    offenders = [f"{path.relative_to(ROOT)}:{number}" for path in (ROOT / "comfy_distributed").rglob("*.py")
                 if path.name != "events.py"
                 for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                 if literal.search(line)]
    assert offenders == []


def test_every_builder_names_a_known_event_and_fills_every_key():
    built = [
        events.worker_status({"id": 1, "status": "idle"}, "offline"),
        events.job_progress("j", 0.5, []),
        events.job_done("j", False, ["GPU 1"], [0], []),
        events.worker_failed(1, "GPU 1", "offline", "connection refused", rerun=True),
        events.notice("Multi-GPU: runs static"),
        events.preview("j", 1, 2, "GPU 2", None, None),
    ]
    assert [name for name, _ in built] == list(events.NAMES)
    name, failed = built[3]
    assert failed == {"job_id": None, "worker_id": 1, "worker": "GPU 1", "reason": "offline", "unit": None,
                      "rerun": True, "message": "Worker GPU 1: connection refused"}
    assert built[4][1] == {"job_id": None, "message": "Multi-GPU: runs static"}
    assert built[5][1] == {"job_id": "j", "position": 1, "worker_id": 2, "worker": "GPU 2", "mime": None,
                           "data": None}  # a preview's end: every key there, the image's None
