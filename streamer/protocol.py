"""Protocol v1 as data: the JSON messages spoken on ``/ws`` and ``/ingest``.

Every message is a JSON object with a ``type`` and the protocol version ``v``. Incoming messages
are decoded into the dataclasses below; anything malformed raises :class:`ProtocolError`, whose
``code`` and message go back to the client as an ``error`` message. Binary websocket frames on
``/ingest`` carry raw PCM audio in the format announced by :class:`Start`.

Server -> client: :class:`Hello`, :class:`Event`, :class:`Alert`, :class:`SourceError`,
:class:`StreamStarted`, :class:`StreamEnded`, :class:`Subscribed` and :class:`ErrorMessage`.
Client -> server: :class:`Subscribe` (``/ws`` and ``/ingest``), :class:`Start` and :class:`Stop`
(``/ingest``). See ``docs/protocol.md`` for examples.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from emotion_monitor.streamer.audio import SAMPLE_FORMATS, SAMPLE_RATE

PROTOCOL_VERSION = 1

#: Sample rates an ingest client may announce (telephony 8 kHz up to studio 192 kHz).
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 8_000, 192_000
MAX_CHANNELS = 8
#: Stream ids: short, printable, safe in URLs, logs and Prometheus labels. ``\A``/``\Z``, not
#: ``^``/``$``: ``$`` also matches before a final newline, which let ``"id\n"`` through.
STREAM_ID = re.compile(r"\A[A-Za-z0-9_.:\-]{1,64}\Z")
MAX_SUBSCRIPTIONS = 256
#: range of a subscriber's ``batch_ms`` (0 turns batching off)
MIN_BATCH_MS, MAX_BATCH_MS = 20, 1000
#: Deepest nesting of arrays/objects a client message may have. Real messages need 4; deeper
#: JSON would only cost recursion (json.loads raises RecursionError near 1000 levels, and
#: nested metadata echoed in hello / stream_started would fail again when encoded).
MAX_JSON_DEPTH = 32


def valid_stream_id(value: Any) -> bool:
    """Whether ``value`` is a stream id: a string of 1-64 of ``A-Z a-z 0-9 _ . : -``."""
    return isinstance(value, str) and STREAM_ID.fullmatch(value) is not None


class ProtocolError(ValueError):
    """A message broke protocol v1. ``code`` is machine-readable, the message human-readable.

    ``fatal`` says whether the connection cannot go on after it (the server then closes with
    ``close_code``).
    """

    def __init__(self, code: str, message: str, fatal: bool = False, close_code: int = 1008):
        super().__init__(message)
        self.code = code
        self.fatal = fatal
        self.close_code = close_code

    def to_message(self) -> ErrorMessage:
        """The ``error`` message that reports this to the client."""
        return ErrorMessage(code=self.code, message=str(self))


# -- messages --------------------------------------------------------------------------------


@dataclass
class Message:
    """Base of every protocol message: ``type`` comes from the class, ``v`` is added on output."""

    TYPE: ClassVar[str] = ""

    @property
    def type(self) -> str:
        return self.TYPE

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict with ``type`` and ``v``."""
        return {"type": self.TYPE, "v": PROTOCOL_VERSION, **dataclasses.asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict) -> Any:
        """Inverse of :meth:`to_dict`: every field without a default must be present; unknown
        keys are ignored (forward compatibility). Raises :class:`ProtocolError`."""
        fields = dataclasses.fields(cls)
        for f in fields:
            no_default = f.default is dataclasses.MISSING
            if no_default and f.default_factory is dataclasses.MISSING and f.name not in d:
                raise ProtocolError("bad_field", f"{cls.TYPE}: missing field {f.name!r}")
        names = {f.name for f in fields}
        return cls(**{k: v for k, v in d.items() if k in names})


# -- what the server pushes ------------------------------------------------------------------


@dataclass
class Event(Message):
    """One analysed window of one track of one stream.

    Times are seconds of stream time (samples / 16 kHz since the stream started). For a window
    without speech, ``speech`` is False and the raw emotion fields are ``None``: the engine never
    invents an emotion for silence or noise. Smoothed fields keep the last speech state.
    """

    TYPE: ClassVar[str] = "event"
    stream: str
    track: str
    seq: int
    t0: float
    t1: float
    speech: bool
    speech_prob: float = 0.0
    valence: float | None = None
    arousal: float | None = None
    classes: dict[str, float] | None = None
    label: str | None = None
    confidence: float | None = None
    valence_smooth: float | None = None
    arousal_smooth: float | None = None
    classes_smooth: dict[str, float] | None = None
    label_smooth: str | None = None
    quadrant: str | None = None
    latency_ms: float = 0.0
    clipped: bool = False


@dataclass
class Alert(Message):
    """One fired alert: rule ``name`` held on (``stream``, ``track``) from ``since`` to ``t``."""

    TYPE: ClassVar[str] = "alert"
    stream: str
    track: str
    name: str
    t: float
    since: float
    values: dict[str, float] = field(default_factory=dict)
    time: float = 0.0


