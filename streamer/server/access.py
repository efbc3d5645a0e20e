"""Who may use the server: the access token, the browsers' origins, TLS.

One policy for every route, checked once by the server (the websocket handshake, plain GETs and
the POST reader) so a new route is protected without doing anything. ``/healthz`` stays open so
load balancers and orchestrators can probe the process.

Where a request may carry the token:

- ``Authorization: Bearer TOKEN`` -- programs (the Python client, curl, telephony simulators);
- the ``emotion_monitor_token`` cookie -- browsers: a page load, a stylesheet or a websocket
  opened by a page cannot carry a header, so the dashboard's ``auth.js`` asks once and keeps the
  token in a session cookie (``SameSite=Strict``; gone when the browser closes), which the
  browser then sends with every same-origin request, websockets included.

Never in the URL: query strings end up in proxies' logs and browser history. The token is
compared in constant time and never written to a log or an error message.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.resources
import ipaddress
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from emotion_monitor.streamer.server.http import HttpRequest, HttpResponse

log = logging.getLogger(__name__)

#: Paths every caller may use without a token.
OPEN_PATHS = frozenset({"/healthz"})
COOKIE = "emotion_monitor_token"
TOKEN_ENV = "EMOTION_MONITOR_TOKEN"
MIN_TOKEN_CHARS = 16


def check_token(token: str) -> str:
    """``token`` when it can serve as the access token, else ``ValueError`` saying why."""
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(
            f"the access token must have at least {MIN_TOKEN_CHARS} characters; make one with "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    if not all("!" <= c <= "~" for c in token):
        # it travels in an HTTP header and a cookie: visible ASCII, no spaces
        raise ValueError("the access token may only hold visible ASCII characters (no spaces)")
    return token


def read_token_file(path: str | Path) -> str:
    """The token in a file (surrounding whitespace and the final newline removed)."""
    try:
        text = Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not ASCII text"
        raise ValueError(f"--token-file {path}: cannot read the token ({reason})") from None
    return text.strip()


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name (or "" for every interface): assume it is reachable
        return False


def is_private_address(host: str) -> bool:
    """True for loopback and one specific private-network address (not 0.0.0.0 / ::)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host == "localhost"
    return address.is_private and not address.is_unspecified


def tls_context(cert: str | Path, key: str | Path) -> ssl.SSLContext:
    """A server-side TLS context from a PEM certificate (chain) and its private key.

    Raises ``ValueError`` naming the files when they cannot be loaded.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
        raise ValueError(f"cannot load --tls-cert {cert} / --tls-key {key}: {reason}") from None
    return context


def normalize_origin(origin: str) -> str:
    """``https://Example.org:8443/`` -> ``https://example.org:8443``; ``ValueError`` if it is
    not an origin (a scheme and a host, nothing after them)."""
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise ValueError(f"--allowed-origin {origin!r}: expected scheme://host[:port]")
    return f"{parts.scheme}://{parts.netloc.lower()}"


@dataclass(frozen=True)
class Access:
    """The server's access policy.

    Args:
        token: the shared secret every request but ``/healthz`` must carry; ``None``: open.
        allowed_origins: web origins (``https://wallboard.example.org``) whose pages may open
            the browser websockets besides the server's own origin.
    """

    token: str | None = field(default=None, repr=False)
    allowed_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.token is not None:
            check_token(self.token)
        origins = tuple(normalize_origin(o) for o in self.allowed_origins)
        object.__setattr__(self, "allowed_origins", origins)

    @property
    def enabled(self) -> bool:
        """Whether requests need the token."""
        return self.token is not None

    def authenticate(self, request: HttpRequest) -> HttpResponse | None:
        """``None`` when ``request`` may proceed, else the 401 to answer it with.

        A browser asking for a page gets the sign-in page (``auth.js`` asks for the token);
        everyone else a JSON ``error`` (code ``unauthorized``).
        """
        if self.token is None or request.path in OPEN_PATHS:
            return None
        offered = _offered_tokens(request.headers)
        # compare_digest of fixed-size digests, on every candidate: how long this takes says
        # nothing about the token, not even its length
        expected = _digest(self.token)
        matches = [hmac.compare_digest(expected, _digest(t)) for t in offered]
        if any(matches):
            return None
        what = "a wrong token" if offered else "no token"
        log.info("refused %s %s: %s", request.method, request.path, what)
        if "text/html" in request.headers.get("accept", "") and request.method == "GET":
            return _sign_in_page(refused=bool(offered))
        message = (
            "the token was not accepted"
            if offered
            else "this server needs its access token: send 'Authorization: Bearer <token>'"
        )
        response = HttpResponse.error(401, "unauthorized", message)
        response.headers["WWW-Authenticate"] = 'Bearer realm="emotion-monitor"'
        return response

    def check_upgrade(
        self,
        request: HttpRequest,
        browser_route: bool,
        own_check: Callable[[HttpRequest], HttpResponse | None] | None = None,
    ) -> HttpResponse | None:
        """``None`` when a websocket upgrade may proceed, else the response refusing it.

        A ``browser_route`` refuses pages of other origins (403); ``own_check``, a route's own
        credential check (e.g. Twilio's signature), replaces the token check.
        """
        if browser_route and not self.origin_allowed(request):
            return HttpResponse.error(403, "forbidden_origin", "cross-origin websocket refused")
        return (own_check or self.authenticate)(request)

    def origin_allowed(self, request: HttpRequest) -> bool:
        """Programs (no ``Origin``: telephony platforms, scripts), pages of the server's own
        origin and of the configured origins may pass; any other web page must not read the
        calls."""
        origin = request.headers.get("origin")
        host = request.headers.get("host", "").lower()
        if origin is None or urlsplit(origin).netloc.lower() == host:
            return True
        try:
            return normalize_origin(origin) in self.allowed_origins
        except ValueError:  # "null" (sandboxed pages, files) or garbage
            return False


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()


def _offered_tokens(headers: dict[str, str]) -> list[str]:
    offered = []
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        offered.append(credentials.strip())
    for pair in headers.get("cookie", "").split(";"):
        name, _, value = pair.strip().partition("=")
        if name == COOKIE and value:
            offered.append(unquote(value))
    return offered


_SIGN_IN = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>emotion-monitor: sign in</title><link rel="icon" href="data:,"></head>
<body data-auth="{state}"><script>{script}</script></body></html>
"""


def _sign_in_page(refused: bool) -> HttpResponse:
    # auth.js itself is behind the token too, so the page carries its text inline.
    static = importlib.resources.files("emotion_monitor.web_dashboard") / "static"
    script = (static / "auth.js").read_text(encoding="utf-8")
    body = _SIGN_IN.format(state="refused" if refused else "required", script=script)
    response = HttpResponse(401, body.encode(), "text/html; charset=utf-8")
    response.headers["Cache-Control"] = "no-store"
    return response
