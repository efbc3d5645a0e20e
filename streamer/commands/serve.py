"""``emotion-monitor serve``: the engine, the websocket server and the call-center integrations
(Twilio, AudioHook, AudioSocket, alerts, webhook, recorder), optionally fed by a source."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import ssl
import sys
import tempfile
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from emotion_monitor.streamer.alerts import AlertMonitor, fit_rules_to_model, load_alert_rules
from emotion_monitor.streamer.alerts.rules import CUSTOMER_FRUSTRATION
from emotion_monitor.streamer.audio import AudioError
from emotion_monitor.streamer.capacity import measure_capacity
from emotion_monitor.streamer.commands.options import (
    add_analysis_arguments,
    add_model_arguments,
    add_source_arguments,
    load_inference_model,
    report_outages,
    settings_from_args,
)
from emotion_monitor.streamer.engine import Engine
from emotion_monitor.streamer.recorder import Recorder
from emotion_monitor.streamer.server.access import (
    TOKEN_ENV,
    Access,
    is_loopback,
    is_private_address,
    read_token_file,
    tls_context,
)
from emotion_monitor.streamer.server.app import ListenError, Server
from emotion_monitor.streamer.server.floor import HistoryRoute
from emotion_monitor.streamer.service import MonitorService
from emotion_monitor.streamer.settings import Settings
from emotion_monitor.streamer.sources.runner import check_stdin_flags, feed_service, make_source
from emotion_monitor.streamer.telephony.audiohook import ApiKeyCheck, AudioHookHandler
from emotion_monitor.streamer.telephony.audiosocket import AudioSocketHandler
from emotion_monitor.streamer.telephony.call import CUSTOMER
from emotion_monitor.streamer.telephony.twilio import TwilioHandler, TwilioSignatureCheck

log = logging.getLogger(__name__)

#: A task ``serve`` runs beside the server: ``async fn(server, service, settings)``.
Background = Callable[[Server, MonitorService, Settings], Awaitable[None]]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``emotion-monitor serve``."""
    add_source_arguments(
        parser,
        "default: none, the server waits for audio on /ingest (auto: the microphone if there is "
        "one, else the demo)",
    )
    add_model_arguments(parser)
    parser.add_argument("--host", default=None, help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default 8765; 0: any)")
    parser.add_argument(
        "--max-streams",
        type=lambda v: v if v == "auto" else int(v),
        metavar="N|auto",
        help="capacity: streams served at once; more are refused (1013), never degraded "
        "(default 64; auto: measured at start-up, see streamer/capacity.py)",
    )
    add_analysis_arguments(parser)
    add_access_arguments(parser)
    add_call_center_arguments(parser)


