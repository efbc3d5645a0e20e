"""The small hand-written HTTP layer beside websockets: request/response types, the front door
that diverts POSTs, the POST reader, static files and helpers.

Why a front door: websockets' HTTP parser refuses request bodies, so ``POST /predict`` cannot go
through ``process_request``. Every connection first lands in :class:`FrontDoor` (given to
websockets as ``create_connection``), which reads the request line: a POST is handed to
:class:`PostHandler`, a small asyncio HTTP/1.1 reader on the same transport; everything else
continues as a normal websockets connection. Plain GETs are answered by websockets'
``process_request``.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import http
import inspect
import json
import logging
import mimetypes
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from emotion_monitor.streamer import protocol
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.protocol import State

log = logging.getLogger(__name__)

HEAD_LIMIT = 16 << 10  # request line + headers of a POST
HEAD_TIMEOUT = 10.0  # seconds a new connection may take to send its request head
LINGER_S = 5.0  # seconds to discard a refused POST body so the client can read the answer


@dataclass
class HttpRequest:
    """A plain HTTP request as route handlers see it (header names lower-case)."""

    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    #: the request target as sent (path and query string), for signatures over the URL
    target: str = ""


@dataclass
class HttpResponse:
    """What a route handler returns."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, data: Any, status: int = 200) -> HttpResponse:
        return cls(status, json.dumps(data).encode(), "application/json")

    @classmethod
    def error(cls, status: int, code: str, message: str) -> HttpResponse:
        """A 4xx/5xx with the same ``error`` shape as the websocket protocol."""
        return cls.json(protocol.ErrorMessage(code=code, message=message).to_dict(), status)


HttpHandler = Callable[[HttpRequest], "HttpResponse | Awaitable[HttpResponse]"]


class FrontDoor(ServerConnection):
    """websockets connection that first peeks at the request line (see the module docstring).

    Until the method is known, websockets has not been told about the connection at all
    (``connection_made`` is deferred), so diverting a POST leaves nothing behind in websockets.
    """

    def __init__(
        self, on_post: Callable[[asyncio.Transport, bytes], None], *args: Any, **kwargs: Any
    ):
        super().__init__(*args, **kwargs)
        self._on_post = on_post
        self._head = b""
        self._decided = False
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        # A peer that never sends a request line must not hold a socket forever.
        self._timer = asyncio.get_running_loop().call_later(HEAD_TIMEOUT, transport.abort)

    def data_received(self, data: bytes) -> None:
        if self._decided:
            super().data_received(data)
            return self._settle_failed_handshake()
        self._head += data
        line_end = self._head.find(b"\r\n")
        if line_end < 0 and len(self._head) < HEAD_LIMIT:
            return
        assert self._transport is not None
        if self._timer is not None:
            self._timer.cancel()
        method = self._head[: max(line_end, 0)].split(b" ", 1)[0]
        if method == b"POST":
            self._on_post(self._transport, self._head)
            return
        self._decided = True
        super().connection_made(self._transport)
        super().data_received(self._head)
        self._settle_failed_handshake()

    def eof_received(self) -> bool | None:
        if not self._decided:
            return None
        keep_open = super().eof_received()
        self._settle_failed_handshake()
        return keep_open

    def _settle_failed_handshake(self) -> None:
        # A websockets race (fixed upstream in python-websockets PR #1744): when the peer's EOF
        # or garbage after its request arrives before the handshake task resumes, websockets
        # fails the connection (sends EOF) but leaves it CONNECTING, and the handshake then
        # answers anyway and trips an assertion, logged as "unexpected internal error". The
        # peer is gone either way: mark it closed, so the handshake answers nothing (what
        # websockets does when the timing is the other way round).
        if self.protocol.state is State.CONNECTING and self.protocol.eof_sent:
            self.protocol.state = State.CLOSED

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._decided:
            super().connection_lost(exc)