@dataclass
class SourceError(Message):
    """A source failed (e.g. the microphone vanished); the source retries with backoff."""

    TYPE: ClassVar[str] = "source_error"
    stream: str
    message: str
    retry_in: float | None = None


@dataclass
class Hello(Message):
    """First message on ``/ws`` and ``/ingest``: what this server is and what it allows."""

    TYPE: ClassVar[str] = "hello"
    version: int = PROTOCOL_VERSION
    server: str = ""
    limits: dict[str, Any] = field(default_factory=dict)
    streams: dict[str, dict] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> Hello:
        return cls(
            version=_field(d, "version", int),
            server=_field(d, "server", str, ""),
            limits=_field(d, "limits", dict, {}),
            streams=_field(d, "streams", dict, {}),
            model=_field(d, "model", dict, {}),
            settings=_field(d, "settings", dict, {}),
        )


@dataclass
class Subscribe(Message):
    """Receive only the listed streams (``None``: every stream, the default), one message per
    frame or, with ``batch_ms`` > 0, everything of the last ``batch_ms`` milliseconds in one
    ``batch`` frame (a wall of hundreds of calls takes a few frames a second, not thousands)."""

    TYPE: ClassVar[str] = "subscribe"
    streams: list[str] | None = None
    batch_ms: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> Subscribe:
        batch_ms = _field(d, "batch_ms", int, 0)
        if batch_ms and not MIN_BATCH_MS <= batch_ms <= MAX_BATCH_MS:
            raise ProtocolError(
                "bad_field",
                f"subscribe: 'batch_ms' must be 0 or {MIN_BATCH_MS}..{MAX_BATCH_MS}, "
                f"got {batch_ms}",
            )
        streams = d.get("streams")
        if streams is None:
            return cls(None, batch_ms)
        if not isinstance(streams, list) or not all(isinstance(s, str) for s in streams):
            raise ProtocolError(
                "bad_field", "subscribe: 'streams' must be a list of strings or null"
            )
        if len(streams) > MAX_SUBSCRIPTIONS:
            raise ProtocolError(
                "bad_field", f"subscribe: at most {MAX_SUBSCRIPTIONS} streams, got {len(streams)}"
            )
        return cls(list(streams), batch_ms)


@dataclass
class Subscribed(Message):
    """Acknowledges a :class:`Subscribe`."""

    TYPE: ClassVar[str] = "subscribed"
    streams: list[str] | None = None
    batch_ms: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> Subscribed:
        return cls(d.get("streams"), d.get("batch_ms", 0))


def batch_frame(texts: list[str]) -> str:
    """One ``batch`` frame holding already-encoded messages, in order (see :class:`Subscribe`)."""
    return f'{{"type":"batch","v":{PROTOCOL_VERSION},"messages":[{",".join(texts)}]}}'


@dataclass
class Start(Message):
    """Opens an ingest stream; binary frames of PCM in this format follow."""

    TYPE: ClassVar[str] = "start"
    stream: str = ""
    sample_rate: int = SAMPLE_RATE
    format: str = "s16le"
    channels: int = 1

    @classmethod
    def from_dict(cls, d: dict) -> Start:
        stream = _field(d, "stream", str, "")
        if stream and not valid_stream_id(stream):
            raise ProtocolError(
                "bad_field", "start: 'stream' must be 1-64 characters of A-Z a-z 0-9 _ . : -"
            )
        rate = _field(d, "sample_rate", int)
        if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
            raise ProtocolError(
                "bad_sample_rate",
                f"start: sample_rate {rate} is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz",
            )
        fmt = _field(d, "format", str, "s16le")
        if fmt not in SAMPLE_FORMATS:
            raise ProtocolError("bad_field", f"start: format must be one of {list(SAMPLE_FORMATS)}")
        channels = _field(d, "channels", int, 1)
        if not 1 <= channels <= MAX_CHANNELS:
            raise ProtocolError("bad_field", f"start: channels must be 1..{MAX_CHANNELS}")
        return cls(stream=stream, sample_rate=rate, format=fmt, channels=channels)

    @property
    def frame_bytes(self) -> int:
        """Bytes per sample frame (all channels)."""
        return (2 if self.format == "s16le" else 4) * self.channels


@dataclass
class Stop(Message):
    """Ends the ingest stream: the rest is analysed, then ``stream_ended`` comes back."""

    TYPE: ClassVar[str] = "stop"

    @classmethod
    def from_dict(cls, d: dict) -> Stop:
        return cls()


@dataclass
class StreamStarted(Message):
    """A stream opened (any source); ``meta`` says where it comes from."""

    TYPE: ClassVar[str] = "stream_started"
    stream: str = ""
    time: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> StreamStarted:
        return cls(
            stream=_field(d, "stream", str),
            time=float(_field(d, "time", (int, float), 0.0)),
            meta=_field(d, "meta", dict, {}),
        )


