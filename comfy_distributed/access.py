"""Who may use the ``/multigpu`` routes, and what an API request may set.

The guard every route goes through (see the README's Security section):

- A master that listens on loopback only, without ``--enable-cors-header``, is *private*. A request
  to it must name a loopback address or ``localhost`` (or a name in ``settings.allowed_hosts``) in its
  ``Host`` header, whatever its ``Origin``: that refuses DNS rebinding, where a page from an
  attacker's name that resolves to 127.0.0.1 sends ``Host`` and ``Origin`` both with that name.
- A master that listens beyond loopback or sends CORS headers is *public*: every route but the
  OpenAPI document needs the API token, reads included.
- A configured token is always required by the control routes (they change the file, start
  processes, free memory), compared in constant time.

What the API may write is narrower than what the file may say: ``extra_args`` sent through the
API may not carry a flag that moves ComfyUI's folders, frontend, database or config files
(:func:`forbidden_launch_flags`).
"""

from __future__ import annotations

import enum
import hmac
import ipaddress
import shlex
from typing import Any, Callable

from aiohttp import web

TOKEN_ENV = "COMFY_DISTRIBUTED_TOKEN"
TOKEN_COMMAND = "custom_nodes/ComfyUI-Distributed/launch_distributed.sh token"
"""How a user makes the first token (``launch_distributed.bat token`` on Windows), named in every 401."""

FORBIDDEN_FLAGS = (
    "--base-directory", "--input-directory", "--output-directory", "--temp-directory", "--user-directory",
    "--front-end-root", "--front-end-version", "--extra-model-paths-config", "--database-url",
    "--tls-keyfile", "--tls-certfile", "--comfy-api-base",
)
"""ComfyUI flags that name a folder, a file, a URL or code to load: never settable through the API."""


class ApiError(Exception):
    """A refusal: HTTP status and a message for the ``error`` field."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


class Access(enum.Enum):
    """What a route needs, beyond the Host check of a private master."""

    OPEN = "open"
    """Nothing: a static document."""
    READ = "read"
    """The token on a public master."""
    CONTROL = "control"
    """The token whenever one is configured, and always on a public master."""


def is_loopback_name(address: str) -> bool:
    """``localhost`` or a loopback IP address (``127.0.0.0/8``, ``::1``), brackets allowed."""
    name = address.strip().strip("[]").lower().rstrip(".")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def listens_beyond_loopback(listen: str | None) -> bool:
    """ComfyUI's ``--listen`` value: comma-separated addresses (default 127.0.0.1)."""
    return any(not is_loopback_name(a) for a in (listen or "127.0.0.1").split(",") if a.strip())


def is_public(listen: str | None, cors_origin: str | None) -> bool:
    """A master other machines or other origins can reach: it then needs a token for everything."""
    return listens_beyond_loopback(listen) or bool(cors_origin)


def host_name(host_header: str) -> str:
    """The name in a ``Host`` header, without port or brackets, lower case."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def supplied_token(request: web.Request) -> str:
    authorization = request.headers.get("Authorization", "")
    if authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return request.headers.get("X-MultiGPU-Token", "")


class Guard:
    """Decides each request. ``token`` and ``allowed_hosts`` are asked each time: the file can change."""

    def __init__(self, public: bool, token: Callable[[], str | None],
                 allowed_hosts: Callable[[], list[str]] = list) -> None:
        self.public = public
        self.token = token
        self.allowed_hosts = allowed_hosts

    def check(self, request: web.Request, access: Access) -> None:
        if not self.public:
            self._check_host(request)
        if access is Access.OPEN:
            return
        token = self.token()
        if token is None:
            if self.public:
                raise ApiError(401, "this master listens beyond loopback (or sends CORS headers), so the /multigpu "
                                    "routes need a token, and none is configured yet: create one with "
                                    f"'{TOKEN_COMMAND}' in ComfyUI's folder (it saves settings.api_token in "
                                    f"gpu_config.json), or set the {TOKEN_ENV} environment variable; then send it "
                                    "as 'Authorization: Bearer <token>'", token_configured=False)
            return
        if access is Access.READ and not self.public:
            return
        if not hmac.compare_digest(supplied_token(request).encode("utf-8", "replace"), token.encode()):
            raise ApiError(401, "missing or wrong token: send 'Authorization: Bearer <token>' (the token is "
                                f"settings.api_token in gpu_config.json; '{TOKEN_COMMAND}' shows it)",
                           token_configured=True)

    def _check_host(self, request: web.Request) -> None:
        header = request.headers.get("Host", "")
        name = host_name(header)
        if name and (is_loopback_name(name) or name in self.allowed_hosts()):
            return
        shown = header[:100] if header else "(none)"
        raise ApiError(403, f"refused: the request's Host {shown!r} is not a loopback address of this master "
                            "(protection against DNS rebinding). Open the master as http://127.0.0.1:<port>/ or "
                            "http://localhost:<port>/, or add that name to settings.allowed_hosts in gpu_config.json",
                       host=shown)


def forbidden_launch_flags(extra_args: str) -> list[str]:
    """The flags of ``extra_args`` the API may not set; raises ApiError 400 when it cannot be split.

    argparse accepts any unambiguous prefix of a long flag (``--base-dir``), so a prefix of a
    forbidden flag is forbidden too, in ``--flag value`` and ``--flag=value`` forms.
    """
    try:
        words = shlex.split(extra_args)
    except ValueError as exc:
        raise ApiError(400, f"extra_args cannot be split into arguments: {exc}") from None
    found = []
    for word in words:
        if not word.startswith("--") or word == "--":
            continue
        flag = word.split("=", 1)[0].lower()
        if flag.endswith("-directory") or any(f.startswith(flag) for f in FORBIDDEN_FLAGS if len(flag) > 2):
            found.append(flag)
    return found


def check_launch_flags(extra_args: Any, where: str) -> None:
    """400 naming the flag when API-sent ``extra_args`` would move ComfyUI's folders, frontend or config."""
    if not isinstance(extra_args, str):
        return  # the config model reports the wrong type
    flags = forbidden_launch_flags(extra_args)
    if flags:
        raise ApiError(400, f"{where}: {', '.join(sorted(set(flags)))} cannot be set through the API (it moves "
                            "ComfyUI's folders, frontend, database or config files); edit gpu_config.json by hand "
                            "if you really mean it", flags=sorted(set(flags)))
