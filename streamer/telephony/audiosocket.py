"""Asterisk AudioSocket over TCP (``serve --audiosocket-port PORT``).

Every frame is a 3-byte header, one type byte and a 16-bit big-endian payload length, followed
by the payload:

- ``0x01`` the call's UUID (16 bytes): the stream id (its canonical string form);
- ``0x10`` signed linear 16-bit little-endian mono at 8 kHz; ``0x11``..``0x18`` the same at
  12, 16, 24, 32, 44.1, 48, 96 and 192 kHz;
- ``0x03`` a DTMF digit (logged); ``0x00`` hangup; ``0xff`` an error (logged, then hangup).

One connection carries one direction of a call, analysed as one track (``customer`` unless
configured otherwise). A truncated frame, an oversized frame, audio before the UUID or a torn
sample ends *that* connection with a log line; the server and the other calls go on. A refused
call (server full, duplicate UUID) gets an ``0xff`` frame whose payload is the reason in ASCII,
then a hangup frame.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import uuid
from typing import Any

import numpy as np
from emotion_monitor.streamer.engine import StreamLimitError
from emotion_monitor.streamer.telephony.call import CUSTOMER, CallStream, IdleTimer

log = logging.getLogger(__name__)

KIND_HANGUP, KIND_UUID, KIND_DTMF, KIND_ERROR = 0x00, 0x01, 0x03, 0xFF
#: Signed linear mono types and their sample rates.
SLIN_RATES = {
    0x10: 8000,
    0x11: 12000,
    0x12: 16000,
    0x13: 24000,
    0x14: 32000,
    0x15: 44100,
    0x16: 48000,
    0x17: 96000,
    0x18: 192000,
}
#: Largest payload accepted: 20 ms at 192 kHz is 7680 bytes; 16 KiB leaves room for 40 ms.
MAX_PAYLOAD = 16384


class AudioSocketError(Exception):
    """The peer broke the protocol; the connection ends with this message in the log."""


def frame(kind: int, payload: bytes = b"") -> bytes:
    """Encode one AudioSocket frame."""
    return struct.pack(">BH", kind, len(payload)) + payload


class AudioSocketHandler:
    """One AudioSocket connection: ``await handler(reader, writer, service, settings)``.

    Args:
        track: the track this connection's audio is analysed as.
        idle_timeout: seconds without a frame after which the call is ended.
        max_payload: frames announcing a longer payload end the connection.
    """

    def __init__(
        self, track: str = CUSTOMER, idle_timeout: float = 30.0, max_payload: int = MAX_PAYLOAD
    ):
        self.track = track
        self.idle_timeout = idle_timeout
        self.max_payload = max_payload
        self._writers: set[asyncio.StreamWriter] = set()

    async def close_connections(self) -> None:
        """Hang up every open connection (shutdown); each handler then ends its call."""
        for writer in list(self._writers):
            writer.write(frame(KIND_HANGUP))
            writer.close()

    async def __call__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        service: Any,
        settings: Any = None,
    ) -> None:
        peer = writer.get_extra_info("peername")
        call: CallStream | None = None
        self._writers.add(writer)
        idle = IdleTimer(self.idle_timeout, writer.close)  # closing ends the pending read
        try:
            while True:
                kind, payload = await self._read_frame(reader)
                idle.touch()
                if kind in SLIN_RATES:
                    if call is None:
                        raise AudioSocketError("audio before the UUID frame")
                    if len(payload) % 2:
                        raise AudioSocketError(f"{len(payload)} bytes is not whole 16-bit samples")
                    samples = np.frombuffer(payload, "<i2").astype(np.float32) / 32768.0
                    call.push(self.track, samples, SLIN_RATES[kind])
                elif kind == KIND_UUID:
                    if call is not None:
                        raise AudioSocketError("a second UUID frame on the same connection")
                    if len(payload) != 16:
                        raise AudioSocketError(f"UUID frame of {len(payload)} bytes, expected 16")
                    call = await self._open(service, str(uuid.UUID(bytes=payload)), peer, writer)
                    if call is None:
                        return
                elif kind == KIND_HANGUP:
                    if not idle.fired:
                        log.info("audiosocket %s: hangup", call.stream if call else peer)
                    return
                elif kind == KIND_ERROR:
                    code = payload.hex() or "none"
                    who = call.stream if call else peer
                    log.warning("audiosocket %s: peer error (code %s)", who, code)
                    return
                elif kind == KIND_DTMF:
                    log.info(
                        "audiosocket %s: DTMF %r",
                        call.stream if call else peer,
                        payload.decode("ascii", "replace"),
                    )
                else:
                    log.debug("audiosocket %s: ignoring frame type 0x%02x", peer, kind)
        except AudioSocketError as exc:
            if not idle.fired:
                log.warning(
                    "audiosocket %s: %s; closing the connection", call.stream if call else peer, exc
                )
        except ConnectionError as exc:
            if not idle.fired:
                log.info("audiosocket %s: connection lost (%s)", call.stream if call else peer, exc)
        finally:
            idle.cancel()
            if idle.fired:
                log.warning(
                    "audiosocket %s: no frame for %.0f s; ending the call",
                    call.stream if call else peer,
                    self.idle_timeout,
                )
            self._writers.discard(writer)
            if call is not None:
                call.close()
            writer.close()

    async def _read_frame(self, reader: asyncio.StreamReader) -> tuple[int, bytes]:
        try:
            header = await reader.readexactly(3)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise AudioSocketError(
                    f"truncated header ({len(exc.partial)} of 3 bytes)"
                ) from None
            return KIND_HANGUP, b""  # closing the socket is a valid hangup
        kind, length = struct.unpack(">BH", header)
        if length > self.max_payload:
            raise AudioSocketError(
                f"frame of {length} bytes exceeds the limit of {self.max_payload}"
            )
        try:
            payload = await reader.readexactly(length)
        except asyncio.IncompleteReadError as exc:
            raise AudioSocketError(
                f"truncated frame: type 0x{kind:02x} announced {length} bytes, got "
                f"{len(exc.partial)}"
            ) from None
        return kind, payload

    async def _open(
        self, service: Any, stream: str, peer: Any, writer: asyncio.StreamWriter
    ) -> CallStream | None:
        try:
            return CallStream(
                service, stream, source="audiosocket", track=self.track, peer=str(peer)
            )
        except (StreamLimitError, ValueError) as exc:
            log.warning("audiosocket %s: refused: %s", stream, exc)
            writer.write(frame(KIND_ERROR, str(exc).encode("ascii", "replace")[:200]))
            writer.write(frame(KIND_HANGUP))
            try:
                await writer.drain()
            except ConnectionError:
                pass
            return None


# -- simulation (tests, benchmarks, demos) ---------------------------------------------------
