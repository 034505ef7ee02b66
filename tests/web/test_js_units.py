"""Runs the sidebar panel's JavaScript unit tests (tests/web/*.test.js) with Node's own test runner, and reports
each of them as a test of its own.

Why from pytest: the one test command (``bash tests/run.sh``, also CI's) then covers the JS too,
with nothing to install: the tests use only ``node:test``. Skipped, with the reason, without Node.js.
Each ``test("...")`` of a file is one pytest item; Node runs each file once (TAP output), and an item passes
only when Node reported that test as passed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NODE = shutil.which("node")
FILES = sorted((ROOT / "tests" / "web").glob("*.test.js"))
TEST_CALL = re.compile(r'^test\(("(?:[^"\\]|\\.)*")', re.M)
TAP_LINE = re.compile(r"^(ok|not ok) \d+ - (.*?)(?: # (SKIP|TODO).*)?$", re.M)


def _declared() -> list[tuple[str, str]]:
    """(file, test name) of every top-level test of every file, read from the source."""
    return [(path.name, json.loads(literal)) for path in FILES for literal in TEST_CALL.findall(path.read_text())]


def _node_major() -> int:
    assert NODE is not None
    version = subprocess.run([NODE, "--version"], capture_output=True, text=True, timeout=30).stdout
    return int(version.strip().lstrip("v").split(".")[0] or 0)


@lru_cache(maxsize=None)
def _run(file: str) -> tuple[dict[str, str], str]:
    """What Node said of each test of ``file`` ("ok", "not ok"), and its whole output."""
    assert _node_major() >= 20, "the JS unit tests need Node.js 20 or newer (node:test, ES modules)"
    result = subprocess.run([NODE, "--test", "--test-reporter=tap", f"tests/web/{file}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    outcomes = {}
    for status, name, directive in TAP_LINE.findall(result.stdout):
        outcomes[name.replace("\\#", "#")] = directive.lower() or status
    return outcomes, output


pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed: the JS unit tests of web/ need Node.js 20+")


def test_every_js_file_declares_tests() -> None:
    assert FILES, "no tests/web/*.test.js found"
    assert {file for file, _ in _declared()} == {path.name for path in FILES}, "a file whose tests are not seen"


@pytest.mark.parametrize(("file", "name"), _declared(), ids=[f"{file}::{name[:60]}" for file, name in _declared()])
def test_js(file: str, name: str) -> None:
    outcomes, output = _run(file)
    outcome = outcomes.get(name)
    assert outcome is not None, f"Node did not report {name!r} of {file}:\n{output[-4000:]}"
    assert outcome == "ok", f"{file}: {name}: {outcome}\n{output[-6000:]}"