class PostHandler:
    """Answers the POSTs the front door diverts: reads the head and a Content-Length body (at
    most ``max_body`` bytes), calls the route and writes one response, then closes.

    ``routes`` and ``ws_paths`` are the server's live route tables (a POST to a websocket path is
    a 405, to an unknown path a 404). ``authenticate`` sees every request's head before anything
    else (see :class:`~.access.Access`): a response it returns is the answer.
    """

    def __init__(
        self,
        routes: dict[tuple[str, str], HttpHandler],
        ws_paths: Collection[str],
        max_body: int,
        authenticate: Callable[[HttpRequest], HttpResponse | None] = lambda request: None,
    ):
        self.routes = routes
        self.ws_paths = ws_paths
        self.max_body = max_body
        self.authenticate = authenticate

    def take_over(self, transport: asyncio.Transport, head: bytes) -> None:
        """Take over a connection whose request line says POST (called by the front door)."""
        reader = asyncio.StreamReader(limit=HEAD_LIMIT)
        proto = asyncio.StreamReaderProtocol(reader, self._http_exchange)
        transport.set_protocol(proto)
        proto.connection_made(transport)
        proto.data_received(head)

    async def _http_exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        try:
            response = await self._read_and_answer(reader, writer)
        except ConnectionError:  # the client left mid-request: nobody to answer
            writer.close()
            return
        except Exception:  # a handler bug must not kill the server; the client gets a 500
            log.exception("POST handler failed")
            response = HttpResponse.error(500, "internal", "the server failed; see its log")
        try:
            writer.write(serialize(response))
            await writer.drain()
            # Lingering close: a client still sending a refused body (413 before reading it)
            # would get a reset instead of the answer if we closed with unread data pending.
            if writer.can_write_eof():  # TLS transports cannot half-close
                writer.write_eof()
            async with asyncio.timeout(LINGER_S):
                while await reader.read(1 << 16):
                    pass
        except (OSError, TimeoutError):  # OSError: the client left (a reset, or ENOTCONN when
            pass  # the half-close finds the socket already gone); nothing to tell anyone
        finally:
            writer.close()

    async def _read_and_answer(self, reader, writer) -> HttpResponse:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, TimeoutError):
            return HttpResponse.error(400, "bad_request", "incomplete or oversized request head")
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, _version_ = lines[0].split(" ", 2)
            headers = lower_keys(h.split(":", 1) for h in lines[1:] if h)
        except ValueError:
            return HttpResponse.error(400, "bad_request", "malformed request line or header")
        path = urlsplit(target).path
        refusal = self.authenticate(HttpRequest(method, path, headers=headers, target=target))
        if refusal is not None:  # before the route: no probing which paths exist
            return refusal
        route = self.routes.get((method, path))
        if route is None:
            allowed = [m for m, p in self.routes if p == path]
            status = 405 if allowed or path in self.ws_paths else 404
            return HttpResponse.error(status, "not_found", f"no {method} route at {path}")
        if "chunked" in headers.get("transfer-encoding", ""):
            return HttpResponse.error(411, "length_required", "send a Content-Length body")
        try:
            length = int(headers.get("content-length", "0"))  # none: an empty body (RFC 9112)
        except ValueError:
            return HttpResponse.error(400, "bad_request", "Content-Length is not a number")
        if not 0 <= length <= self.max_body:
            return HttpResponse.error(
                413, "too_big", f"body of {length} bytes exceeds {self.max_body} bytes"
            )
        if headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            body = await asyncio.wait_for(reader.readexactly(length), 120)
        except (asyncio.IncompleteReadError, TimeoutError):
            return HttpResponse.error(400, "bad_request", "body shorter than Content-Length")
        req = HttpRequest(method, path, query_of(target), headers, body, target=target)
        return await call_handler(route, req)


async def call_handler(handler: HttpHandler, request: HttpRequest) -> HttpResponse:
    result = handler(request)
    return await result if inspect.isawaitable(result) else result


def to_ws_response(resp: HttpResponse) -> Response:
    headers = Headers(resp.headers)
    headers["Content-Type"] = resp.content_type
    headers["Content-Length"] = str(len(resp.body))
    return Response(resp.status, http.HTTPStatus(resp.status).phrase, headers, resp.body)


def serialize(resp: HttpResponse) -> bytes:
    head = [
        f"HTTP/1.1 {resp.status} {http.HTTPStatus(resp.status).phrase}",
        f"Content-Type: {resp.content_type}",
        f"Content-Length: {len(resp.body)}",
        "Connection: close",
        *(f"{k}: {v}" for k, v in resp.headers.items()),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + resp.body


def lower_keys(items) -> dict[str, str]:
    return {k.strip().lower(): v.strip() for k, v in items}


def query_of(target: str) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(urlsplit(target).query).items()}


def get_request(request: Request) -> HttpRequest:
    """A GET as websockets parsed it, in the shape route handlers and ``authorize`` hooks see."""
    path = urlsplit(request.path).path
    headers = lower_keys(request.headers.raw_items())
    return HttpRequest("GET", path, query_of(request.path), headers, target=request.path)


def multipart_file(request: HttpRequest) -> tuple[bytes, str]:
    """The first file field of a multipart/form-data body (browsers' form uploads)."""
    raw = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode() + request.body
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    for part in msg.iter_parts() if msg.is_multipart() else ():
        if part.get_filename() is not None or part.get_content_maintype() == "audio":
            return part.get_payload(decode=True) or b"", part.get_filename() or ""
    return b"", ""


def static_response(folder: Path, path: str) -> HttpResponse:
    """A file of ``folder`` for ``GET path`` (``/`` is ``index.html``), or a 404.

    Only plain names of files that exist in the folder: no traversal, no listing.
    """
    name = "index.html" if path in ("/", "/index.html") else path.removeprefix("/static/")
    candidates = {p.name: p for p in folder.glob("*") if p.is_file()}
    if "/" in name or name not in candidates:
        return HttpResponse.error(404, "not_found", f"nothing at {path}")
    ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if ctype.startswith("text/") or ctype.endswith("javascript"):
        ctype += "; charset=utf-8"
    body = candidates[name].read_bytes()
    return HttpResponse(200, body, ctype, {"Cache-Control": "no-cache"})
