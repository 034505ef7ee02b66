"""``gpu_config.json`` on disk: read with limits, saved atomically and owner-only, shared by a store."""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

from pydantic import ValidationError

from ..errors import ConfigError
from .json_limits import MAX_DEPTH, nesting_depth
from .models import CONFIG_ENV, DEFAULT_CONFIG_PATH, GpuConfig, MAX_CONFIG_BYTES
from .unknown_keys import unknown_key_warnings


def format_validation_error(source: str, exc: ValidationError) -> str:
    """One line per problem: ``gpu_config.json: workers[1].port: must be a port ...``."""
    lines = []
    for error in exc.errors():
        location = ""
        for part in error["loc"]:
            location += f"[{part}]" if isinstance(part, int) else (f".{part}" if location else str(part))
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"{source}: {location or '(top level)'}: {message}")
    return "\n".join(lines)


def parse_config(data: Any, source: str = "gpu_config.json", strict: bool = False) -> GpuConfig:
    """Validate ``data``; ``strict`` refuses conversions ("1" for a number, 1 for true), for API writes."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a JSON object")
    try:
        return GpuConfig.model_validate(data, strict=strict)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc)) from exc


def config_path() -> Path:
    override = os.environ.get(CONFIG_ENV)
    return Path(override).expanduser() if override else DEFAULT_CONFIG_PATH


def load_config(path: Path) -> GpuConfig:
    """Read and validate ``path``. A missing file is an empty cluster (master only)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return GpuConfig()
    except OSError as exc:  # a folder, a parent that is a file, no permission
        raise ConfigError(f"{path}: cannot be read: {exc.strerror or exc}") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes; is this the right file?")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from exc
    if nesting_depth(raw) > MAX_DEPTH:
        raise ConfigError(f"{path}: nested too deeply to be a configuration")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except RecursionError as exc:
        raise ConfigError(f"{path}: nested too deeply to be a configuration") from exc
    return parse_config(data, str(path))


CONFIG_FILE_MODE = 0o600
"""Every file we write is readable by its owner only, whatever it holds now. It may hold secrets in many
places (the API token, workers' ``headers``, an ``ssh`` block, what later versions add), and a list of the
keys that are secret would be one more thing to keep true; nothing but ComfyUI, run by that owner, reads it.
A file the user writes by hand keeps the mode it has until we rewrite it."""


def save_config(path: Path, config: GpuConfig, data: dict[str, Any] | None = None) -> None:
    """Write atomically, mode :data:`CONFIG_FILE_MODE`: a reader sees the old file or the new one, never half of one.

    ``data``, when given, is what is written (the file's own keys, already validated as ``config``).
    """
    text = json.dumps(config.model_dump(mode="json") if data is None else data, indent=2) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # the parent is a file, read-only, ...
        raise ConfigError(f"{path}: cannot be saved: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, CONFIG_FILE_MODE)
        os.replace(tmp_name, path)
    except OSError as exc:
        Path(tmp_name).unlink(missing_ok=True)
        raise ConfigError(f"{path}: cannot be saved: {exc.strerror or exc}") from exc


def set_api_token(path: Path, token: str | None) -> GpuConfig:
    """Set (or with None remove) ``settings.api_token`` in the file, keeping everything else as written.

    A missing file is created with just the token. The result is validated before it is saved.
    """
    load_config(path)  # a broken file is reported, never replaced
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        data = {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror or exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must be a JSON object")
    settings = data.setdefault("settings", {})
    if not isinstance(settings, dict):
        raise ConfigError(f"{path}: settings must be an object")
    if token is None:
        settings.pop("api_token", None)
    else:
        settings["api_token"] = token
    config = parse_config(data, str(path))
    save_config(path, config, data)
    return config


class ConfigStore:
    """The live configuration: re-read when the file changes, updated under a lock.

    Edits made by hand while ComfyUI runs apply to the next job. A file that stops
    validating is reported by :meth:`get` and left untouched. Its unknown keys are reported to
    whoever asked with :meth:`report_warnings` each time a changed file brings other ones.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or config_path()
        self._lock = threading.RLock()
        self._cached: GpuConfig | None = None
        self._stamp: tuple[int, int] | None = None
        self._warned: list[str] = []
        """The unknown-key warnings of the version held now (:func:`.unknown_key_warnings`)."""
        self._report: Callable[[list[str]], None] | None = None

    def report_warnings(self, report: Callable[[list[str]], None]) -> None:
        """Call ``report`` with the unknown-key warnings of every new version of the file whose warnings differ
        from those of the version before (none for the version read already: the master says those at start).

        It runs in the thread that reads the file first after it changed, under the store's lock: it must be
        quick and must not use the store (logging is what it is for).
        """
        with self._lock:
            self._report = report

    def _hold(self, config: GpuConfig, stamp: tuple[int, int] | None) -> None:
        """Keep ``config`` as the current version, read at ``stamp``, and report its new warnings."""
        self._cached, self._stamp = config, stamp
        warnings = unknown_key_warnings(config)
        if warnings != self._warned:
            self._warned = warnings
            if warnings and self._report is not None:
                self._report(warnings)

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            stat = self.path.stat()
        except OSError:  # missing, or a parent is not a folder: load_config says which
            return None
        return (stat.st_mtime_ns, stat.st_size)

    def get(self) -> GpuConfig:
        """The current config; raises ConfigError naming the file and field when it is bad."""
        with self._lock:
            stamp = self._file_stamp()
            if self._cached is None or stamp != self._stamp:
                self._hold(load_config(self.path), stamp)
            assert self._cached is not None
            return self._cached.model_copy(deep=True)

    def update_data(self, change: Callable[[dict[str, Any]], None], strict: bool = False) -> GpuConfig:
        """Like :meth:`update`, on the JSON form: errors then name the field as the file does."""
        with self._lock:
            data = self.get().model_dump(mode="json")
            change(data)
            validated = parse_config(data, self.path.name, strict=strict)
            save_config(self.path, validated)
            self._hold(validated, self._file_stamp())
            return validated.model_copy(deep=True)

    def update(self, change: Callable[[GpuConfig], None]) -> GpuConfig:
        """Apply ``change`` to a copy, validate the result, save it atomically, return it."""
        with self._lock:
            config = self.get()
            change(config)
            validated = parse_config(config.model_dump(mode="json"), str(self.path))
            save_config(self.path, validated)
            self._hold(validated, self._file_stamp())
            return validated.model_copy(deep=True)
