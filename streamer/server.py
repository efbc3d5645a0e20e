"""The websocket server and ``emotion-monitor serve``: dashboard, event push, audio ingest, HTTP.

One port serves everything::

    GET  /            the live dashboard (static files from web_dashboard/static)
    GET  /healthz     JSON: ok, model, streams, clients
    GET  /metrics     Prometheus text
    WS   /ws          protocol-v1 events (hello first; ``subscribe`` filters streams)
    WS   /ingest      audio in (``start`` + binary PCM frames + ``stop``), events for it out
    POST /predict     one uploaded recording -> one JSON answer

Extending it (telephony adapters and friends) -- call before :meth:`Server.start`::

    server.add_websocket_route("/twilio", handler)       # async handler(ws, service, settings)
    server.add_http_route("POST", "/twilio/voice", fn)   # fn(HttpRequest) -> HttpResponse
    server.add_tcp_listener("audiosocket", handler, port=9092)
                                     # async handler(reader, writer, service, settings)

``emotion-monitor serve`` wires the call-center integrations through
:mod:`emotion_monitor.streamer.api` when it is installed: its ``add_arguments(parser)`` adds flags,
``settings_from_args(settings, args)`` folds them into the settings and
``await attach(server, service, settings, ...)`` registers routes and listeners.

Why a front door: websockets' HTTP parser refuses request bodies, so ``POST /predict`` cannot go
through ``process_request``. Every connection first lands in :class:`_FrontDoor` (given to
websockets as ``create_connection``), which reads the request line: a POST is handed to a small
asyncio HTTP/1.1 handler on the same transport, everything else continues as a normal websockets
connection. Plain GETs are answered by websockets' ``process_request``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import email.parser
import email.policy
import http
import importlib
import importlib.util
import inspect
import json
import logging
import mimetypes
import signal
import sys
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from emotion_monitor.streamer import protocol
from emotion_monitor.streamer.audio import (
    AudioError,
    StreamResampler,
    pcm_to_float,
    silence_nonfinite,
    to_mono,
)
from emotion_monitor.streamer.engine import StreamLimitError
from emotion_monitor.streamer.events import PROTOCOL_VERSION
from emotion_monitor.streamer.service import MonitorService
from emotion_monitor.streamer.settings import Settings
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parents[1] / "web_dashboard" / "static"
#: The call-center integrations (see the module docstring); optional.
INTEGRATIONS = "emotion_monitor.streamer.api"
MAX_UPLOAD_BYTES = 50 << 20  # a few minutes of WAV; longer recordings belong to `analyze`
BROWSER_ROUTES = ("/ws", "/ingest")  # websocket routes that refuse cross-origin pages
HEAD_LIMIT = 16 << 10  # request line + headers of a POST
HEAD_TIMEOUT = 10.0  # seconds a new connection may take to send its request head
LINGER_S = 5.0  # seconds to discard a refused POST body so the client can read the answer
MAX_ERRORS = 20  # protocol errors tolerated from one client before it is closed
CLOSE_TRY_AGAIN_LATER = 1013
LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

WebSocketHandler = Callable[[ServerConnection, MonitorService, Settings], Awaitable[None]]
TcpHandler = Callable[
    [asyncio.StreamReader, asyncio.StreamWriter, MonitorService, Settings], Awaitable[None]
]


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


class _Client:
    """One subscriber: a bounded outgoing queue drained by its own task.

    Broadcasting only appends to the queue, so a client that reads slowly (or not at all) never
    delays anyone else; when its queue is full the oldest message is dropped and counted.
    """

    def __init__(self, ws: ServerConnection, size: int, streams: set[str] | None = None):
        self.ws = ws
        self.size = size
        self.streams = streams  # None: every stream
        self.queue: deque[str] = deque()
        self.dropped = 0
        self.errors = 0
        self._wakeup = asyncio.Event()
        self.task = asyncio.create_task(self._pump())

    def wants(self, stream: str | None) -> bool:
        return stream is None or self.streams is None or stream in self.streams

    def offer(self, text: str) -> bool:
        """Queue a message; returns False when it pushed out an older one."""
        dropped = len(self.queue) >= self.size
        if dropped:
            self.queue.popleft()
            self.dropped += 1
        self.queue.append(text)
        self._wakeup.set()
        return not dropped

    async def _pump(self) -> None:
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                while self.queue:
                    await self.ws.send(self.queue.popleft())
        except ConnectionClosed:
            pass

    async def drain(self, timeout: float = 2.0) -> None:
        """Wait (bounded) until the queue is sent, e.g. before a deliberate close."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.queue and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)


