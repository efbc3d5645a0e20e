"""The two built-in websocket routes: ``/ws`` (hello, then events; ``subscribe`` filters
streams) and ``/ingest`` (``start``, binary PCM frames, ``stop``; the stream's events come back).

Every bad message is answered with an ``error`` message; a fatal one, or too many, closes that
connection alone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from emotion_monitor.streamer import protocol
from emotion_monitor.streamer.offload import OFF_LOOP_BYTES, off_loop
from emotion_monitor.streamer.server.fanout import Fanout, Subscriber
from emotion_monitor.streamer.server.ingest import CLOSE_TRY_AGAIN_LATER, IngestStream
from emotion_monitor.streamer.service import MonitorService
from emotion_monitor.streamer.settings import Settings
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

MAX_ERRORS = 20  # protocol errors tolerated from one client before it is closed
#: /ws takes only small control messages (a subscribe naming 256 streams is ~17 KB)
WS_MAX_MESSAGE_BYTES = 1 << 16


class EventSockets:
    """Handlers of ``/ws`` and ``/ingest``; ``hello()`` gives each new client its first message."""

    def __init__(
        self,
        service: MonitorService,
        settings: Settings,
        fanout: Fanout,
        stats: dict[str, int],
        hello: Callable[[], str],
    ):
        self.service = service
        self.settings = settings
        self.fanout = fanout
        self.stats = stats
        self.hello = hello
        self._ingest_count = 0
        #: the largest message each route takes
        self.max_message_bytes = {
            "/ws": min(WS_MAX_MESSAGE_BYTES, settings.max_message_bytes),
            "/ingest": settings.max_message_bytes,
        }

    async def _refuse_full(self, ws: ServerConnection) -> None:
        self.stats["clients_refused"] += 1
        reason = f"server full: {self.settings.max_clients} clients; retry later"
        await ws.close(CLOSE_TRY_AGAIN_LATER, reason)

    def _client_error(self, client: Subscriber, err: protocol.ProtocolError) -> bool:
        """Report an error to the client; returns True when the connection must close."""
        self.stats["protocol_errors"] += 1
        client.errors += 1
        self.fanout.offer(client, err.to_message().to_json())
        return err.fatal or client.errors >= MAX_ERRORS

    async def _close(self, client: Subscriber, err: protocol.ProtocolError) -> None:
        await client.drain()
        reason = "too many protocol errors" if not err.fatal else str(err)
        closing = asyncio.create_task(client.ws.close(err.close_code, reason[:120]))
        # Keep reading: websockets stops reading the socket while unread messages pile up, and
        # the peer's close frame would wait behind them until close_timeout.
        with contextlib.suppress(ConnectionClosed):
            async for _ in client.ws:
                pass
        await closing

    def frame_limit(self, path: str, limit: int) -> int:
        """What the websocket layer lets through on ``path`` with a route limit of ``limit``:
        /ws and /ingest answer messages up to twice their limit with a readable ``too_big``
        error; beyond that, and on other routes beyond their limit, websockets closes with 1009
        before buffering the message."""
        return limit * 2 if path in self.max_message_bytes else limit

    def _check_size(self, route: str, message: str | bytes) -> None:
        limit = self.max_message_bytes[route]
        if len(message) > limit:
            raise protocol.ProtocolError(
                "too_big",
                f"message of {len(message)} bytes exceeds the limit of {limit}",
                fatal=True,
                close_code=1009,
            )

    async def events(self, ws: ServerConnection, service, settings) -> None:
        """``/ws``: hello, then events; the client may send ``subscribe``."""
        client = self.fanout.register(ws, None)
        if client is None:
            return await self._refuse_full(ws)
        try:
            client.offer(self.hello())
            async for message in ws:
                try:
                    self._check_size("/ws", message)
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
                    client.batch_s = msg.batch_ms / 1000
                    ack = protocol.Subscribed(msg.streams, msg.batch_ms)
                    self.fanout.offer(client, ack.to_json())
                except protocol.ProtocolError as err:
                    if self._client_error(client, err):
                        return await self._close(client, err)
        except ConnectionClosed:
            pass  # gone without a close frame (e.g. keepalive timeout); nothing to tell it
        finally:
            self.fanout.unregister(client)

    async def ingest(self, ws: ServerConnection, service, settings) -> None:
        """``/ingest``: ``start``, binary PCM frames, ``stop``; events for the stream come back."""
        client = self.fanout.register(ws, set())  # hears only its own stream once started
        if client is None:
            return await self._refuse_full(ws)
        ingest = IngestStream(self.service, self.stats)
        try:
            client.offer(self.hello())
            async for message in ws:
                try:
                    self._check_size("/ingest", message)
                    if isinstance(message, bytes):
                        if len(message) > OFF_LOOP_BYTES:  # a big frame must not stall others
                            await off_loop(ingest.audio, message)
                        else:
                            ingest.audio(message)
                        # backpressure: a fast sender waits (not past half the ping timeout)
                        await ingest.wait_for_room(self.settings.ping_timeout / 2)
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
            self.fanout.unregister(client)
