"""The launcher's state folder and its files (pid files, logs, locks), safe from another local user.

Pid files decide which process a stop signals, and the launcher may run as root: whoever can put a
file in the state folder could make it kill any process, or write through a planted symbolic link.
So the folder is made private (``0700``) and must belong to the user running the launcher; its
files are created ``0600``, opened without following a symbolic link (``O_NOFOLLOW``), and trusted
only when they are regular files of that user with one name (no hard link to another file). A pid
file is replaced whole (a new file under a random name, then a rename), never written in place.

On Windows there are no modes, owners or ``O_NOFOLLOW`` here: the folder is created and the files
are opened as before, and their protection is the folder's own access list.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO

from ..errors import LaunchError


POSIX = os.name == "posix"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_OPEN_FLAGS = _NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
"""No link followed; a FIFO planted at the path does not block the open (it is then refused as not a file)."""
SMALL_FILE_LIMIT = 64 * 1024
"""The most a pid file may hold (one JSON line)."""


def _user() -> int:
    return os.geteuid() if POSIX else -1


def private_folder(path: Path, what: str = "the launcher's state folder", option: str = "--state-dir") -> Path:
    """``path`` created ``0700`` if missing, tightened to ``0700`` if other users may enter it; refused when
    it belongs to another user (they could plant pid files or links in it)."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.stat()
    except OSError as exc:
        raise LaunchError(f"cannot create {what} {path} ({exc.strerror or exc}): pass {option} with a writable "
                          "folder") from None
    if not POSIX:
        return path
    if info.st_uid != _user():
        raise LaunchError(f"{what} {path} belongs to another user (uid {info.st_uid}, you are {_user()}), who "
                          f"could plant files in it: pass {option} with a folder of your own")
    if stat.S_IMODE(info.st_mode) & 0o077:
        try:
            os.chmod(path, 0o700)
        except OSError as exc:
            raise LaunchError(f"cannot make {what} {path} private ({exc.strerror or exc}): pass {option} with a "
                              "folder of your own") from None
    return path


def open_private(path: Path, flags: int) -> int:
    """A descriptor of ``path`` (created ``0600`` when ``flags`` has ``O_CREAT``) that is a regular file of this
    user with one name, never reached through a symbolic link; anything else is a :class:`LaunchError`."""
    try:
        fd = os.open(path, flags | _OPEN_FLAGS, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LaunchError(f"{path} is a symbolic link: the launcher follows none in its state folder; remove "
                              "it") from None
        raise
    try:
        _check_own_file(fd, path)
        if POSIX:
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_own_file(fd: int, path: Path) -> None:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise LaunchError(f"{path} is not a regular file: remove it")
    if not POSIX:
        return
    if info.st_uid != _user() or info.st_nlink != 1:
        why = "belongs to another user" if info.st_uid != _user() else "has another name (a hard link)"
        raise LaunchError(f"{path} {why}, so the launcher does not trust it: remove it")
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.fchmod(fd, 0o600)


def append_private(path: Path) -> BinaryIO:
    """``path`` opened to append (a log), created ``0600`` in a private folder."""
    private_folder(path.parent)
    try:
        fd = open_private(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    except OSError as exc:
        raise LaunchError(f"cannot write the log {path} ({exc.strerror or exc}): pass --state-dir with a writable "
                          "folder") from None
    return os.fdopen(fd, "ab")


def read_private(path: Path, limit: int = SMALL_FILE_LIMIT) -> bytes | None:
    """The first ``limit`` bytes of a file of ours; None when it is missing or not to be trusted."""
    try:
        fd = open_private(path, os.O_RDONLY)
    except (OSError, LaunchError):
        return None
    with os.fdopen(fd, "rb") as handle:
        return handle.read(limit)


def replace_private(path: Path, data: bytes) -> None:
    """``path`` replaced whole by ``data``: a new ``0600`` file under a random name (O_EXCL, no link followed),
    then renamed over it, so a reader never sees half a file and a planted link is replaced, not followed."""
    private_folder(path.parent)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        raise LaunchError(f"cannot write {path} ({exc.strerror or exc}): pass --state-dir with a writable "
                          "folder") from None