class _FrontDoor(ServerConnection):
    """websockets connection that first peeks at the request line (see the module docstring).

    Until the method is known, websockets has not been told about the connection at all
    (``connection_made`` is deferred), so diverting a POST leaves nothing behind in websockets.
    """

    def __init__(self, owner: Server, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._owner = owner
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
            return super().data_received(data)
        self._head += data
        line_end = self._head.find(b"\r\n")
        if line_end < 0 and len(self._head) < HEAD_LIMIT:
            return
        assert self._transport is not None
        if self._timer is not None:
            self._timer.cancel()
        method = self._head[: max(line_end, 0)].split(b" ", 1)[0]
        if method == b"POST":
            self._owner._serve_post(self._transport, self._head)
            return
        self._decided = True
        super().connection_made(self._transport)
        super().data_received(self._head)

    def eof_received(self) -> bool | None:
        return super().eof_received() if self._decided else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._decided:
            super().connection_lost(exc)


class ListenError(OSError):
    """A listener of the server could not be opened; the message names it and its address."""

    @classmethod
    def of(cls, what: str, host: str, port: int, exc: OSError) -> ListenError:
        """The error for listener ``what`` on ``host:port``, which failed with ``exc``."""
        # asyncio's message repeats the address as a Python tuple; keep only the reason.
        reason = (exc.strerror or str(exc)).rsplit("): ", 1)[-1]
        return cls(f"cannot serve {what} on {host}:{port}: {reason}")


class Server:
    """HTTP + websocket front of a :class:`MonitorService` on one port.

    Args:
        service: the running service whose events are pushed and which ingest feeds.
        settings: host, port and the bounds (``max_clients``, ``client_queue``,
            ``max_message_bytes``, ``ping_interval``, ``ping_timeout``).
        static_dir: dashboard files served at ``/`` (default: the packaged dashboard).
        max_upload_bytes: largest ``POST /predict`` body accepted.

    Lifecycle: register routes, ``await start()``, ..., ``await stop()``. The server does not
    start or stop the service; its owner does.
    """

    def __init__(
        self,
        service: MonitorService,
        settings: Settings | None = None,
        static_dir: Path | None = None,
        max_upload_bytes: int = MAX_UPLOAD_BYTES,
    ):
        self.service = service
        self.settings = settings or service.engine.settings
        self.static_dir = static_dir or STATIC_DIR
        self.max_upload_bytes = max_upload_bytes
        self._ws_routes: dict[str, WebSocketHandler] = {
            "/ws": self._handle_events,
            "/ingest": self._handle_ingest,
        }
        self._http_routes: dict[tuple[str, str], HttpHandler] = {
            ("GET", "/healthz"): self._healthz,
            ("GET", "/metrics"): self._metrics,
            ("POST", "/predict"): self._predict,
        }
        self._ws_authorize: dict[str, Callable[[HttpRequest], HttpResponse | None]] = {}
        self._tcp: dict[str, tuple[TcpHandler, str | None, int]] = {}
        self._tcp_servers: dict[str, asyncio.Server] = {}
        self._clients: set[_Client] = set()
        self._ws_server = None
        self._port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._predicting = 0
        self._ingest_count = 0
        self.stats = {
            "messages_queued": 0,
            "messages_dropped": 0,
            "clients_refused": 0,
            "protocol_errors": 0,
            "predict_requests": 0,
            "nonfinite_samples": 0,
        }
        self._latency_counts = [0] * (len(LATENCY_BUCKETS_S) + 1)
        self._latency_sum = 0.0

    # -- extension points -------------------------------------------------------------------

    def add_websocket_route(
        self,
        path: str,
        handler: Callable[..., Awaitable[None]],
        authorize: Callable[[HttpRequest], HttpResponse | None] | None = None,
    ) -> None:
        """Serve websocket connections on ``path`` with ``handler``.

        ``authorize``, when given, sees the upgrade request first (an :class:`HttpRequest` with
        headers and ``target``): returning an :class:`HttpResponse` refuses the connection with
        it (401, 403 ...), returning ``None`` lets it through.

        ``handler`` is ``async handler(ws, service, settings)`` or simply ``async handler(ws)``
        (told apart by its number of positional parameters). ``ws`` is a
        ``websockets.asyncio.server.ServerConnection``; ``ws.request`` holds the path, query and
        headers. The connection closes when the handler returns. Feed audio with
        ``service.open_stream`` / ``push`` / ``end_stream``: events reach ``/ws`` clients through
        the service. May be called before or after :meth:`start`.
        """
        if not path.startswith("/"):
            raise ValueError(f"route path must start with '/': {path!r}")
        if path in self._ws_routes or any(p == path for _, p in self._http_routes):
            raise ValueError(f"route {path} is already registered")
        positional = [
            p
            for p in inspect.signature(handler).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        if len(positional) == 1:
            self._ws_routes[path] = lambda ws, service, settings: handler(ws)
        else:
            self._ws_routes[path] = handler
        if authorize is not None:
            self._ws_authorize[path] = authorize

    def add_http_route(self, method: str, path: str, handler: HttpHandler) -> None:
        """Answer ``method path`` (GET or POST) with ``handler(HttpRequest) -> HttpResponse``.

        The handler may be a coroutine function. POST bodies are limited to
        ``max_upload_bytes``. May be called before or after :meth:`start`.
        """
        method = method.upper()
        if method not in ("GET", "POST"):
            raise ValueError(f"only GET and POST routes are supported, not {method}")
        if (method, path) in self._http_routes or path in self._ws_routes:
            raise ValueError(f"route {method} {path} is already registered")
        self._http_routes[(method, path)] = handler

    def add_tcp_listener(
        self, name: str, handler: TcpHandler, host: str | None = None, port: int = 0
    ) -> None:
        """Open an extra raw TCP listener (e.g. Asterisk AudioSocket) on :meth:`start`.

        Each connection runs ``await handler(reader, writer, service, settings)``. ``host``
        defaults to the server's host; port 0 picks a free port, see :attr:`tcp_ports`.
        """
        if name in self._tcp:
            raise ValueError(f"TCP listener {name!r} is already registered")
        self._tcp[name] = (handler, host, port)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on ``settings.host``/``settings.port`` (port 0: any free port), then open the
        extra TCP listeners.

        Raises :class:`ListenError` naming the listener and the address that could not be
        opened (typically a port in use); what was already open is closed again.
        """
        self._loop = asyncio.get_running_loop()
        s = self.settings
        self.service.add_listener(self.broadcast, self._loop)
        try:
            self._ws_server = await serve(
                self._dispatch,
                s.host,
                s.port,
                process_request=self._process_request,
                create_connection=lambda *a, **kw: _FrontDoor(self, *a, **kw),
                # Oversized messages up to twice the limit get a readable error from us; beyond
                # that websockets closes with 1009 before buffering them.
                max_size=s.max_message_bytes * 2,
                ping_interval=s.ping_interval,
                ping_timeout=s.ping_timeout,
                # Per-client deflate compresses every broadcast once per client; events are small.
                compression=None,
                server_header=f"emotion-monitor/{_version()}",
            )
        except OSError as exc:
            self.service.remove_listener(self.broadcast)
            raise ListenError.of("the dashboard and websockets", s.host, s.port, exc) from exc
        self._port = self._ws_server.sockets[0].getsockname()[1]
        for name, (handler, host, port) in self._tcp.items():
            try:
                self._tcp_servers[name] = await asyncio.start_server(
                    lambda r, w, h=handler: h(r, w, self.service, self.settings),
                    host or s.host,
                    port,
                )
            except OSError as exc:
                await self.stop()
                raise ListenError.of(f"the {name} listener", host or s.host, port, exc) from exc

    async def stop(self) -> None:
        """Close every listener and connection (code 1001); the service keeps running."""
        self.service.remove_listener(self.broadcast)
        for srv in self._tcp_servers.values():
            srv.close()
        if self._ws_server is not None:
            self._ws_server.close()
            await self._ws_server.wait_closed()
        for srv in self._tcp_servers.values():
            await srv.wait_closed()
        self._tcp_servers.clear()

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return self._port

    @property
    def url(self) -> str:
        """Dashboard URL."""
        host = self.settings.host
        host = f"[{host}]" if ":" in host else ("127.0.0.1" if host in ("", "0.0.0.0") else host)
        return f"http://{host}:{self.port}/"

    @property
    def tcp_ports(self) -> dict[str, int]:
        """Bound port of each extra TCP listener."""
        return {n: srv.sockets[0].getsockname()[1] for n, srv in self._tcp_servers.items()}

    @property
    def clients(self) -> int:
        """Connected event subscribers (``/ws`` and ``/ingest``)."""
        return len(self._clients)

    # -- events out -------------------------------------------------------------------------

    def broadcast(self, messages: list[dict]) -> None:
        """Queue service messages to every interested client (runs on the server's loop)."""
        for msg in messages:
            if msg.get("type") == "event":
                self._observe_latency(msg.get("latency_ms") or 0.0)
            try:
                text = protocol.encode(msg)
            except ValueError:  # NaN/inf has no JSON spelling; a model bug, not a client's
                log.warning("dropping a message that is not valid JSON: %.200r", msg)
                continue
            stream = msg.get("stream")
            for client in self._clients:
                if client.wants(stream):
                    self._offer(client, text)

    def _offer(self, client: _Client, text: str) -> None:
        self.stats["messages_queued"] += 1
        if not client.offer(text):
            self.stats["messages_dropped"] += 1

    def _observe_latency(self, latency_ms: float) -> None:
        seconds = latency_ms / 1000
        self._latency_sum += seconds
        i = next((i for i, b in enumerate(LATENCY_BUCKETS_S) if seconds <= b), -1)
        self._latency_counts[i] += 1

    # -- websocket handlers -----------------------------------------------------------------

    async def _dispatch(self, ws: ServerConnection) -> None:
        handler = self._ws_routes.get(urlsplit(ws.request.path).path)
        if handler is None:  # process_request lets only known routes through; be safe anyway
            await ws.close(1008, "no such websocket route")
            return
        await handler(ws, self.service, self.settings)

    def _register(self, ws: ServerConnection, streams: set[str] | None) -> _Client | None:
        if len(self._clients) >= self.settings.max_clients:
            return None
        client = _Client(ws, self.settings.client_queue, streams)
        self._clients.add(client)
        return client

    async def _refuse_full(self, ws: ServerConnection) -> None:
        self.stats["clients_refused"] += 1
        reason = f"server full: {self.settings.max_clients} clients; retry later"
        await ws.close(CLOSE_TRY_AGAIN_LATER, reason)

    def _hello(self) -> str:
        s = self.settings
        return protocol.Hello(
            server=_version(),
            limits={
                "max_clients": s.max_clients,
                "client_queue": s.client_queue,
                "max_message_bytes": s.max_message_bytes,
                "max_streams": s.max_streams,
                "sample_rates": [protocol.MIN_SAMPLE_RATE, protocol.MAX_SAMPLE_RATE],
                "formats": list(protocol.SAMPLE_FORMATS),
                "max_channels": protocol.MAX_CHANNELS,
                "ping_interval": s.ping_interval,
            },
            streams=self.service.streams,
            model=self.service.engine.model.describe(),
            settings=_jsonable(s.to_dict()),
        ).to_json()

    def _client_error(self, client: _Client, err: protocol.ProtocolError) -> bool:
        """Report an error to the client; returns True when the connection must close."""
        self.stats["protocol_errors"] += 1
        client.errors += 1
        self._offer(client, err.to_message().to_json())
        return err.fatal or client.errors >= MAX_ERRORS

    async def _close(self, client: _Client, err: protocol.ProtocolError) -> None:
        await client.drain()
        reason = "too many protocol errors" if not err.fatal else str(err)
        closing = asyncio.create_task(client.ws.close(err.close_code, reason[:120]))
        # Keep reading: websockets stops reading the socket while unread messages pile up, and
        # the peer's close frame would wait behind them until close_timeout.
        with contextlib.suppress(ConnectionClosed):
            async for _ in client.ws:
                pass
        await closing

    def _check_size(self, message: str | bytes) -> None:
        limit = self.settings.max_message_bytes
        if len(message) > limit:
            raise protocol.ProtocolError(
                "too_big",
                f"message of {len(message)} bytes exceeds the limit of {limit}",
                fatal=True,
                close_code=1009,
            )

    async def _handle_events(self, ws: ServerConnection, service, settings) -> None:
        """``/ws``: hello, then events; the client may send ``subscribe``."""
        client = self._register(ws, None)
        if client is None:
            return await self._refuse_full(ws)
        try:
            client.offer(self._hello())
            async for message in ws:
                try:
                    self._check_size(message)
                    if isinstance(message, bytes):
                        raise protocol.ProtocolError(
                            "unexpected_binary", "/ws takes JSON text only"
                        )
                    msg = protocol.decode(message)
                    if not isinstance(msg, protocol.Subscribe):
                        raise protocol.ProtocolError(
                            "unexpected_type", f"{msg.TYPE!r} is for /ingest; /ws takes subscribe"
                        )
                    client.streams = None if msg.streams is None else set(msg.streams)
                    self._offer(client, protocol.Subscribed(msg.streams).to_json())
                except protocol.ProtocolError as err:
                    if self._client_error(client, err):
                        return await self._close(client, err)
        except ConnectionClosed:
            pass  # gone without a close frame (e.g. keepalive timeout); nothing to tell it
        finally:
            self._unregister(client)

    async def _handle_ingest(self, ws: ServerConnection, service, settings) -> None:
        """``/ingest``: ``start``, binary PCM frames, ``stop``; events for the stream come back."""
        client = self._register(ws, set())  # hears only its own stream once started
        if client is None:
            return await self._refuse_full(ws)
        ingest = _Ingest(self.service, self.stats)
        try:
            client.offer(self._hello())
            async for message in ws:
                try:
                    self._check_size(message)
                    if isinstance(message, bytes):
                        ingest.audio(message)
                        continue
                    msg = protocol.decode(message)
                    if isinstance(msg, protocol.Start):
                        if not msg.stream:
                            self._ingest_count += 1
                            msg.stream = f"ingest-{self._ingest_count}"
                        ingest.start(msg, ws.remote_address)
                        # Only once the stream is ours: a refused id must not leak another
                        # client's events. stream_started is published later by the worker.
                        client.streams = {msg.stream}
                    elif isinstance(msg, protocol.Stop):
                        if ingest.fmt is None:
                            raise protocol.ProtocolError("not_started", "no stream to stop")
                        ingest.stop()
                    else:
                        raise protocol.ProtocolError(
                            "unexpected_type", "/ingest takes start, binary audio and stop"
                        )
                except protocol.ProtocolError as err:
                    if self._client_error(client, err):
                        ingest.stop()
                        return await self._close(client, err)
        except ConnectionClosed:
            pass  # the stream is ended below, the analysed tail still reaches /ws clients
        finally:
            ingest.stop()
            self._unregister(client)

    def _unregister(self, client: _Client) -> None:
        self._clients.discard(client)
        client.task.cancel()

    # -- plain HTTP -------------------------------------------------------------------------

    async def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if request.method != "GET":  # POST never gets here (front door); the rest is refused
            resp = HttpResponse.error(405, "method_not_allowed", f"{request.method} is not served")
            resp.headers["Allow"] = "GET, POST"
            return _to_ws_response(resp)
        if path in self._ws_routes:
            # Only the browser-facing routes: telephony platforms may send an Origin of their own.
            if path in BROWSER_ROUTES and not _same_origin(request.headers):
                return _to_ws_response(
                    HttpResponse.error(403, "forbidden_origin", "cross-origin websocket refused")
                )
            authorize = self._ws_authorize.get(path)
            refusal = authorize(_get_request(request)) if authorize is not None else None
            # None: websockets goes on with the upgrade (a non-upgrade GET gets 426 from it)
            return None if refusal is None else _to_ws_response(refusal)
        route = self._http_routes.get(("GET", path))
        if route is not None:
            return _to_ws_response(await _call(route, _get_request(request)))
        return _to_ws_response(self._static(path))

    def _static(self, path: str) -> HttpResponse:
        name = "index.html" if path in ("/", "/index.html") else path.removeprefix("/static/")
        # Only plain names of files that exist in the folder: no traversal, no listing.
        candidates = {p.name: p for p in self.static_dir.glob("*") if p.is_file()}
        if "/" in name or name not in candidates:
            return HttpResponse.error(404, "not_found", f"nothing at {path}")
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype.endswith("javascript"):
            ctype += "; charset=utf-8"
        body = candidates[name].read_bytes()
        return HttpResponse(200, body, ctype, {"Cache-Control": "no-cache"})

    def _healthz(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse.json(
            {
                "ok": True,
                "v": PROTOCOL_VERSION,
                "model": self.service.engine.model.describe(),
                "streams": self.service.streams,
                "clients": self.clients,
            }
        )

    def _metrics(self, request: HttpRequest) -> HttpResponse:
        eng, svc = self.service.engine.stats, self.service.stats
        lines: list[str] = []

        def metric(name: str, kind: str, value: float, help_text: str) -> None:
            lines.extend([f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"])

        p = "emotion_monitor_"
        metric(p + "windows_total", "counter", eng["windows"], "Windows analysed.")
        metric(p + "speech_windows_total", "counter", eng["speech_windows"], "Speech windows.")
        metric(p + "events_total", "counter", eng["events"], "Events produced.")
        metric(
            p + "windows_dropped_total",
            "counter",
            eng["windows_dropped"],
            "Windows dropped because inference fell behind.",
        )
        metric(
            p + "chunks_dropped_total",
            "counter",
            svc["chunks_dropped"],
            "Audio chunks dropped because the service inbox was full.",
        )
        metric(
            p + "messages_queued_total",
            "counter",
            self.stats["messages_queued"],
            "Messages queued to clients.",
        )
        metric(
            p + "messages_dropped_total",
            "counter",
            self.stats["messages_dropped"],
            "Messages dropped from slow clients' queues.",
        )
        metric(
            p + "clients_refused_total",
            "counter",
            self.stats["clients_refused"],
            "Connections refused because max_clients was reached.",
        )
        metric(
            p + "protocol_errors_total",
            "counter",
            self.stats["protocol_errors"],
            "Bad client messages answered with an error.",
        )
        metric(
            p + "ingest_nonfinite_samples_total",
            "counter",
            self.stats["nonfinite_samples"],
            "NaN/Inf samples received on /ingest, replaced by silence.",
        )
        metric(p + "clients", "gauge", self.clients, "Connected event subscribers.")
        metric(p + "streams", "gauge", len(self.service.streams), "Open streams.")
        name = p + "latency_seconds"
        lines += [f"# HELP {name} Window completion to event latency.", f"# TYPE {name} histogram"]
        total = 0
        for bound, count in zip((*LATENCY_BUCKETS_S, "+Inf"), self._latency_counts, strict=True):
            total += count
            lines.append(f'{name}_bucket{{le="{bound}"}} {total}')
        lines += [f"{name}_sum {self._latency_sum:.6f}", f"{name}_count {total}"]
        return HttpResponse(
            200, ("\n".join(lines) + "\n").encode(), "text/plain; version=0.0.4; charset=utf-8"
        )

    async def _predict(self, request: HttpRequest) -> HttpResponse:
        """``POST /predict``: the body is an audio file (raw, or one multipart file field)."""
        self.stats["predict_requests"] += 1
        try:
            analyze = importlib.import_module("emotion_monitor.streamer.analyze")
            decode_upload, predict_response = analyze.decode_upload, analyze.predict_response
        except (ImportError, AttributeError):
            return HttpResponse.error(501, "not_available", "/predict needs streamer/analyze.py")
        data, filename = request.body, request.query.get("filename", "")
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            data, filename = _multipart_file(request)
        # messages start with the name: a nameless body must not read ": cannot decode..."
        filename = filename or "upload"
        if not data:
            return HttpResponse.error(400, "empty_upload", "send an audio file as the body")
        # One upload at a time per CPU budget: inference shares the cores with the live streams.
        if self._predicting >= 2:
            return HttpResponse.error(503, "busy", "two uploads are being analysed; retry soon")
        self._predicting += 1
        model = self.service.engine.model

        def work() -> dict:
            return predict_response(decode_upload(data, filename), model, self.settings, filename)

        try:
            return HttpResponse.json(await asyncio.to_thread(work))
        except (AudioError, ValueError) as exc:
            return HttpResponse.error(400, "bad_audio", str(exc))
        finally:
            self._predicting -= 1

    def _serve_post(self, transport: asyncio.Transport, head: bytes) -> None:
        """Take over a connection whose request line says POST (called by the front door)."""
        reader = asyncio.StreamReader(limit=HEAD_LIMIT)
        proto = asyncio.StreamReaderProtocol(reader, self._http_exchange)
        transport.set_protocol(proto)
        proto.connection_made(transport)
        proto.data_received(head)

    async def _http_exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        try:
            response = await self._read_and_answer(reader, writer)
        except Exception:  # a handler bug must not kill the server; the client gets a 500
            log.exception("POST handler failed")
            response = HttpResponse.error(500, "internal", "the server failed; see its log")
        try:
            writer.write(_serialize(response))
            await writer.drain()
            # Lingering close: a client still sending a refused body (413 before reading it)
            # would get a reset instead of the answer if we closed with unread data pending.
            writer.write_eof()
            async with asyncio.timeout(LINGER_S):
                while await reader.read(1 << 16):
                    pass
        except (ConnectionError, TimeoutError):
            pass
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
            headers = _lower(h.split(":", 1) for h in lines[1:] if h)
        except ValueError:
            return HttpResponse.error(400, "bad_request", "malformed request line or header")
        path = urlsplit(target).path
        route = self._http_routes.get((method, path))
        if route is None:
            allowed = [m for m, p in self._http_routes if p == path]
            status = 405 if allowed or path in self._ws_routes else 404
            return HttpResponse.error(status, "not_found", f"no {method} route at {path}")
        if "chunked" in headers.get("transfer-encoding", ""):
            return HttpResponse.error(411, "length_required", "send a Content-Length body")
        try:
            length = int(headers.get("content-length", "0"))  # none: an empty body (RFC 9112)
        except ValueError:
            return HttpResponse.error(400, "bad_request", "Content-Length is not a number")
        if not 0 <= length <= self.max_upload_bytes:
            return HttpResponse.error(
                413, "too_big", f"body of {length} bytes exceeds {self.max_upload_bytes} bytes"
            )
        if headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            body = await asyncio.wait_for(reader.readexactly(length), 120)
        except (asyncio.IncompleteReadError, TimeoutError):
            return HttpResponse.error(400, "bad_request", "body shorter than Content-Length")
        req = HttpRequest(method, path, _query(target), headers, body, target=target)
        return await _call(route, req)


class _Ingest:
    """State of one ``/ingest`` connection: at most one open stream at a time."""

    def __init__(self, service: MonitorService, stats: dict[str, int]):
        self.service = service
        self.stats = stats
        self.fmt: protocol.Start | None = None
        self.resampler: StreamResampler | None = None

    def start(self, msg: protocol.Start, peer: Any) -> None:
        if self.fmt is not None:
            raise protocol.ProtocolError(
                "already_started", f"stream {self.fmt.stream!r} is open; send stop first"
            )
        try:
            self.service.open_stream(
                msg.stream,
                source="ingest",
                sample_rate=msg.sample_rate,
                format=msg.format,
                channels=msg.channels,
                peer=":".join(map(str, peer[:2])) if isinstance(peer, tuple) else str(peer),
            )
        except StreamLimitError as exc:
            raise protocol.ProtocolError(
                "stream_limit", str(exc), fatal=True, close_code=CLOSE_TRY_AGAIN_LATER
            ) from None
        except ValueError as exc:  # the id is taken by another open stream
            raise protocol.ProtocolError("stream_exists", str(exc)) from None
        self.fmt = msg
        self.resampler = StreamResampler(msg.sample_rate)

    def audio(self, data: bytes) -> None:
        if self.fmt is None or self.resampler is None:
            raise protocol.ProtocolError("not_started", "send a start message before audio")
        if len(data) % self.fmt.frame_bytes:
            # A torn frame shifts every later sample and channel: the stream cannot continue.
            raise protocol.ProtocolError(
                "bad_audio",
                f"{len(data)} bytes is not whole {self.fmt.format} frames of "
                f"{self.fmt.channels} channel(s)",
                fatal=True,
                close_code=1003,
            )
        frames = pcm_to_float(data, self.fmt.format, self.fmt.channels)
        frames, nonfinite = silence_nonfinite(frames)  # before resampling
        self.stats["nonfinite_samples"] += nonfinite
        samples = self.resampler.process(to_mono(frames))
        if not len(samples):
            return
        try:
            self.service.push(self.fmt.stream, samples)
        except KeyError:  # the service ended the stream (shutting down): nothing to analyse
            raise protocol.ProtocolError(
                "stream_gone", "the server ended this stream", fatal=True, close_code=1001
            ) from None

    def stop(self) -> None:
        """End the open stream, if any (idempotent, never raises)."""
        if self.fmt is None or self.resampler is None:
            return
        stream, tail = self.fmt.stream, self.resampler.flush()
        self.fmt = self.resampler = None
        with contextlib.suppress(KeyError):  # already ended by the service
            if len(tail):
                self.service.push(stream, tail)
        self.service.end_stream(stream)


# -- helpers ---------------------------------------------------------------------------------


async def _call(handler: HttpHandler, request: HttpRequest) -> HttpResponse:
    result = handler(request)
    return await result if inspect.isawaitable(result) else result


def _to_ws_response(resp: HttpResponse) -> Response:
    headers = Headers(resp.headers)
    headers["Content-Type"] = resp.content_type
    headers["Content-Length"] = str(len(resp.body))
    return Response(resp.status, http.HTTPStatus(resp.status).phrase, headers, resp.body)


def _serialize(resp: HttpResponse) -> bytes:
    head = [
        f"HTTP/1.1 {resp.status} {http.HTTPStatus(resp.status).phrase}",
        f"Content-Type: {resp.content_type}",
        f"Content-Length: {len(resp.body)}",
        "Connection: close",
        *(f"{k}: {v}" for k, v in resp.headers.items()),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + resp.body


def _same_origin(headers: Headers) -> bool:
    """Browsers send Origin; any other web page must not read a local monitor's calls.

    Clients that are not browsers (telephony platforms, scripts) send no Origin and pass.
    """
    origin = headers.get("Origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc.lower() == headers.get("Host", "").lower()


def _lower(items) -> dict[str, str]:
    return {k.strip().lower(): v.strip() for k, v in items}


def _query(target: str) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(urlsplit(target).query).items()}


def _get_request(request: Request) -> HttpRequest:
    """A GET as websockets parsed it, in the shape route handlers and ``authorize`` hooks see."""
    path = urlsplit(request.path).path
    headers = _lower(request.headers.raw_items())
    return HttpRequest("GET", path, _query(request.path), headers, target=request.path)


def _multipart_file(request: HttpRequest) -> tuple[bytes, str]:
    """The first file field of a multipart/form-data body (browsers' form uploads)."""
    raw = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode() + request.body
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
    for part in msg.iter_parts() if msg.is_multipart() else ():
        if part.get_filename() is not None or part.get_content_maintype() == "audio":
            return part.get_payload(decode=True) or b"", part.get_filename() or ""
    return b"", ""


def _jsonable(value: Any) -> Any:
    """Settings hold tuples and dataclasses; JSON wants lists and dicts."""
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("emotion-monitor")
    except Exception:  # not installed (running from a checkout)
        return "0+unknown"


def _integrations():
    """The call-center integration module, or None when it is not part of this install."""
    if importlib.util.find_spec(INTEGRATIONS) is None:
        return None
    return importlib.import_module(INTEGRATIONS)


# -- `emotion-monitor serve` -----------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``emotion-monitor serve``."""
    from emotion_monitor.streamer.run_command import add_stdin_arguments

    parser.add_argument(
        "--source",
        default=None,
        help="mic | file:PATH | stdin | demo | auto (the microphone if there is one, else the "
        "demo); default: none, the server waits for audio on /ingest",
    )
    parser.add_argument("--device", help="input device index or name for --source mic")
    parser.add_argument("--model", default=None, help="model spec (default: the shipped model)")
    parser.add_argument("--host", default=None, help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default 8765; 0: any)")
    parser.add_argument("--window", type=float, default=None, help="window length, seconds")
    parser.add_argument("--hop", type=float, default=None, help="hop between windows, seconds")
    parser.add_argument("--config", default=None, help="TOML settings file (flags win)")
    parser.add_argument(
        "--no-vad",
        dest="vad",
        action="store_false",
        default=None,
        help="analyse every window, speech or not",
    )
    add_stdin_arguments(parser)
    api = _integrations()
    if api is not None:
        api.add_arguments(parser)


def main(args: argparse.Namespace) -> int:
    """Run engine + server (+ an optional source) until Ctrl-C / SIGTERM.

    Exit codes: 0 stopped, 1 model or server error, 2 bad flags or source.
    """
    import tempfile

    from emotion_monitor.streamer.run_command import (
        check_stdin_flags,
        load_emotion_model,
        make_source,
    )

    try:
        flags = dict(
            host=args.host,
            port=args.port,
            window=args.window,
            hop=args.hop,
            model=args.model,
            vad=args.vad,
        )
        if args.config:
            settings = Settings.from_toml(args.config, **flags)
        else:
            settings = Settings().replace(**flags)
        api = _integrations()
        if api is not None:
            settings = api.settings_from_args(settings, args)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="emotion-monitor-") as tmp:
        source = None
        try:
            if args.source:
                args.realtime = True  # a live monitor plays files at the speed of the audio
                spec = None if args.source == "auto" else args.source
                source = make_source(
                    argparse.Namespace(**{**vars(args), "source": spec}), Path(tmp)
                )
            else:
                check_stdin_flags(args, None)
        except (AudioError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        try:
            model = load_emotion_model(settings.model, settings.device)
        except Exception as exc:
            print(
                f"error: cannot load model {settings.model or 'default'!r}: {exc}", file=sys.stderr
            )
            return 1
        if settings.alerts:  # checked here so hello shows the rules that run, and errors are short
            from emotion_monitor.streamer.alerts import fit_rules_to_model

            try:
                settings = settings.replace(alerts=fit_rules_to_model(settings.alerts, model))
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
        try:
            asyncio.run(_serve(model, settings, args, api, source))
        except ListenError as exc:  # a port is taken: the message names which listener and port
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except OSError as exc:
            print(
                f"error: cannot serve on {settings.host}:{settings.port}: {exc.strerror or exc}",
                file=sys.stderr,
            )
            return 1
    return 0


async def _serve(model, settings: Settings, args: argparse.Namespace, api: Any, source) -> None:
    from emotion_monitor.streamer.engine import Engine

    service = MonitorService(Engine(model, settings)).start()
    server = Server(service, settings)
    extras = thread = None
    try:
        if api is not None:
            track = getattr(args, "audiosocket_track", None) or "customer"
            extras = await api.attach(
                server, service, settings, audiosocket_track=track, **api.auth_from_args(args)
            )
        await server.start()
        print(f"emotion-monitor dashboard: {server.url}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if source is not None:

            def report(err: Any) -> None:  # a failing microphone shows up on the dashboard
                loop.call_soon_threadsafe(server.broadcast, [err.to_dict()])

            thread = threading.Thread(
                target=run_source, args=(source, service, report), name="source", daemon=True
            )
            thread.start()
        await stop.wait()
    finally:
        if source is not None:
            source.stop()
            if thread is not None:
                await asyncio.to_thread(thread.join, source.close_timeout + 1)
        if extras is not None:
            await extras.close_listeners()
        await server.stop()
        await asyncio.to_thread(service.stop)  # flushes open streams
        if extras is not None:
            await extras.close()  # after the service, so the recorder gets the last events


def run_source(
    source: Any, service: MonitorService, on_error: Callable[[Any], None] | None = None
) -> None:
    """Feed a :mod:`~emotion_monitor.streamer.sources` source into the service (own thread).

    The stream is named after the source (``mic``, ``stdin``, the file name). ``SourceError``
    notices (a microphone that vanished and is being retried) go to ``on_error``. Ends the stream
    when the source ends or is stopped.
    """
    from emotion_monitor.streamer.events import SourceError

    service.open_stream(source.name, source=source.describe())
    try:
        for item in source:
            if isinstance(item, SourceError):
                if on_error is not None:
                    on_error(item)
            else:
                service.push(source.name, item)
    except Exception as exc:  # the server stays up for /ingest clients; say why the source died
        print(f"source {source.name} failed: {exc}", file=sys.stderr, flush=True)
    finally:
        service.end_stream(source.name)