def main(args: argparse.Namespace, background: Background | None = None) -> int:
    """Run engine + server (+ an optional source) until Ctrl-C / SIGTERM.

    ``background(server, service, settings)``, when given, runs as a task once the server
    listens (``replay`` feeds its recording so) and is cancelled at shutdown.

    Exit codes: 0 stopped, 1 model or server error, 2 bad flags or source.
    """
    try:
        settings = call_center_settings(settings_from_args(args), args)
        access, tls = access_from_args(args)
        check_exposure(settings, access, args.insecure, args.audiosocket_host)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="emotion-monitor-") as tmp:
        source = None
        try:
            if args.source:
                args.realtime = True  # a live monitor plays files at the speed of the audio
                source = make_source(args, Path(tmp))
            else:
                check_stdin_flags(args, None)
        except (AudioError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        try:
            model = load_inference_model(settings, args.inference)
        except Exception as exc:
            print(
                f"error: cannot load model {settings.model or 'default'!r}: {exc}", file=sys.stderr
            )
            return 1
        if args.max_streams == "auto":
            capacity = measure_capacity(model, settings)
            print(capacity.describe(), flush=True)
            settings = settings.replace(max_streams=capacity.streams)
        if settings.alerts:  # checked here so hello shows the rules that run, and errors are short
            try:
                settings = settings.replace(alerts=fit_rules_to_model(settings.alerts, model))
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
        try:
            asyncio.run(_serve(model, settings, args, source, background, access, tls))
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


async def _serve(
    model,
    settings: Settings,
    args: argparse.Namespace,
    source,
    background: Background | None,
    access: Access,
    tls,
) -> None:
    service = MonitorService(Engine(model, settings)).start()
    # an unreachable inference tier reaches every client like a failing source (worker thread)
    report_outages(model, lambda err: service.publish([err.to_dict()]))
    server = Server(service, settings, access=access, tls=tls)
    extras = thread = task = None
    try:
        extras = await attach(
            server,
            service,
            settings,
            audiosocket_track=args.audiosocket_track,
            audiosocket_host=args.audiosocket_host,
            **auth_from_args(args),
        )
        await server.start()
        print(f"emotion-monitor dashboard: {server.url}", flush=True)
        if background is not None:
            task = asyncio.create_task(background(server, service, settings))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if source is not None:

            def report(err: Any) -> None:  # a failing microphone shows up on the dashboard
                loop.call_soon_threadsafe(server.broadcast, [err.to_dict()])

            thread = threading.Thread(
                target=feed_service, args=(source, service, report), name="source", daemon=True
            )
            thread.start()
        await stop.wait()
    finally:
        if task is not None:
            task.cancel()
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


# -- access: token, origins, TLS -------------------------------------------------------------


def add_access_arguments(parser: argparse.ArgumentParser) -> None:
    """The access flags of ``emotion-monitor serve`` (see docs/protocol.md, Security)."""
    group = parser.add_argument_group("access")
    group.add_argument(
        "--token",
        metavar="TOKEN",
        help="require this access token on every route but /healthz (default: "
        f"${TOKEN_ENV}; prefer --token-file: a flag shows in the process list)",
    )
    group.add_argument("--token-file", metavar="PATH", help="read the access token from a file")
    group.add_argument(
        "--insecure",
        action="store_true",
        help="allow serving a non-loopback address (and AudioSocket on a public one) without "
        "a token",
    )
    group.add_argument(
        "--allowed-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="also let pages of this origin (https://host[:port]) open /ws and /ingest; "
        "repeatable (default: the server's own origin only)",
    )
    group.add_argument("--tls-cert", metavar="PEM", help="serve https/wss with this certificate")
    group.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")


def access_from_args(args: argparse.Namespace) -> tuple[Access, ssl.SSLContext | None]:
    """The access policy and TLS context from the flags (``ValueError`` naming the flag)."""
    if args.token and args.token_file:
        raise ValueError("give the token once: --token or --token-file, not both")
    token = args.token or os.environ.get(TOKEN_ENV) or None
    if args.token_file:
        token = read_token_file(args.token_file)
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    tls = tls_context(args.tls_cert, args.tls_key) if args.tls_cert else None
    return Access(token, tuple(args.allowed_origin)), tls


def check_exposure(
    settings: Settings, access: Access, insecure: bool, audiosocket_host: str | None = None
) -> None:
    """Refuse (``ValueError``) to expose the calls without being told to.

    A non-loopback address needs a token; AudioSocket (on ``audiosocket_host``, default the
    server's), which has no authentication at all, needs a loopback or one private-network
    address. ``--insecure`` overrides both.
    """
    if insecure:
        return
    if not access.enabled and not is_loopback(settings.host):
        raise ValueError(
            f"refusing to serve {settings.host or 'every interface'} without a token: anyone "
            "who reaches it could read every call and inject audio. Pass --token-file PATH, "
            f"--token TOKEN or set ${TOKEN_ENV} (or --insecure to serve it open anyway)"
        )
    host = settings.host if audiosocket_host is None else audiosocket_host
    if settings.audiosocket_port is not None and not is_private_address(host):
        raise ValueError(
            f"refusing AudioSocket on {host or 'every interface'}: raw TCP AudioSocket has no "
            "authentication. Give it a private address Asterisk reaches with --audiosocket-host "
            "(or pass --insecure)"
        )


# -- the call-center integrations ----------------------------------------------------------


def add_call_center_arguments(parser: argparse.ArgumentParser) -> None:
    """The call-center flags of ``emotion-monitor serve``."""
    group = parser.add_argument_group("call center")
    group.add_argument(
        "--audiosocket-port",
        type=int,
        metavar="PORT",
        help="also listen for Asterisk AudioSocket (TCP) calls on this port",
    )
    group.add_argument(
        "--audiosocket-host",
        metavar="ADDR",
        help="address of the AudioSocket listener (default: --host); it has no authentication, "
        "so loopback or a private address only, unless --insecure",
    )
    group.add_argument(
        "--audiosocket-track",
        default=CUSTOMER,
        metavar="NAME",
        help="track name of AudioSocket audio (one direction per connection; default customer)",
    )
    group.add_argument(
        "--record",
        metavar="FILE.sqlite",
        help="store every event and alert in this SQLite file (see 'emotion-monitor report')",
    )
    group.add_argument("--webhook", metavar="URL", help="POST every alert as JSON to this URL")
    group.add_argument(
        "--twilio-auth-token",
        metavar="TOKEN",
        default=os.environ.get("TWILIO_AUTH_TOKEN"),
        help="refuse /twilio connections not signed with this Twilio auth token "
        "(default: $TWILIO_AUTH_TOKEN)",
    )
    group.add_argument(
        "--audiohook-api-key",
        metavar="KEY",
        default=os.environ.get("AUDIOHOOK_API_KEY"),
        help="refuse /audiohook connections without this X-API-KEY (default: $AUDIOHOOK_API_KEY)",
    )
    group.add_argument(
        "--public-url",
        metavar="URL",
        help="the wss:// base URL Twilio connects to, when a proxy rewrites the Host header",
    )
    group.add_argument(
        "--alerts-config",
        metavar="TOML",
        help="alert rules ([[alerts]] tables); default: customer_frustration",
    )


def call_center_settings(settings: Settings, args: argparse.Namespace) -> Settings:
    """Fold the call-center flags into the (frozen) settings.

    Raises ``ValueError`` for a bad value: the webhook URL and the AudioSocket port are checked
    by :class:`Settings` (naming ``webhook_url`` / ``audiosocket_port``), the ``--record`` folder
    and the ``--alerts-config`` file here.
    """
    if args.record and not Path(args.record).resolve().parent.is_dir():
        raise ValueError(f"--record {args.record}: the folder does not exist")
    rules = None
    if args.alerts_config:
        rules = load_alert_rules(args.alerts_config)
    elif not settings.alerts:
        rules = (CUSTOMER_FRUSTRATION,)
    return settings.replace(
        audiosocket_port=args.audiosocket_port,
        record=args.record,
        webhook_url=args.webhook,
        alerts=rules,
    )


class Integrations:
    """What :func:`attach` started. At shutdown: :meth:`close_listeners` before the server
    stops, :meth:`close` after the service has flushed (so the recorder gets the last events)."""

    def __init__(self):
        self.audiosocket: Any = None
        self.alerts: Any = None
        self.recorder: Any = None

    async def close_listeners(self) -> None:
        """End the open AudioSocket connections (their streams are flushed)."""
        if self.audiosocket is not None:
            await self.audiosocket.close_connections()

    async def close(self) -> None:
        """Flush the webhook queue and the recorder (idempotent)."""
        await self.close_listeners()
        if self.alerts is not None:
            await asyncio.to_thread(self.alerts.close)
        if self.recorder is not None:
            await asyncio.to_thread(self.recorder.close)


def auth_from_args(args: argparse.Namespace) -> dict[str, str | None]:
    """The credentials of the call-center routes from ``serve``'s flags, for :func:`attach`.

    They stay out of :class:`Settings`, which the server shows to any client."""
    return {
        "twilio_auth_token": args.twilio_auth_token,
        "audiohook_api_key": args.audiohook_api_key,
        "public_url": args.public_url,
    }


async def attach(
    server: Any,
    service: MonitorService,
    settings: Settings,
    audiosocket_track: str = CUSTOMER,
    audiosocket_host: str | None = None,
    twilio_auth_token: str | None = None,
    audiohook_api_key: str | None = None,
    public_url: str | None = None,
) -> Integrations:
    """Register the call-center integrations on a server before ``server.start()``.

    ``/twilio`` and ``/audiohook`` always, refusing unsigned Twilio connections when
    ``twilio_auth_token`` is given and AudioHook connections without ``audiohook_api_key`` when
    that is given (``public_url``: see :class:`TwilioSignatureCheck`); without them the routes
    need the server's access token when it has one (on /audiohook in ``X-API-KEY``, as Genesys
    sends it; on /twilio as a Bearer header, which Twilio cannot send); the AudioSocket TCP
    listener when ``settings.audiosocket_port`` is set (on ``audiosocket_host``, default the
    server's host); alert rules (``settings.alerts``, with
    the webhook ``settings.webhook_url``) and the SQLite recorder (``settings.record``) when
    configured, with ``GET /history`` reading the recording (the agent view of an ended call).
    Call from the server's event loop.
    """

    out = Integrations()
    if settings.record:
        out.recorder = Recorder(settings.record)
        server.add_http_route("GET", "/history", HistoryRoute(settings.record))
        service.add_listener(out.recorder.listener)  # worker thread; it only enqueues
    if settings.alerts:
        out.alerts = AlertMonitor(settings.alerts, webhook_url=settings.webhook_url)
        out.alerts.attach(service)
    twilio_check = (
        TwilioSignatureCheck(twilio_auth_token, public_url) if twilio_auth_token else None
    )
    # Genesys can send only its X-API-KEY: with no key of its own the route takes the token there
    hook_key = audiohook_api_key or server.access.token
    hook_check = ApiKeyCheck(hook_key) if hook_key else None
    server.add_websocket_route("/twilio", TwilioHandler(), authorize=twilio_check)
    server.add_websocket_route("/audiohook", AudioHookHandler(), authorize=hook_check)
    checks = {"/twilio": twilio_check, "/audiohook": hook_check}
    unchecked = [route for route, check in checks.items() if check is None]
    if unchecked and not server.access.enabled and not is_loopback(settings.host):
        log.warning(
            "%s accept(s) any caller on %s: set --twilio-auth-token / --audiohook-api-key",
            " and ".join(unchecked),
            settings.host,
        )
    if settings.audiosocket_port is not None:
        out.audiosocket = AudioSocketHandler(track=audiosocket_track)
        server.add_tcp_listener(
            "audiosocket", out.audiosocket, audiosocket_host, settings.audiosocket_port
        )
    return out
