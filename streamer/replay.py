"""Replaying a recording (``serve --record FILE.sqlite``) through a live service: the calls of a
shift come back on ``/ws``, the wall and the agent view as they happened, at their own pace or
faster, optionally fanned out under many call ids (``emotion-monitor replay``).

Each recorded call is opened again with :meth:`MonitorService.open_stream` (its recorded
metadata plus a ``replay`` entry saying what it replays), its events are relayed when their
window ends (``t1`` seconds of stream time after the call's start, divided by the speed), and
its stream ends after its last event. So every listener (``/ws`` clients, the recorder, the
alert rules) sees a replayed call exactly as a live one.

Recorded alerts are not replayed: the server's alert rules run on the replayed events. They
are evaluated on stream time, so the same rules fire at the same places as when recording.

Fan-out: ``fanout`` copies of every call, copy ``k`` under ``<id>-<k>``, each started ``1 /
fanout`` of the call's length after the previous one, so a recording of a few calls becomes a
floor of many, not all in step. With ``loop`` every copy starts again (same id) a second after
it ended, for as long as the replay runs: the floor stays full.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from dataclasses import dataclass, field
from pathlib import Path

from emotion_monitor.streamer import recorder
from emotion_monitor.streamer.engine import StreamLimitError
from emotion_monitor.streamer.service import MonitorService

log = logging.getLogger(__name__)

MAX_FANOUT = 10_000
MAX_ID = 64  # the longest stream id the protocol accepts (protocol.STREAM_ID)
TICK_S = 0.1  # how often due events are relayed; events carry their own stream times
LOOP_PAUSE_S = 1.0  # with loop, a copy starts again this long (recorded seconds) after it ends


@dataclass
class _Copy:
    """One replayed call: which recorded call, under which id, from when (replay seconds);
    ``copy`` counts from 0."""

    stream: str
    call: dict
    start: float
    copy: int
    events: list[dict] = field(default_factory=list)
    sent: int = 0


class Replay:
    """Replays the recording at ``path`` into ``service`` (see the module docstring).

    Args:
        path: a SQLite file written by ``serve --record``.
        speed: stream seconds replayed per second (1: the recorded pace; > 0).
        fanout: copies of each call (1: the calls under their own ids).
        loop: replay every copy again after it ends, until stopped.

    Raises ``FileNotFoundError``, ``sqlite3.Error`` (not a recording) or ``ValueError`` (bad
    speed or fanout, a recording without events) on construction, so a command fails early.
    """

    def __init__(self, path: str | Path, speed: float = 1.0, fanout: int = 1, loop: bool = False):
        if not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        if not 1 <= fanout <= MAX_FANOUT:
            raise ValueError(f"fanout must be 1..{MAX_FANOUT}, got {fanout}")
        self.path = Path(path)
        self.speed, self.fanout, self.loop = speed, fanout, loop
        self.calls = recorder.recorded_calls(self.path)
        if not self.calls:
            raise ValueError(f"{self.path}: the recording holds no call with events")
        t_first = min((c["started"] for c in self.calls if c["started"] is not None), default=0)
        for c in self.calls:  # the call's offset in the recording, in recorded seconds
            c["offset"] = (c["started"] - t_first) if c["started"] is not None else 0.0
        self.stats = {"calls_started": 0, "calls_refused": 0, "events": 0}

    def schedule(self) -> list[_Copy]:
        """Every copy of every call, by start time (replay seconds): each call at its recorded
        offset, its copy ``k`` (from 0) ``k / fanout`` of the call's length later."""
        copies = []
        for c in self.calls:
            for k in range(self.fanout):
                start = c["offset"] + k * c["length"] / self.fanout
                copies.append(_Copy(copy_id(c["stream"], k, self.fanout), c, start / self.speed, k))
        return sorted(copies, key=lambda x: x.start)

    async def run(self, service: MonitorService) -> None:
        """Replay until done (forever with ``loop``); cancel to stop. Calls still open when it
        is cancelled stay open: the service ends them when it stops."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        waiting = self.schedule()
        active: list[_Copy] = []
        while waiting or active:
            now = loop.time() - t0
            still = []
            for c in active:
                if not self._advance(service, c, now):
                    still.append(c)
                elif self.loop:  # the same call again under the same id, after a pause
                    again = _Copy(c.stream, c.call, now + LOOP_PAUSE_S / self.speed, c.copy)
                    bisect.insort(waiting, again, key=lambda x: x.start)
            active = still
            while waiting and waiting[0].start <= now:
                copy = waiting.pop(0)
                if await self._open(service, copy):
                    active.append(copy)
            await asyncio.sleep(TICK_S)

    async def _open(self, service: MonitorService, copy: _Copy) -> bool:
        meta = dict(copy.call["meta"])
        meta["replay"] = {"of": copy.call["stream"], "copy": copy.copy + 1, "speed": self.speed}
        try:
            service.open_stream(copy.stream, **meta)
        except (StreamLimitError, ValueError) as exc:  # full, or the id is live already
            self.stats["calls_refused"] += 1
            log.warning("replay: call %s not replayed: %s", copy.stream, exc)
            return False
        self.stats["calls_started"] += 1
        # A call's events are read when it starts, so memory holds only the calls in progress.
        events = await asyncio.to_thread(
            recorder.call_events, self.path, copy.call["stream"], copy.call["call"]
        )
        copy.events = [{**e, "stream": copy.stream} for e in events]
        return True

    def _advance(self, service: MonitorService, copy: _Copy, now: float) -> bool:
        """Relay the copy's events that are due; end it after its last. True when ended."""
        elapsed = (now - copy.start) * self.speed  # recorded seconds since the copy started
        due = copy.sent
        while due < len(copy.events) and copy.events[due]["t1"] <= elapsed:
            due += 1
        if due > copy.sent:
            try:
                service.relay(copy.stream, copy.events[copy.sent : due])
            except KeyError:  # the service ended it (shutting down)
                return True
            self.stats["events"] += due - copy.sent
            copy.sent = due
        if copy.sent < len(copy.events) or elapsed < copy.call["length"]:
            return False
        service.end_stream(copy.stream)
        copy.events = []
        return True


def copy_id(stream: str, k: int, fanout: int) -> str:
    """The id of copy ``k`` (from 0) of ``stream``: itself without fan-out, else ``<id>-<k+1>``,
    shortened to stay a valid stream id."""
    if fanout == 1:
        return stream
    suffix = f"-{k + 1}"
    return stream[: MAX_ID - len(suffix)] + suffix
