"""Twilio Media Streams on the websocket path ``/twilio``.

Twilio sends JSON text messages: ``connected``, then ``start`` (``callSid``, ``streamSid``,
``tracks``, ``mediaFormat``, ``customParameters``), then ``media`` (base64 G.711 mu-law at 8 kHz
with ``track`` "inbound" or "outbound", ``chunk`` and ``timestamp`` in ms), and ``mark``,
``dtmf`` and finally ``stop``. One call becomes one stream whose id is the ``callSid``:

- track "inbound" (what the caller says) becomes ``customer``, "outbound" becomes ``agent``;
- each track has its own chunk-invariant 8 -> 16 kHz resampler;
- ``customParameters`` (from ``<Parameter>`` in the TwiML) are kept in the stream metadata;
- when a ``media`` timestamp jumps ahead (lost packets), the gap is filled with silence, so both
  tracks stay on the call's clock: at most ``max_gap`` seconds per message and ``max_gap_total``
  seconds per track over the whole call (then the track's clock restarts from the new
  timestamp), so timestamps alone can never make up hours of audio.

With an auth token configured (``serve --twilio-auth-token``), the upgrade request must carry a
valid ``X-Twilio-Signature`` (see :class:`TwilioSignatureCheck`); otherwise it is refused with
403 before any audio is read.

Refusals close the websocket with a code and a reason: 1013 when the server already serves
``max_streams`` calls, 1007 for undecodable data, 1008 for protocol violations (including a field
of the wrong type, named in the reason), 1003 for binary frames or an unsupported encoding.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import math
from typing import Any

import numpy as np
from emotion_monitor.streamer.audio import mulaw_decode
from emotion_monitor.streamer.engine import StreamLimitError
from emotion_monitor.streamer.protocol import ProtocolError, parse_json, valid_stream_id
from emotion_monitor.streamer.server.http import HttpRequest, HttpResponse
from emotion_monitor.streamer.telephony.call import (
    AGENT,
    CUSTOMER,
    CallError,
    CallStream,
    serve_call,
)

log = logging.getLogger(__name__)

TRACKS = {"inbound": CUSTOMER, "outbound": AGENT}
TWILIO_RATE = 8000
#: Largest message on /twilio: a 20 ms ``media`` message is ~400 bytes, a ``start`` with custom
#: parameters a few KB. Beyond, the websocket layer closes with 1009 before buffering it.
MAX_MESSAGE_BYTES = 1 << 16


class TwilioError(CallError):
    """The peer broke the Media Streams protocol; ``close_code`` goes back on the websocket."""


class TwilioSession:
    """The state of one Media Streams websocket, without the socket (a :class:`CallSession`)."""

    provider = "twilio"
    done_reason = "stream stopped"

    def __init__(self, service: Any, max_gap: float = 5.0, max_gap_total: float = 30.0):
        self.service = service
        self.max_gap = max_gap
        self.max_gap_total = max_gap_total
        self._filled: dict[str, int] = {}  # per track: samples of silence filled so far
        self.call: CallStream | None = None
        self.rate = TWILIO_RATE
        self._received: dict[str, int] = {}  # samples per Twilio track, to detect gaps
        self._skew: dict[str, int] = {}  # per track: samples forgiven after a gap over the bounds
        self.stats = {
            "media": 0,
            "gap_samples": 0,
            "gap_samples_unfilled": 0,
            "marks": 0,
            "dtmf": 0,
        }

    def handle(self, raw: str | bytes) -> tuple[list[dict], bool]:
        """Process one websocket message: (no replies, whether the stream has stopped)."""
        if isinstance(raw, bytes):
            raise TwilioError("binary frames are not part of Media Streams", 1003)
        try:
            msg = parse_json(raw)
        except ProtocolError as exc:
            raise TwilioError(f"message is {exc}", 1007) from None
        if not isinstance(msg, dict):
            raise TwilioError("message is not a JSON object", 1007)
        event = msg.get("event")
        if event == "media":
            self._media(msg)
        elif event == "start":
            self._start(msg)
        elif event == "stop":
            self.close()
            return [], True
        elif event == "connected":
            log.debug("twilio connected: protocol %s %s", msg.get("protocol"), msg.get("version"))
        elif event == "mark":
            self.stats["marks"] += 1
        elif event == "dtmf":
            self.stats["dtmf"] += 1
            dtmf = msg.get("dtmf")  # only logged, so a malformed one is not worth a hang-up
            digit = dtmf.get("digit") if isinstance(dtmf, dict) else None
            log.info("twilio %s: DTMF %s", self.stream, digit)
        else:
            log.debug("twilio: ignoring event %r", event)  # forward compatible
        return [], False

    @property
    def stream(self) -> str | None:
        return self.call.stream if self.call else None

    def _start(self, msg: dict) -> None:
        if self.call is not None:
            raise TwilioError("a second 'start' on the same websocket")
        start = msg.get("start")
        if not isinstance(start, dict):
            raise TwilioError("'start' message without a 'start' object")
        call_sid = start.get("callSid")
        if not valid_stream_id(call_sid):
            raise TwilioError(
                f"'start' needs a callSid of 1-64 safe characters, got {call_sid!r:.40}"
            )
        fmt = _optional(start, "start.mediaFormat", dict, {})
        encoding = fmt.get("encoding", "audio/x-mulaw")
        if encoding != "audio/x-mulaw":
            raise TwilioError(f"unsupported encoding {encoding!r}; expected audio/x-mulaw", 1003)
        rate = fmt.get("sampleRate", TWILIO_RATE)
        if not isinstance(rate, int) or not 4000 <= rate <= 48000:
            raise TwilioError(f"unsupported sampleRate {rate!r}", 1003)
        self.rate = rate
        tracks = _optional(start, "start.tracks", list, ["inbound"])
        if not all(isinstance(t, str) for t in tracks):
            raise TwilioError(f"'start.tracks' must be an array of strings, got {tracks!r:.40}")
        meta = {
            "source": "twilio",
            "call_sid": call_sid,
            "stream_sid": msg.get("streamSid") or start.get("streamSid"),
            "account_sid": start.get("accountSid"),
            "tracks": [TRACKS.get(t, t) for t in tracks],
            "custom_parameters": _optional(start, "start.customParameters", dict, {}),
        }
        try:
            self.call = CallStream(self.service, call_sid, **meta)
        except StreamLimitError as exc:
            raise TwilioError(str(exc), 1013) from None
        except ValueError as exc:  # the same callSid is already streaming
            raise TwilioError(str(exc)) from None

    def _media(self, msg: dict) -> None:
        if self.call is None:
            raise TwilioError("'media' before 'start'")
        media = msg.get("media")
        if not isinstance(media, dict) or not isinstance(media.get("payload"), str):
            raise TwilioError("'media' without a payload", 1007)
        name = _optional(media, "media.track", str, "inbound")
        track = TRACKS.get(name)
        if track is None:
            log.debug("twilio %s: ignoring media of track %r", self.stream, name)
            return
        try:
            data = base64.b64decode(media["payload"], validate=True)
        except (binascii.Error, ValueError):
            raise TwilioError("media payload is not valid base64", 1007) from None
        self.stats["media"] += 1
        received = self._received.get(name, 0)
        gap = self._gap(name, media.get("timestamp"), received)
        if gap:
            self.call.push(track, np.zeros(gap, np.float32), self.rate)
        self._received[name] = received + gap + len(data)
        self.call.push(track, mulaw_decode(data), self.rate)

    def _gap(self, name: str, timestamp: Any, received: int) -> int:
        """Samples of silence to insert when the timestamp runs ahead of what arrived (none
        without a timestamp; one that is not a finite number is a protocol violation)."""
        if timestamp is None:  # no clock to check against
            return 0
        try:
            expected = float(timestamp) * self.rate / 1000
        except (TypeError, ValueError, OverflowError):  # OverflowError: an int of 400 digits
            expected = math.nan
        if not math.isfinite(expected):  # "1e400" parses as inf, which int() refuses
            raise TwilioError(
                f"'media.timestamp' must be a finite number of milliseconds, got {timestamp!r:.40}"
            )
        expected = int(expected)
        gap = expected - self._skew.get(name, 0) - received
        if gap <= self.rate // 50:  # within one 20 ms packet: jitter, not loss
            return 0
        filled = self._filled.get(name, 0)
        cap = min(int(self.max_gap * self.rate), int(self.max_gap_total * self.rate) - filled)
        if gap > cap:  # fill what the bounds allow; from now on count from the new timestamp
            self._skew[name] = self._skew.get(name, 0) + gap - cap
            self.stats["gap_samples_unfilled"] += gap - cap
            gap = cap
        self._filled[name] = filled + gap
        self.stats["gap_samples"] += gap
        return gap

    def close(self) -> None:
        """End the call's stream (idempotent)."""
        if self.call is not None:
            self.call.close()


