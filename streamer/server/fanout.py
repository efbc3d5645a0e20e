"""Events out: one bounded queue per subscriber, each drained by its own task.

Broadcasting only appends to queues, so a client that reads slowly (or not at all) never delays
anyone else; when its queue is full the oldest message is dropped and counted.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

from emotion_monitor.streamer import protocol
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

log = logging.getLogger(__name__)


class Subscriber:
    """One subscriber (``/ws`` or ``/ingest``): a bounded outgoing queue drained by its task."""

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


class Fanout:
    """The subscribers of one server, at most ``max_clients``, each with a queue of
    ``queue_size`` messages. ``stats`` (shared with the server) counts queued and dropped
    messages; ``on_event`` sees every event message before it is queued (latency metrics)."""

    def __init__(
        self,
        max_clients: int,
        queue_size: int,
        stats: dict[str, int],
        on_event: Callable[[dict], None] | None = None,
    ):
        self.max_clients = max_clients
        self.queue_size = queue_size
        self.stats = stats
        self.on_event = on_event
        self.clients: set[Subscriber] = set()

    def register(self, ws: ServerConnection, streams: set[str] | None) -> Subscriber | None:
        """A new subscriber to ``streams`` (None: all), or None when the server is full."""
        if len(self.clients) >= self.max_clients:
            return None
        client = Subscriber(ws, self.queue_size, streams)
        self.clients.add(client)
        return client

    def unregister(self, client: Subscriber) -> None:
        self.clients.discard(client)
        client.task.cancel()

    def broadcast(self, messages: list[dict]) -> None:
        """Queue service messages to every interested client (runs on the server's loop)."""
        for msg in messages:
            if msg.get("type") == "event" and self.on_event is not None:
                self.on_event(msg)
            try:
                text = protocol.encode(msg)
            except ValueError:  # NaN/inf has no JSON spelling; a model bug, not a client's
                log.warning("dropping a message that is not valid JSON: %.200r", msg)
                continue
            stream = msg.get("stream")
            for client in self.clients:
                if client.wants(stream):
                    self.offer(client, text)

    def offer(self, client: Subscriber, text: str) -> None:
        self.stats["messages_queued"] += 1
        if not client.offer(text):
            self.stats["messages_dropped"] += 1
