"""Who may talk to `lipsync serve`: the checks every request passes before its handler runs.

A loopback bind keeps other machines out, not other web pages: the user's browser is inside
it, and any site it visits can send requests to 127.0.0.1. The checks, in order:

1. Host (every request). DNS rebinding points a name the attacker owns at 127.0.0.1; the
   browser then treats the server's answers as the attacker's own, readable. Accepted: IP
   literals (no name, nothing to rebind), `localhost`, the bound host, and the names the
   operator gave with --allowed-host. The port is not compared: rebinding needs a name, and a
   forwarded port (ssh -L, a container) legitimately changes it.
2. Origin and Sec-Fetch-Site (every method but GET/HEAD). Browsers send Origin on each
   cross-origin POST/DELETE/OPTIONS, including no-cors fetches, forms and beacons; it must be
   the origin the request came to (scheme http/https, host:port equal to Host) or an
   --allowed-host name (a reverse proxy that rewrites Host). Sec-Fetch-Site, where sent, must
   be same-origin or none. Requests without these headers do not come from a web page.
3. The token, where there is one (see server.py: always for non-loopback binds).
4. The body's Content-Type, per route: JSON only as application/json (which a page can send to
   another origin only after a CORS preflight, and the server never answers one with an
   allow), uploads only as multipart/form-data, and routes that take no body take no form.

No response ever carries Access-Control-Allow-* headers.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from enum import Enum
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

SAFE_METHODS = ("GET", "HEAD")
# What a page may send to another origin without a CORS preflight (besides no Content-Type at
# all, which the Origin check covers): never accepted where it is not the route's own body.
FORM_TYPES = ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data")


class Body(Enum):
    """What a route's requests carry."""

    NONE = "none"  # no body used; a form Content-Type (what a cross-site page sends) is refused
    JSON = "json"  # application/json
    UPLOAD = "upload"  # multipart/form-data


def split_host(value: str) -> tuple[str, int | None]:
    """`name[:port]` or `[v6]:port` -> (lower-case name without brackets or trailing dot, port)."""
    value = value.strip().lower()
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        name, _, port = value.partition(":")
    else:  # a bare name, or a bare IPv6 address
        name, port = value, ""
    return name.rstrip("."), int(port) if port.isdigit() else None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


class Access:
    """The Host, Origin and token rules of one server (see the module's docstring)."""

    def __init__(self, bound_host: str, allowed_hosts: tuple[str, ...] = (), token: str | None = None):
        self.bound = split_host(bound_host)[0]
        self.allowed = [split_host(h) for h in allowed_hosts]
        self.token = token

    def _configured(self, name: str, port: int | None) -> bool:
        return any(name == n and (p is None or p == port) for n, p in self.allowed)

    def host_ok(self, host: str | None) -> bool:
        if not host:
            return False
        name, port = split_host(host)
        return _is_ip(name) or name in ("localhost", self.bound) or self._configured(name, port)

    def origin_ok(self, origin: str, host: str) -> bool:
        parts = urlsplit(origin.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return False  # includes "null": a sandboxed frame, a file:// page, a data: URL
        netloc = parts.netloc.lower()
        return netloc == host.strip().lower() or self._configured(*split_host(netloc))

    def token_ok(self, given: str) -> bool:
        return self.token is None or hmac.compare_digest(given.encode(), self.token.encode())


class Routes:
    """The app's routes and the body each takes: adding a route says what it accepts."""

    def __init__(self, app):
        self.app = app
        self._bodies: dict[tuple[str, str], Body] = {}

    def add(self, method: str, path: str, handler, body: Body = Body.NONE) -> None:
        self.app.router.add_route(method, path, handler)
        self._bodies[(method, path)] = body

    def body_of(self, request) -> Body | None:
        """None: no route of ours (aiohttp answers 404/405 itself)."""
        resource = getattr(request.match_info.route, "resource", None)
        if resource is None:
            return None
        return self._bodies.get((request.method, resource.canonical))


def needs_token(path: str) -> bool:
    return path.startswith("/api/") or path == "/offer"


def refusal(request, access: Access, routes: Routes) -> tuple[int, str] | None:
    """(HTTP status, one-line reason) when `request` is refused, else None."""
    host = request.headers.get("Host")
    if not access.host_ok(host):
        return 403, (
            f"{request.path}: expected a Host this server answers to (an IP address, localhost, "
            f"{access.bound} or an --allowed-host name), found {host!r}; start lipsync serve with "
            "--allowed-host NAME to serve under that name"
        )
    if request.method not in SAFE_METHODS:
        origin = request.headers.get("Origin")
        if origin is not None and not access.origin_ok(origin, host or ""):
            return 403, (
                f"{request.path}: expected requests from this server's own pages, found one from "
                f"origin {origin!r}; other sites may not drive the server (a reverse proxy: "
                "--allowed-host NAME)"
            )
        site = request.headers.get("Sec-Fetch-Site")
        if site is not None and site not in ("same-origin", "none"):
            return 403, (
                f"{request.path}: expected requests from this server's own pages, found a {site} "
                "one (Sec-Fetch-Site); other sites may not drive the server"
            )
    if needs_token(request.path) and access.token is not None:
        given = request.query.get("token") or request.headers.get("Authorization", "").removeprefix("Bearer ")
        if not access.token_ok(given):
            return 401, (
                "expected the studio's token (printed at start), found "
                + ("a wrong one" if given else "none")
                + "; add ?token=... to the page's URL"
            )
    body = None if request.method in SAFE_METHODS else routes.body_of(request)
    return None if body is None else _body_refusal(request, body)


def _body_refusal(request, body: Body) -> tuple[int, str] | None:
    given = request.headers.get("Content-Type")
    ctype = request.content_type if given else None  # without the header aiohttp assumes octet-stream
    if body is Body.JSON and ctype != "application/json":
        return 415, (
            f"{request.path}: expected a JSON body with Content-Type application/json, found "
            f"{given or 'no Content-Type'}; send the header (curl -H 'Content-Type: application/json')"
        )
    if body is Body.UPLOAD and ctype != "multipart/form-data":
        return 415, (
            f"{request.path}: expected a multipart/form-data upload with a 'file' field, found "
            f"Content-Type {given or 'none'}; send it as a form (curl -F file=@PATH)"
        )
    if body is Body.NONE and ctype in FORM_TYPES:
        return 415, (
            f"{request.path}: expected no body, found a form (Content-Type {given}); send the request without a body"
        )
    return None


def make_guard(access: Access, routes: Routes, error):
    """The middleware; `error(status, message)` -> the server's JSON error response."""
    from aiohttp import web  # aiohttp: the web extra, needed only by lipsync serve

    @web.middleware
    async def guard(request, handler):
        refused = refusal(request, access, routes)
        if refused is not None:
            status, message = refused
            # request.path, never the query string: it may hold the token
            log.warning("refused %s %s (%d): %s", request.method, request.path, status, message)
            return error(status, message)
        return await handler(request)

    return guard
