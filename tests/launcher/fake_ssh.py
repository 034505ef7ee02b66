"""An ``ssh`` program that connects nowhere, for ``SshProcesses(ssh_binary=...)``: it records the arguments
and stdin it was given, then answers as the test says (a plain answer, or a flood from a hostile host).

POSIX only (a ``#!`` script run by the test's interpreter).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

FLOOD_BYTES = 8 * 1024 * 1024
"""How much a flooding host prints on each of stdout and stderr."""
LAST_LINE = "the last line of the flood"

PROGRAM = """#!{python}
import json, pathlib, sys
here = pathlib.Path(__file__).parent
data = sys.stdin.buffer.read()
with open(here / "calls.jsonl", "a") as calls:
    calls.write(json.dumps({{"argv": sys.argv[1:], "stdin": data.decode("utf-8")}}) + "\\n")
mode = (here / "mode").read_text()
if mode == "flood":
    junk = b"\\xff\\xfe not UTF-8, and long " * 200 + b"\\n"
    for _ in range({flood} // len(junk) + 1):
        sys.stdout.buffer.write(junk)
        sys.stderr.buffer.write(junk)
    sys.stdout.buffer.write(b"{last}\\n")
else:
    sys.stdout.write(mode)
"""


class FakeSsh:
    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.path = folder / "ssh"
        self.path.write_text(PROGRAM.format(python=sys.executable, flood=FLOOD_BYTES, last=LAST_LINE))
        self.path.chmod(0o755)
        self.answer("")

    def answer(self, text: str) -> None:
        """What the next calls print on stdout (exit code 0)."""
        (self.folder / "mode").write_text(text)

    def flood(self) -> None:
        """The next calls print :data:`FLOOD_BYTES` of bytes that are not UTF-8 on each stream, then
        :data:`LAST_LINE` on stdout."""
        (self.folder / "mode").write_text("flood")

    def calls(self) -> list[dict[str, Any]]:
        """Each call's ``argv`` (without the program) and ``stdin``."""
        path = self.folder / "calls.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
