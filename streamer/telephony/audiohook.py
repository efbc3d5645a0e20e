"""Genesys Cloud AudioHook (protocol version 2) on the websocket path ``/audiohook``.

The client (Genesys Cloud) opens the session with an ``open`` message offering media formats;
the server answers ``opened`` choosing PCMU at 8 kHz (stereo ``["external", "internal"]`` when
offered). Audio then arrives as binary frames of interleaved mu-law bytes in the negotiated
channel order: ``external`` (the customer) and ``internal`` (the agent) become the ``customer``
and ``agent`` tracks of one stream, named after the ``conversationId``. ``ping`` gets ``pong``;
``paused``/``resumed`` (hold) pause the analysis; ``close`` flushes the stream and gets
``closed``. Every text message carries ``version``, ``type``, ``seq``, ``id`` and ``parameters``;
the server echoes the client's last ``seq`` as ``clientseq``.

When the call cannot be served (server full, no PCMU offer) or the client breaks the protocol,
the server sends ``disconnect`` with ``reason: "error"`` and ``info``, ends the stream at once
and answers the client's ``close`` with ``closed``.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

from emotion_monitor.streamer.audio import mulaw_decode
from emotion_monitor.streamer.engine import StreamLimitError
from emotion_monitor.streamer.protocol import ProtocolError, parse_json, valid_stream_id
from emotion_monitor.streamer.server.http import HttpRequest, HttpResponse
from emotion_monitor.streamer.telephony.call import (
    AGENT,
    CUSTOMER,
    CallStream,
    serve_call,
)

log = logging.getLogger(__name__)

VERSION = "2"
RATE = 8000
#: Largest message on /audiohook: 4 s of stereo PCMU in one frame (Genesys sends far smaller
#: ones). Beyond, the websocket layer closes with 1009 before buffering it.
MAX_MESSAGE_BYTES = 1 << 16
CHANNEL_TRACKS = {"external": CUSTOMER, "internal": AGENT}


class AudioHookError(Exception):
    """The session cannot go on; ``info`` goes back in a ``disconnect`` message."""


def position(samples: int, rate: int = RATE) -> str:
    """ISO 8601 duration of ``samples`` at ``rate``, as AudioHook writes positions."""
    return f"PT{samples / rate:.3f}S"


class AudioHookSession:
    """State of one AudioHook websocket, without the socket (a :class:`CallSession`)."""

    provider = "audiohook"
    done_reason = "closed"

    def __init__(self, service: Any):
        self.service = service
        self.id: str | None = None
        self.call: CallStream | None = None
        self.channels: list[str] = []
        self.paused = False
        self.client_seq = 0
        self.server_seq = 0
        self.samples = 0  # per channel, for positions
        self.failed = False  # a disconnect was sent; waiting for close
        self.stats = {"frames": 0, "frames_while_paused": 0, "pings": 0}

    @property
    def stream(self) -> str | None:
        """The session id, which names the stream."""
        return self.id

    # -- messages ------------------------------------------------------------------------

    def reply(self, kind: str, **parameters: Any) -> dict:
        """A server message with the common fields."""
        self.server_seq += 1
        return {
            "version": VERSION,
            "type": kind,
            "seq": self.server_seq,
            "clientseq": self.client_seq,
            "id": self.id or "00000000-0000-0000-0000-000000000000",
            "position": position(self.samples),
            "parameters": parameters,
        }

    def handle(self, raw: str | bytes) -> tuple[list[dict], bool]:
        """Process one websocket message: (replies to send, whether the session is over)."""
        try:
            if isinstance(raw, bytes):
                self._audio(raw)
                return [], False
            return self._text(raw)
        except AudioHookError as exc:
            return self._fail(str(exc)), False

    def _fail(self, info: str) -> list[dict]:
        log.warning("audiohook %s: %s", self.id, info)
        self.close()
        if self.failed:
            return []
        self.failed = True
        return [self.reply("disconnect", reason="error", info=info)]

    def _text(self, raw: str) -> tuple[list[dict], bool]:
        try:
            msg = parse_json(raw)
        except ProtocolError as exc:
            raise AudioHookError(f"message is {exc}") from None
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            raise AudioHookError("message is not a JSON object with a 'type'")
        if msg.get("version") != VERSION:  # the string "2"; 2, "1", "3", null are not
            raise AudioHookError(
                f"protocol version {msg.get('version')!r:.20} is not supported; "
                f"this server speaks AudioHook version {VERSION!r}"
            )
        seq = msg.get("seq")
        if isinstance(seq, int) and not isinstance(seq, bool):
            self.client_seq = seq
        kind = msg["type"]
        params = msg.get("parameters") if isinstance(msg.get("parameters"), dict) else {}
        if kind == "open":
            return self._open(msg, params), False
        if kind == "close":
            self.close()
            return [self.reply("closed")], True
        if kind == "ping":
            self.stats["pings"] += 1
            return [self.reply("pong")], False
        if kind in ("paused", "pause"):
            self.paused = True
        elif kind in ("resumed", "resume"):
            self.paused = False
        elif kind == "error":
            log.warning("audiohook %s: client error %s", self.id, params)
        else:  # update, discarded, dtmf, ...: nothing to analyse
            log.debug("audiohook %s: %s %s", self.id, kind, params)
        return [], False

    def _open(self, msg: dict, params: dict) -> list[dict]:
        if self.id is not None:
            raise AudioHookError("a second 'open' in the same session")
        session_id = msg.get("id")
        if not valid_stream_id(session_id):
            raise AudioHookError("'open' needs a session 'id' of 1-64 safe characters")
        self.id = session_id
        media = choose_media(params.get("media"))
        if media is None:
            raise AudioHookError("no offered media is PCMU at 8000 Hz with external/internal")
        conversation = params.get("conversationId")
        stream = conversation if valid_stream_id(conversation) else session_id
        if stream in self.service.streams:  # a second session on the same conversation
            stream = session_id
        meta = {
            "source": "audiohook",
            "session_id": session_id,
            "conversation_id": conversation,
            "organization_id": params.get("organizationId"),
            "participant": params.get("participant"),
            "channels": [CHANNEL_TRACKS[c] for c in media["channels"]],
        }
        try:
            self.call = CallStream(self.service, stream, **meta)
        except (StreamLimitError, ValueError) as exc:
            raise AudioHookError(str(exc)) from None
        self.channels = list(media["channels"])
        return [self.reply("opened", startPaused=False, media=[media])]

    def _audio(self, data: bytes) -> None:
        if self.failed:
            return  # after a disconnect the client may still have frames in flight
        if self.call is None:
            raise AudioHookError("audio before the session was opened")
        if self.paused:
            self.stats["frames_while_paused"] += 1
            return
        n = len(self.channels)
        if len(data) % n:
            raise AudioHookError(
                f"audio frame of {len(data)} bytes is not whole {n}-channel samples"
            )
        self.stats["frames"] += 1
        samples = mulaw_decode(data).reshape(-1, n)
        self.samples += len(samples)
        for i, channel in enumerate(self.channels):
            self.call.push(CHANNEL_TRACKS[channel], samples[:, i], RATE)

    def close(self) -> None:
        """End the stream (idempotent)."""
        if self.call is not None:
            self.call.close()


def choose_media(offers: Any) -> dict | None:
    """Pick PCMU 8 kHz from the ``open`` offers, preferring both channels.

    Malformed offers (not an object, ``channels`` not an array of distinct known channel names)
    are skipped like unsupported ones; ``None`` when no offer is usable.
    """
    best = None
    for offer in offers if isinstance(offers, list) else []:
        if not isinstance(offer, dict) or offer.get("type", "audio") != "audio":
            continue
        channels = offer.get("channels")
        if offer.get("format") != "PCMU" or offer.get("rate") != RATE:
            continue
        if (
            not isinstance(channels, list)
            or not channels
            or len(channels) > 2
            # the str check first: a nested array is unhashable and cannot be looked up
            or any(not isinstance(c, str) or c not in CHANNEL_TRACKS for c in channels)
            or len(set(channels)) != len(channels)
        ):
            continue
        if best is None or len(channels) > len(best["channels"]):
            best = {"type": "audio", "format": "PCMU", "channels": list(channels), "rate": RATE}
    return best


class ApiKeyCheck:
    """``authorize`` hook for ``/audiohook``: Genesys sends the AudioHook integration's API key
    in the ``X-API-KEY`` header of the upgrade request; a missing or different key gets 401.
    (The request's HTTP message signature, made with the integration's client secret, is not
    verified.)"""

    def __init__(self, api_key: str):
        if not api_key:
            raise ValueError("the AudioHook API key is empty")
        self.api_key = api_key

    def __call__(self, request: HttpRequest) -> HttpResponse | None:
        if hmac.compare_digest(self.api_key, request.headers.get("x-api-key", "")):
            return None
        log.warning("audiohook: refused a connection without the configured X-API-KEY")
        return HttpResponse.error(401, "bad_api_key", "X-API-KEY missing or not valid")


class AudioHookHandler:
    """Websocket handler for ``/audiohook``: ``await handler(ws, service, settings)``."""

    max_message_bytes = MAX_MESSAGE_BYTES

    def __init__(self, idle_timeout: float = 60.0):
        self.idle_timeout = idle_timeout

    async def __call__(self, ws: Any, service: Any, settings: Any = None) -> None:
        await serve_call(ws, AudioHookSession(service), self.idle_timeout)
