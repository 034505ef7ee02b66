"""Runs the sidebar panel's JavaScript unit tests (tests/web/*.test.js) with Node's own test runner.

Why from pytest: the one test command (``bash tests/run.sh``, also CI's) then covers the JS too,
with nothing to install: the tests use only ``node:test``. Skipped, with the reason, without Node.js.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NODE = shutil.which("node")


def _node_major() -> int:
    assert NODE is not None
    version = subprocess.run([NODE, "--version"], capture_output=True, text=True, timeout=30).stdout
    return int(version.strip().lstrip("v").split(".")[0] or 0)


@pytest.mark.skipif(NODE is None, reason="node is not installed: the JS unit tests of web/ need Node.js 20+")
def test_js_unit_tests_pass() -> None:
    assert _node_major() >= 20, "the JS unit tests need Node.js 20 or newer (node:test, ES modules)"
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests" / "web").glob("*.test.js"))
    assert files, "no tests/web/*.test.js found"
    result = subprocess.run([NODE, "--test", "--test-reporter=spec", *files], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    print(result.stdout)
    assert result.returncode == 0, f"{result.stdout[-8000:]}\n{result.stderr[-4000:]}"
    assert "ℹ fail 0" in result.stdout and "ℹ pass 0" not in result.stdout, result.stdout[-2000:]
