"""``/ingest``: one connection's audio stream (``start``, binary PCM frames, ``stop``)."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
from emotion_monitor.streamer import protocol
from emotion_monitor.streamer.audio import StreamResampler, pcm_to_float, silence_nonfinite, to_mono
from emotion_monitor.streamer.engine import StreamLimitError
from emotion_monitor.streamer.service import MonitorService

#: websocket close code of a refused stream when the server is full
CLOSE_TRY_AGAIN_LATER = 1013


class IngestStream:
    """State of one ``/ingest`` connection: at most one open stream at a time."""

    def __init__(self, service: MonitorService, stats: dict[str, int]):
        self.service = service
        self.stats = stats
        self.fmt: protocol.Start | None = None
        self.resampler: StreamResampler | None = None
        self.behind = False  # the server could not make room in time: read on, drop the rest

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
        # f32le beyond full scale is clipped: a hostile 3e38 would overflow to inf when the
        # channels are mixed and smear over the resampling filter.
        np.clip(frames, -1.0, 1.0, out=frames)
        samples = self.resampler.process(to_mono(frames))
        if not len(samples):
            return
        try:
            self.service.push(self.fmt.stream, samples)
        except KeyError:  # the service ended the stream (shutting down): nothing to analyse
            raise protocol.ProtocolError(
                "stream_gone", "the server ended this stream", fatal=True, close_code=1001
            ) from None

    async def wait_for_room(self, timeout: float) -> None:
        """Hold the connection (its socket is not read) while the stream's budget is full.

        A socket not read for long misses its keepalive pings and is closed as dead, so one
        wait lasts at most ``timeout`` seconds; after a wait that found no room the connection
        reads on without waiting, the audio that does not fit is dropped and reported
        (``stream_overflow``: the server is behind, not the client), until the stream has room
        again.
        """
        if self.fmt is None:
            return
        if self.behind:
            self.behind = not self.service.has_room(self.fmt.stream)
        else:
            self.behind = not await self.service.wait_for_room(self.fmt.stream, timeout)

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
