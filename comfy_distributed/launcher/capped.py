"""Run a program whose output is not ours to trust (``ssh`` prints what the remote host sends), keeping at
most :data:`OUTPUT_CAP` bytes of each stream, so that a hostile or broken host can fill neither memory
nor the launcher's log. The rest is read and dropped (the program never blocks on a full pipe), and the
text kept says ``(output cut)`` where it was cut. Bytes that are not UTF-8 are replaced, never raised."""

from __future__ import annotations

import subprocess
import threading
from dataclasses import dataclass
from typing import IO


OUTPUT_CAP = 64 * 1024
"""Bytes kept of each of stdout and stderr."""
CUT_NOTE = "(output cut)"
_CHUNK = 64 * 1024
_READER_GRACE = 5.0
"""Seconds to wait for the end of the output once the program has exited (a child of it may hold the pipe)."""


@dataclass(slots=True)
class Captured:
    returncode: int
    stdout: str
    stderr: str


class _Keeper:
    """Reads a stream to its end, keeping its first (or last) ``OUTPUT_CAP`` bytes."""

    def __init__(self, stream: IO[bytes], keep_end: bool) -> None:
        self.stream, self.keep_end = stream, keep_end
        self.kept = bytearray()
        self.cut = False
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        try:
            while chunk := self.stream.read1(_CHUNK):  # type: ignore[attr-defined]
                self.kept += chunk
                if len(self.kept) > OUTPUT_CAP:
                    self.cut = True
                    if self.keep_end:
                        del self.kept[:-OUTPUT_CAP]
                    else:
                        del self.kept[OUTPUT_CAP:]
        except (OSError, ValueError):
            pass
        finally:
            self.stream.close()

    def text(self) -> str:
        text = bytes(self.kept).decode("utf-8", "replace")
        if not self.cut:
            return text
        return f"{CUT_NOTE}\n{text}" if self.keep_end else f"{text}\n{CUT_NOTE}\n"


def run_capped(command: list[str], stdin: bytes, timeout: float, keep_end: bool = False) -> Captured:
    """``command`` fed ``stdin``; its capped output (stdout's last bytes when ``keep_end``, else its first).

    ``subprocess.TimeoutExpired`` once ``timeout`` seconds have passed (the program is then killed), and
    ``OSError`` when it cannot be started, as :func:`subprocess.run` does.
    """
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    out, err = _Keeper(process.stdout, keep_end), _Keeper(process.stderr, False)
    try:
        try:
            process.stdin.write(stdin)
            process.stdin.close()
        except (BrokenPipeError, OSError):
            pass  # it exited without reading (ssh could not connect): its exit code says why
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
    finally:
        for keeper in (out, err):
            keeper.thread.join(_READER_GRACE)
    return Captured(process.returncode, out.text(), err.text())
