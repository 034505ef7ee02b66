"""Tier 3: the ComfyUI stand-in (tests/standin) gives the same transcripts as real ComfyUI.

Runs every scenario of tests/standin/parity.py against a fresh real ComfyUI (with the test node
pack mounted as custom node ``comfy_test_nodes``) and against a fresh stand-in, and compares.
It also checks the recording in tests/standin/real_transcripts.json, which the tier-2 test
compares the stand-in with in CI: when real ComfyUI changes, re-record it with
``python -m tests.standin.parity --record URL`` against a fresh real instance.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.real.harness import requires_comfyui
from tests.standin import StandinComfy
from tests.standin.parity import TRANSCRIPTS_FILE, differences, run_scenarios

TEST_NODES = Path(__file__).resolve().parents[1] / "comfy_test_nodes"

pytestmark = [requires_comfyui, pytest.mark.asyncio, pytest.mark.timeout(600)]


async def test_standin_matches_real_comfyui(comfy_factory, tmp_path):
    real = await asyncio.to_thread(comfy_factory, "parity-real", custom_nodes={"comfy_test_nodes": TEST_NODES})
    real_transcripts = await run_scenarios(real.url)
    async with StandinComfy(tmp_path / "parity-standin", name="parity-standin") as standin:
        standin_transcripts = await run_scenarios(standin.url)

    live = differences(real_transcripts, standin_transcripts)
    recorded = differences(json.loads(TRANSCRIPTS_FILE.read_text()), real_transcripts)
    report = []
    if live:
        report.append("stand-in differs from real ComfyUI (expected = real):\n" + "\n".join(live[:40]))
    if recorded:
        report.append(
            f"real ComfyUI differs from the recording {TRANSCRIPTS_FILE.name} (expected = recording); "
            "re-record it with `python -m tests.standin.parity --record URL`:\n" + "\n".join(recorded[:40])
        )
    assert not report, "\n\n".join(report) + f"\n--- real ComfyUI log (tail) ---\n{real.log_tail(30)}"
