"""Events out: one bounded queue per subscriber, each drained by its own task (one message per
frame, or what queued over the subscriber's ``batch_ms`` in one ``batch`` frame).

Broadcasting only appends to queues, so a client that reads slowly (or not at all) never delays
anyone else. When a queue is full an event is dropped and counted: the oldest event of the
stream with the most events waiting, so one stream's burst costs that stream first. Control
messages (hello, stream started/ended/overflow, alerts, errors) are never dropped: a client
whose queue is full of them is closed with :data:`CLOSE_TOO_SLOW` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, deque
from collections.abc import Callable

from emotion_monitor.streamer import protocol
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

log = logging.getLogger(__name__)

#: websocket close code of a subscriber too slow to take even the control messages
CLOSE_TOO_SLOW = 4008
#: message types a full queue may drop (every other type is a control message)
DROPPABLE = frozenset({"event"})


class Subscriber:
    """One subscriber (``/ws`` or ``/ingest``): a bounded outgoing queue drained by its task."""

    def __init__(self, ws: ServerConnection, size: int, streams: set[str] | None = None):
        self.ws = ws
        self.size = size
        self.streams = streams  # None: every stream
        self.queue: deque[tuple[str, str | None]] = deque()  # (text, stream if droppable)
        self._droppable: Counter[str] = Counter()  # stream -> droppable messages queued
        self.dropped = 0
        self.errors = 0
        self.too_slow = False
        self.batch_s = 0.0  # > 0: send what queued over this many seconds as one batch frame
        self._wakeup = asyncio.Event()
        self._half_full = asyncio.Event()  # a batch goes early rather than drop events
        self.task = asyncio.create_task(self._pump())

    def wants(self, stream: str | None) -> bool:
        return stream is None or self.streams is None or stream in self.streams

    def offer(self, text: str, droppable_of: str | None = None) -> bool:
        """Queue a message (an event of stream ``droppable_of``, or a control message when
        None); returns False when something was dropped or the client is being closed."""
        if self.too_slow:
            return False
        pushed_out = False
        if len(self.queue) >= self.size:
            victim = self._most_waiting(droppable_of)
            if victim is None:
                self._close_too_slow()
                return False
            self.dropped += 1
            if not self._drop_oldest(victim):  # none of its stream queued: it goes itself
                return False
            pushed_out = True
        self.queue.append((text, droppable_of))
        if droppable_of is not None:
            self._droppable[droppable_of] += 1
        self._wakeup.set()
        if 2 * len(self.queue) >= self.size:
            self._half_full.set()
        return not pushed_out

    def _most_waiting(self, incoming: str | None) -> str | None:
        """The stream whose oldest queued event goes when the queue is full (None: no event
        is queued). The incoming event's stream counts itself, so a burst pays first."""
        counts = self._droppable.copy()
        if incoming is not None:
            counts[incoming] += 1
        counts = +counts  # only positive counts
        if not counts:
            return None
        return max(counts, key=counts.__getitem__)

    def _drop_oldest(self, stream: str) -> bool:
        for i, (_, of) in enumerate(self.queue):
            if of == stream:
                del self.queue[i]
                self._droppable[stream] -= 1
                return True
        return False

    def _close_too_slow(self) -> None:
        self.too_slow = True
        self.queue.clear()
        self._droppable.clear()
        log.warning("closing subscriber %s: its queue is full of control messages", self.ws.id)
        self.task.cancel()
        reason = f"too slow: {self.size} control messages waiting"
        asyncio.ensure_future(self.ws.close(CLOSE_TOO_SLOW, reason))

    async def _pump(self) -> None:
        try:
            while True:
                await self._wakeup.wait()
                if self.batch_s:  # let the batch fill (one frame instead of hundreds) or
                    # go early at half the queue: a burst of calls must not overflow it
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._half_full.wait(), self.batch_s)
                self._wakeup.clear()
                self._half_full.clear()
                if not self.batch_s:
                    while self.queue:
                        await self.ws.send(self._pop())
                elif self.queue:  # what arrives while this is sent waits for the next batch
                    texts = [self._pop() for _ in range(len(self.queue))]
                    await self.ws.send(protocol.batch_frame(texts))
        except ConnectionClosed:
            pass

    def _pop(self) -> str:
        text, of = self.queue.popleft()
        if of is not None:
            self._droppable[of] -= 1
        return text

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
        stats.setdefault("slow_clients_closed", 0)

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
            droppable_of = stream if msg.get("type") in DROPPABLE else None
            for client in self.clients:
                if client.wants(stream):
                    self.offer(client, text, droppable_of)

    def offer(self, client: Subscriber, text: str, droppable_of: str | None = None) -> None:
        """Queue ``text`` to one client, counting what its full queue drops (see
        :meth:`Subscriber.offer`)."""
        self.stats["messages_queued"] += 1
        was_slow, dropped = client.too_slow, client.dropped
        if not client.offer(text, droppable_of):
            if client.dropped > dropped:
                self.stats["messages_dropped"] += 1
            elif client.too_slow and not was_slow:
                self.stats["slow_clients_closed"] += 1
