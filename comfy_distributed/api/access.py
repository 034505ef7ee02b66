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
- Whatever the Host, a request from another site is refused (:meth:`Guard.check_site`): an ``Origin``
  that is present and not the master's own (``null`` included: a sandboxed iframe sends it), a
  ``Sec-Fetch-Site`` of ``cross-site`` or ``same-site`` (another port of the same host), and a POST
  whose body is not ``application/json`` (a page can send ``text/plain`` or a form without a CORS
  preflight; a JSON body forces one, which the master never grants). The one exception is the origin
  that ``--enable-cors-header`` names (``*``: any), and such a master needs the token anyway.

What the API may write is narrower than what the file may say: ``extra_args`` sent through the
API may not carry a flag that moves ComfyUI's folders, frontend, database or config files
(:func:`forbidden_launch_flags`).
"""

from __future__ import annotations

import enum
import hmac
import shlex
from typing import Any, Callable
from urllib.parse import urlsplit

from aiohttp import web

from ..config.pool import is_loopback_name

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


DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
CROSS_SITE = frozenset({"cross-site", "same-site"})
"""``Sec-Fetch-Site`` values of a request a page of another origin made (``same-site``: another port or
subdomain of the same site); ``same-origin`` and ``none`` (typed in the address bar, curl) pass."""
JSON_TYPE = "application/json"


def _netloc(host: str, port: int | None, scheme: str) -> tuple[str, int | None]:
    """(host name, port) with the scheme's default port filled in, for comparing two origins."""
    return host.lower().rstrip("."), port if port is not None else DEFAULT_PORTS.get(scheme)


def same_origin(origin: str, host_header: str, scheme: str) -> bool:
    """Whether the ``Origin`` header names the master as the request reached it (``scheme`` and its ``Host``): the
    panel's own page. ``null`` and anything that is not ``http(s)://host[:port]`` are not."""
    try:
        theirs = urlsplit(origin.strip())
        ours = urlsplit(f"//{host_header.strip()}")
        scheme = scheme.strip().lower()
        if theirs.scheme.lower() != scheme or scheme not in ("http", "https") or theirs.path not in ("", "/"):
            return False
        return bool(theirs.hostname) and (_netloc(theirs.hostname or "", theirs.port, scheme) ==
                                          _netloc(ours.hostname or "", ours.port, scheme))
    except ValueError:  # a port that is not a number
        return False


class Guard:
    """Decides each request. ``token`` and ``allowed_hosts`` are asked each time: the file can change.
    ``cors_origin`` is ComfyUI's ``--enable-cors-header`` value: the one other origin a master serves."""

    def __init__(self, public: bool, token: Callable[[], str | None],
                 allowed_hosts: Callable[[], list[str]] = list, cors_origin: str | None = None) -> None:
        self.public = public
        self.token = token
        self.allowed_hosts = allowed_hosts
        self.cors_origin = (cors_origin or "").strip().rstrip("/") or None

    def check(self, request: web.Request, access: Access) -> None:
        if not self.public:
            self._check_host(request)
        self.check_site(request)
        self._check_token(request, access)
        if request.method == "POST" and request.content_type != JSON_TYPE:
            shown = request.headers.get("Content-Type", "(none)")[:100]
            raise ApiError(415, f"refused: a POST to the /multigpu routes must send its body as JSON with "
                                f"'Content-Type: {JSON_TYPE}' (an empty body as {{}}), not {shown!r}",
                           content_type=shown)

    def _check_token(self, request: web.Request, access: Access) -> None:
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

    def check_site(self, request: web.Request) -> None:
        """403 for a request another site's page made (see the module doc)."""
        origin = request.headers.get("Origin")
        if origin is not None and not self._origin_allowed(origin, request):
            shown = origin[:100]
            raise ApiError(403, f"refused: a cross-site request (Origin {shown!r} is not this master's own page). "
                                "The /multigpu routes answer the panel on the master's own page, the CLI and tools "
                                "that send no Origin; a page of another site (a sandboxed one sends 'null') may "
                                "not use them", origin=shown)
        fetch_site = request.headers.get("Sec-Fetch-Site", "").strip().lower()
        if fetch_site in CROSS_SITE and not (origin is not None and self._cors_allows(origin)):
            raise ApiError(403, f"refused: a cross-site request (Sec-Fetch-Site: {fetch_site}): only the master's "
                                "own page may use the /multigpu routes", fetch_site=fetch_site)

    def _origin_allowed(self, origin: str, request: web.Request) -> bool:
        # behind a TLS proxy the page is https while the request reached us as http; a page cannot set this header
        # without a preflight, so it is the proxy's word
        scheme = request.headers.get("X-Forwarded-Proto", request.scheme).split(",")[0]
        return same_origin(origin, request.headers.get("Host", ""), scheme) or self._cors_allows(origin)

    def _cors_allows(self, origin: str) -> bool:
        """The origin ``--enable-cors-header`` names (``*``: every one); such a master is public: token needed."""
        return self.cors_origin is not None and (self.cors_origin == "*" or
                                                 origin.strip().rstrip("/").lower() == self.cors_origin.lower())

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
