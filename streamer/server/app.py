"""The server: routes and lifecycle of the dashboard, event push, audio ingest and HTTP on one port.

::

    GET  /            the live dashboard (static files of the web_dashboard package)
    GET  /healthz     JSON: ok, model, streams, clients
    GET  /metrics     Prometheus text
    WS   /ws          protocol-v1 events (hello first; ``subscribe`` filters streams)
    WS   /ingest      audio in (``start`` + binary PCM frames + ``stop``), events for it out
    POST /predict     one uploaded recording -> one JSON answer
    GET  /floor, /call/<id>   the supervisor wall and the agent view (see :mod:`.floor`)

Extending it (the telephony providers and friends) -- call before :meth:`Server.start`::

    server.add_websocket_route("/twilio", handler)       # async handler(ws, service, settings)
    server.add_http_route("POST", "/twilio/voice", fn)   # fn(HttpRequest) -> HttpResponse
    server.add_tcp_listener("audiosocket", handler, port=9092)
                                     # async handler(reader, writer, service, settings)

The rooms beside this one: :mod:`.http` (the hand-written HTTP beside websockets), :mod:`.fanout`
(per-client queues), :mod:`.ingest`, :mod:`.metrics`, :mod:`.predict`, :mod:`.status` (hello,
/healthz, /metrics).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.resources
import inspect
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import emotion_monitor.streamer.server.status as status
from emotion_monitor.streamer.decode import MAX_UPLOAD_BYTES
from emotion_monitor.streamer.redact import RedactingLogger
from emotion_monitor.streamer.server.access import Access
from emotion_monitor.streamer.server.fanout import Fanout
from emotion_monitor.streamer.server.floor import page_file
from emotion_monitor.streamer.server.http import (
    FrontDoor,
    HttpHandler,
    HttpRequest,
    HttpResponse,
    PostHandler,
    call_handler,
    get_request,
    static_response,
    to_ws_response,
)
from emotion_monitor.streamer.server.metrics import LatencyHistogram
from emotion_monitor.streamer.server.predict import PredictRoute
from emotion_monitor.streamer.server.sockets import EventSockets
from emotion_monitor.streamer.service import MonitorService
from emotion_monitor.streamer.settings import Settings
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

BROWSER_ROUTES = ("/ws", "/ingest")  # websocket routes that refuse cross-origin pages

WebSocketHandler = Callable[[ServerConnection, MonitorService, Settings], Awaitable[None]]
TcpHandler = Callable[
    [asyncio.StreamReader, asyncio.StreamWriter, MonitorService, Settings], Awaitable[None]
]


def dashboard_files() -> Path:
    """The packaged dashboard folder, found through the import system."""
    return Path(str(importlib.resources.files("emotion_monitor.web_dashboard") / "static"))


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
        access, tls: who may connect (:class:`.access.Access`; default: open) and TLS (https/wss).

    Lifecycle: register routes, ``await start()``, ..., ``await stop()``. The server does not
    start or stop the service; its owner does.
    """

    def __init__(
        self,
        service: MonitorService,
        settings: Settings | None = None,
        static_dir: Path | None = None,
        max_upload_bytes: int = MAX_UPLOAD_BYTES,
        access: Access | None = None,
        tls: ssl.SSLContext | None = None,
    ):
        self.access = access or Access()
        self.tls = tls
        self.service = service
        self.settings = settings or service.engine.settings
        self.static_dir = static_dir or dashboard_files()
        self._ws_authorize: dict[str, Callable[[HttpRequest], HttpResponse | None]] = {}
        self._tcp: dict[str, tuple[TcpHandler, str | None, int]] = {}
        self._tcp_servers: dict[str, asyncio.Server] = {}
        self._ws_server = None
        self._port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stats = {
            "messages_queued": 0,
            "messages_dropped": 0,
            "clients_refused": 0,
            "protocol_errors": 0,
            "predict_requests": 0,
            "nonfinite_samples": 0,
        }
        self.latency = LatencyHistogram()
        self.fanout = Fanout(
            self.settings.max_clients,
            self.settings.client_queue,
            self.stats,
            self.latency.observe_event,
        )
        self._sockets = EventSockets(
            service, self.settings, self.fanout, self.stats, lambda: status.hello(self)
        )
        self._ws_routes: dict[str, WebSocketHandler] = {
            "/ws": self._sockets.events,
            "/ingest": self._sockets.ingest,
        }
        #: largest message each websocket route takes (declared in hello)
        self.max_message_bytes: dict[str, int] = dict(self._sockets.max_message_bytes)
        self._http_routes: dict[tuple[str, str], HttpHandler] = {
            ("GET", "/healthz"): lambda request: status.healthz(self),
            ("GET", "/metrics"): lambda request: status.metrics(self),
            ("POST", "/predict"): PredictRoute(service, self.settings, self.stats),
        }
        self._posts = PostHandler(
            self._http_routes, self._ws_routes, max_upload_bytes, self.access.authenticate
        )

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
        it (401, 403 ...), returning ``None`` lets it through. It replaces the server's token
        check on this route (a provider's own credential, such as Twilio's signature).

        ``handler`` is ``async handler(ws, service, settings)`` or simply ``async handler(ws)``
        (told apart by its number of positional parameters). ``ws`` is a
        ``websockets.asyncio.server.ServerConnection``; ``ws.request`` holds the path, query and
        headers. The connection closes when the handler returns. Feed audio with
        ``service.open_stream`` / ``push`` / ``end_stream``: events reach ``/ws`` clients through
        the service. May be called before or after :meth:`start`. Messages over the handler's
        ``max_message_bytes`` (default: the settings') close with 1009 before being buffered.
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
        limit = getattr(handler, "max_message_bytes", None) or self.settings.max_message_bytes
        self.max_message_bytes[path] = limit

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
                create_connection=lambda *a, **kw: FrontDoor(self._posts.take_over, *a, **kw),
                # Oversized messages up to twice the limit get a readable error from us; beyond
                # that websockets closes with 1009 before buffering them.
                max_size=s.max_message_bytes * 2,
                ping_interval=s.ping_interval,
                ping_timeout=s.ping_timeout,
                ssl=self.tls,
                logger=RedactingLogger(logging.getLogger("websockets.server")),
                # Per-client deflate compresses every broadcast once per client; events are small.
                compression=None,
                server_header=f"emotion-monitor/{status.version()}",
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
    def max_upload_bytes(self) -> int:
        """Largest ``POST`` body accepted (may be changed at any time)."""
        return self._posts.max_body

    @max_upload_bytes.setter
    def max_upload_bytes(self, value: int) -> None:
        self._posts.max_body = value

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return self._port

    @property
    def url(self) -> str:
        """Dashboard URL."""
        host = self.settings.host
        host = f"[{host}]" if ":" in host else ("127.0.0.1" if host in ("", "0.0.0.0") else host)
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}/"

    @property
    def tcp_ports(self) -> dict[str, int]:
        """Bound port of each extra TCP listener."""
        return {n: srv.sockets[0].getsockname()[1] for n, srv in self._tcp_servers.items()}

    @property
    def clients(self) -> int:
        """Connected event subscribers (``/ws`` and ``/ingest``)."""
        return len(self.fanout.clients)

    # -- events out -------------------------------------------------------------------------

    def broadcast(self, messages: list[dict]) -> None:
        """Queue service messages to every interested client (runs on the server's loop)."""
        self.fanout.broadcast(messages)

    # -- websocket handlers -----------------------------------------------------------------

    async def _dispatch(self, ws: ServerConnection) -> None:
        handler = self._ws_routes.get(urlsplit(ws.request.path).path)
        if handler is None:  # process_request lets only known routes through; be safe anyway
            await ws.close(1008, "no such websocket route")
            return
        await handler(ws, self.service, self.settings)

    # -- plain HTTP -------------------------------------------------------------------------

    async def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if request.method != "GET":  # POST never gets here (front door); the rest is refused
            resp = HttpResponse.error(405, "method_not_allowed", f"{request.method} is not served")
            resp.headers["Allow"] = "GET, POST"
            return to_ws_response(resp)
        if path in self._ws_routes:
            limit = self.max_message_bytes[path]
            ws.protocol.max_message_size = self._sockets.frame_limit(path, limit)
            browser = path in BROWSER_ROUTES  # telephony platforms may send an Origin of their own
            own_check = self._ws_authorize.get(path)
            refusal = self.access.check_upgrade(get_request(request), browser, own_check)
            # None: websockets goes on with the upgrade (a non-upgrade GET gets 426 from it)
            return None if refusal is None else to_ws_response(refusal)
        refusal = self.access.authenticate(get_request(request))
        if refusal is not None:  # every page, static file and GET route but /healthz
            return to_ws_response(refusal)
        route = self._http_routes.get(("GET", path))
        if route is not None:
            return to_ws_response(await call_handler(route, get_request(request)))
        page = page_file(path)
        return to_ws_response(static_response(self.static_dir, page or path))