_JSON_TYPES = {dict: "an object", list: "an array", str: "a string"}


def _optional(obj: dict, name: str, kind: type, default: Any) -> Any:
    """The field ``name`` (dotted, for the error) of ``obj``, or ``default`` when it is absent or
    null. A field of another JSON type is a protocol violation (1008) named in the reason: checked
    here, it cannot fail later as an unexplained exception (1011) deep inside the session."""
    value = obj.get(name.rsplit(".", 1)[-1])
    if value is None:
        return default
    if not isinstance(value, kind):
        raise TwilioError(f"'{name}' must be {_JSON_TYPES[kind]}, got {value!r:.40}")
    return value


def twilio_signature(auth_token: str, url: str) -> str:
    """Twilio's signature of a websocket request: base64 of HMAC-SHA1 over the full URL, keyed
    with the account's auth token (webhook POSTs also sign their sorted parameters; no route
    here takes those)."""
    digest = hmac.new(auth_token.encode(), url.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


class TwilioSignatureCheck:
    """``authorize`` hook for ``/twilio``: the websocket upgrade must be signed by Twilio.

    Twilio signs the URL it connected to. That is ``wss://`` + the Host header + the request
    target unless ``public_url`` (e.g. ``wss://calls.example.com``) says otherwise, which is
    needed when a proxy in front of the server rewrites the Host header.
    """

    def __init__(self, auth_token: str, public_url: str | None = None):
        if not auth_token:
            raise ValueError("the Twilio auth token is empty")
        self.auth_token = auth_token
        self.public_url = public_url.rstrip("/") if public_url else None

    def __call__(self, request: HttpRequest) -> HttpResponse | None:
        base = self.public_url or f"wss://{request.headers.get('host', '')}"
        expected = twilio_signature(self.auth_token, base + (request.target or request.path))
        if hmac.compare_digest(expected, request.headers.get("x-twilio-signature", "")):
            return None
        log.warning("twilio: refused a connection without a valid X-Twilio-Signature")
        url = base + request.path
        return HttpResponse.error(403, "bad_signature", f"X-Twilio-Signature not valid for {url}")


class TwilioHandler:
    """Websocket handler for ``/twilio``: ``await handler(ws, service, settings)``.

    ``idle_timeout``: seconds without any message after which the call is ended;
    ``max_gap`` / ``max_gap_total``: seconds of silence filled for lost packets per message /
    per track over the call.
    """

    max_message_bytes = MAX_MESSAGE_BYTES

    def __init__(
        self, max_gap: float = 5.0, idle_timeout: float = 60.0, max_gap_total: float = 30.0
    ):
        self.max_gap = max_gap
        self.max_gap_total = max_gap_total
        self.idle_timeout = idle_timeout

    async def __call__(self, ws: Any, service: Any, settings: Any = None) -> None:
        session = TwilioSession(service, self.max_gap, self.max_gap_total)
        await serve_call(ws, session, self.idle_timeout)
