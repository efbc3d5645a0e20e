"""Python client for the ``/ws`` event feed, with reconnection.

::

    from emotion_monitor.streamer.client import subscribe

    async for item in subscribe("ws://127.0.0.1:8765/ws", streams=["CA42"]):
        if isinstance(item, Event): ...     # emotion_monitor.streamer.protocol.Event
        else: ...                           # emotion_monitor.streamer.alerts.Alert

The server sends ``hello`` first; the client answers with ``subscribe`` (on every reconnect) and
yields decoded items. When the connection drops or cannot be opened it retries with exponential
backoff (0.5 s doubling up to ``max_backoff``), forever unless ``reconnect=False``. A server
run with a token needs it: ``subscribe(url, token=os.environ["EMOTION_MONITOR_TOKEN"])``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl as ssl_module
from collections.abc import AsyncIterator, Iterable
from urllib.parse import urlsplit, urlunsplit

from emotion_monitor.streamer.protocol import PROTOCOL_VERSION, Alert, Event
from emotion_monitor.streamer.redact import RedactingLogger
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

log = logging.getLogger(__name__)


def events_url(url: str) -> str:
    """``ws://host:port`` -> ``ws://host:port/ws``; http(s) becomes ws(s)."""
    parts = urlsplit(url if "://" in url else f"ws://{url}")
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit(
        (
            scheme,
            parts.netloc,
            parts.path if parts.path not in ("", "/") else "/ws",
            parts.query,
            "",
        )
    )


async def subscribe(
    url: str,
    streams: Iterable[str] | None = None,
    *,
    types: Iterable[str] = ("event", "alert"),
    until_ended: bool = False,
    reconnect: bool = True,
    max_backoff: float = 10.0,
    open_timeout: float = 10.0,
    token: str | None = None,
    ssl: ssl_module.SSLContext | None = None,
    batch_ms: int = 0,
) -> AsyncIterator[Event | Alert | dict]:
    """Yield items from a server's ``/ws`` feed.

    Args:
        url: ``ws://host:port[/ws]`` (``http://`` works too).
        streams: only these stream ids (``None``: all streams).
        types: message types to yield: ``event`` -> :class:`Event`, ``alert`` ->
            :class:`Alert`, anything else (``stream_started``, ``stream_ended``, ``hello``...)
            as the raw dict.
        until_ended: with ``streams``, stop once each of them has sent ``stream_ended``.
        reconnect: retry after a failed or lost connection (else the error propagates).
        max_backoff: longest wait between reconnection attempts, seconds.
        token: the server's access token (``serve --token``), sent as ``Authorization:
            Bearer``. A refused token (HTTP 401/403) raises ``InvalidStatus`` at once, even with
            ``reconnect``: retrying cannot fix it.
        ssl: TLS context for ``wss://`` (e.g. one trusting a self-signed certificate).
        batch_ms: ask the server for one ``batch`` frame per ``batch_ms`` milliseconds (20-1000)
            instead of one frame per message: cheaper for both sides when taking in many
            calls. The items are yielded one by one either way.
    """
    url = events_url(url)
    wanted = list(streams) if streams is not None else None
    remaining = set(wanted or ())
    types = set(types)
    backoff = 0.5
    while True:
        try:
            async with connect(
                url,
                open_timeout=open_timeout,
                max_size=None,
                additional_headers={"Authorization": f"Bearer {token}"} if token else None,
                ssl=ssl,
                logger=RedactingLogger(logging.getLogger("websockets.client")),
            ) as ws:
                subscription = {
                    "type": "subscribe",
                    "v": PROTOCOL_VERSION,
                    "streams": wanted,
                    "batch_ms": batch_ms,
                }
                await ws.send(json.dumps(subscription))
                async for raw in ws:
                    # reset only once the server talks: one that is full accepts, then closes
                    backoff = 0.5
                    frame = json.loads(raw)
                    batch = frame["messages"] if frame.get("type") == "batch" else [frame]
                    for msg in batch:
                        kind = msg.get("type")
                        stream = msg.get("stream")
                        if wanted is not None and stream is not None and stream not in wanted:
                            continue  # sent before the server processed our subscribe
                        if kind in types:
                            yield _decode(msg)
                        if until_ended and kind == "stream_ended":
                            remaining.discard(stream)
                            if not remaining:
                                return
            reason = "server closed the connection"
        except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError) as exc:
            if isinstance(exc, InvalidURI) or _refused(exc) or not reconnect:
                raise
            reason = f"{type(exc).__name__}: {exc}"
        if not reconnect:
            return
        log.warning("events feed %s: %s; reconnecting in %.1f s", url, reason, backoff)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, max_backoff)


def _refused(exc: Exception) -> bool:
    """The server said no to who we are (a missing or wrong token, a refused origin)."""
    return isinstance(exc, InvalidStatus) and exc.response.status_code in (401, 403)


def _decode(msg: dict) -> Event | Alert | dict:
    kind = msg.get("type")
    if kind == "event":
        return Event.from_dict(msg)
    if kind == "alert":
        return Alert.from_dict(msg)
    return msg