@dataclass
class StreamEnded(Message):
    """A stream ended; no more events for it will follow."""

    TYPE: ClassVar[str] = "stream_ended"
    stream: str = ""
    time: float = 0.0

    @classmethod
    def from_dict(cls, d: dict) -> StreamEnded:
        return cls(stream=_field(d, "stream", str), time=float(_field(d, "time", (int, float), 0)))


@dataclass
class StreamOverflow(Message):
    """Audio of one track was sent faster than it could be analysed and was dropped: stream
    time ``t0``..``t1`` has no events (later events keep their true ``t0``)."""

    TYPE: ClassVar[str] = "stream_overflow"
    stream: str = ""
    track: str = "main"
    t0: float = 0.0
    t1: float = 0.0

    @classmethod
    def from_dict(cls, d: dict) -> StreamOverflow:
        return cls(
            stream=_field(d, "stream", str),
            track=_field(d, "track", str, "main"),
            t0=float(_field(d, "t0", (int, float))),
            t1=float(_field(d, "t1", (int, float))),
        )


@dataclass
class ErrorMessage(Message):
    """Something the client sent was refused; ``code`` is stable, ``message`` is for people."""

    TYPE: ClassVar[str] = "error"
    code: str = ""
    message: str = ""

    @classmethod
    def from_dict(cls, d: dict) -> ErrorMessage:
        return cls(code=_field(d, "code", str), message=_field(d, "message", str, ""))


CLIENT_MESSAGES: dict[str, type] = {m.TYPE: m for m in (Subscribe, Start, Stop)}
SERVER_MESSAGES: dict[str, type] = {
    m.TYPE: m
    for m in (
        Hello,
        Subscribed,
        StreamStarted,
        StreamEnded,
        StreamOverflow,
        ErrorMessage,
        Event,
        Alert,
        SourceError,
    )
}


# -- decoding --------------------------------------------------------------------------------


def decode(text: str | bytes, registry: dict[str, type] = CLIENT_MESSAGES) -> Any:
    """Decode one JSON text message into its dataclass.

    ``registry`` maps ``type`` to class: :data:`CLIENT_MESSAGES` (what a server accepts, the
    default) or :data:`SERVER_MESSAGES` (what a client receives).

    Raises:
        ProtocolError: invalid JSON, not an object, wrong version, unknown type, bad fields.
    """
    data = parse_json(text)
    if not isinstance(data, dict):
        raise ProtocolError("bad_json", "a message must be a JSON object")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("bad_field", "a message needs a string 'type'")
    version = data.get("v", PROTOCOL_VERSION)
    # type(): JSON true equals 1 and 1.0 too in Python, but neither is protocol version 1.
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise ProtocolError(
            "bad_version",
            f"protocol version {version!r} is not supported; this server speaks "
            f"v{PROTOCOL_VERSION}",
        )
    cls = registry.get(kind)
    if cls is None:
        raise ProtocolError(
            "unknown_type", f"unknown message type {kind!r}; expected one of {sorted(registry)}"
        )
    return cls.from_dict(data)


def parse_json(text: str | bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse one JSON text from a peer (every route uses this, so all refuse the same way).

    Raises:
        ProtocolError: ``bad_json`` (the telephony routes close with 1007) for invalid JSON,
            invalid UTF-8, or nesting deeper than ``max_depth``.
    """
    try:
        data = json.loads(text)
    except RecursionError:  # far too deep: the parser itself gave up
        raise ProtocolError("bad_json", f"JSON nested deeper than {max_depth} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError("bad_json", f"not valid JSON: {exc}") from None
    if _deeper_than(data, max_depth):
        raise ProtocolError("bad_json", f"JSON nested deeper than {max_depth} levels")
    return data


def _deeper_than(data: Any, limit: int) -> bool:
    # Iterative on purpose: a recursive walk would hit the recursion limit it guards against.
    stack = [(data, 1)] if isinstance(data, (dict, list)) else []
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def encode(message: Message | Event | dict) -> str:
    """Compact JSON text of a message (dataclass or an already-built protocol dict)."""
    if not isinstance(message, dict):
        message = message.to_dict()
    return json.dumps(message, separators=(",", ":"), allow_nan=False)


_MISSING = object()


def _field(d: dict, name: str, kind: type | tuple[type, ...], default: Any = _MISSING) -> Any:
    value = d.get(name, _MISSING)
    if value is _MISSING or value is None:
        if default is _MISSING:
            raise ProtocolError("bad_field", f"{d.get('type')}: missing field {name!r}")
        return default
    # bool is an int in Python; a JSON true is never a valid number here.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ProtocolError(
            "bad_field", f"{d.get('type')}: field {name!r} must be {names}, got {value!r:.40}"
        )
    return value
