"""Protocol v1: every message round-trips; every kind of bad input raises ProtocolError."""

from __future__ import annotations

import json

import pytest
from emotion_monitor.streamer import protocol
from emotion_monitor.streamer.protocol import PROTOCOL_VERSION, Event, ProtocolError

SERVER_MESSAGES = [
    protocol.Hello(
        server="0.1.0",
        limits={"max_clients": 3},
        streams={"a": {"source": "mic"}},
        model={"name": "m", "labels": ["sad"]},
        settings={"window": 2.0},
    ),
    protocol.Subscribed(["a", "b"]),
    protocol.Subscribed(None),
    protocol.StreamStarted(stream="a", time=12.5, meta={"source": "ingest"}),
    protocol.StreamEnded(stream="a", time=13.0),
    protocol.ErrorMessage(code="bad_json", message="not valid JSON"),
]
CLIENT_MESSAGES = [
    protocol.Subscribe(["a"]),
    protocol.Subscribe(None),
    protocol.Start(stream="call-7", sample_rate=48_000, format="f32le", channels=2),
    protocol.Start(stream="", sample_rate=8_000),
    protocol.Stop(),
]


@pytest.mark.parametrize("message", SERVER_MESSAGES + CLIENT_MESSAGES, ids=lambda m: m.TYPE)
def test_round_trip(message):
    registry = protocol.SERVER_MESSAGES if message.TYPE in protocol.SERVER_MESSAGES else None
    text = protocol.encode(message)
    data = json.loads(text)
    assert data["type"] == message.TYPE and data["v"] == PROTOCOL_VERSION
    decoded = protocol.decode(text, registry or protocol.CLIENT_MESSAGES)
    assert decoded == message


def test_event_round_trip():
    ev = Event(
        stream="a",
        track="main",
        seq=3,
        t0=0.5,
        t1=2.5,
        speech=True,
        speech_prob=0.9,
        valence=0.2,
        arousal=-0.1,
        classes={"sad": 0.7, "happy": 0.3},
        label="sad",
        confidence=0.7,
        quadrant="CONTENT",
        latency_ms=12.0,
    )
    decoded = protocol.decode(protocol.encode(ev), protocol.SERVER_MESSAGES)
    assert decoded == ev


@pytest.mark.parametrize(
    "text, code",
    [
        ("{nope", "bad_json"),
        (b"\xff\xfe", "bad_json"),
        ("[1, 2]", "bad_json"),
        ('"start"', "bad_json"),
        ("{}", "bad_field"),
        ('{"type": 7}', "bad_field"),
        ('{"type": "dance"}', "unknown_type"),
        ('{"type": "hello"}', "unknown_type"),  # server-only type sent by a client
        ('{"type": "stop", "v": 2}', "bad_version"),
        ('{"type": "subscribe", "streams": "a"}', "bad_field"),
        ('{"type": "subscribe", "streams": [1]}', "bad_field"),
        ('{"type": "start"}', "bad_field"),
        ('{"type": "start", "sample_rate": "16000"}', "bad_field"),
        ('{"type": "start", "sample_rate": true}', "bad_field"),
        ('{"type": "start", "sample_rate": 0}', "bad_sample_rate"),
        ('{"type": "start", "sample_rate": -16000}', "bad_sample_rate"),
        ('{"type": "start", "sample_rate": 10000000}', "bad_sample_rate"),
        ('{"type": "start", "sample_rate": 16000, "format": "mp3"}', "bad_field"),
        ('{"type": "start", "sample_rate": 16000, "channels": 0}', "bad_field"),
        ('{"type": "start", "sample_rate": 16000, "channels": 99}', "bad_field"),
        ('{"type": "start", "sample_rate": 16000, "stream": "a b/c"}', "bad_field"),
        ('{"type": "start", "sample_rate": 16000, "stream": "' + "x" * 65 + '"}', "bad_field"),
    ],
)
def test_bad_client_messages(text, code):
    with pytest.raises(ProtocolError) as info:
        protocol.decode(text)
    assert info.value.code == code
    assert str(info.value)  # a readable message
    error = info.value.to_message().to_dict()
    assert error["type"] == "error" and error["code"] == code


def test_subscription_limit():
    streams = [f"s{i}" for i in range(protocol.MAX_SUBSCRIPTIONS + 1)]
    with pytest.raises(ProtocolError):
        protocol.decode(json.dumps({"type": "subscribe", "streams": streams}))


def test_subscribe_batch_ms_is_zero_or_in_range():
    decode = protocol.decode
    assert decode('{"type": "subscribe"}').batch_ms == 0
    assert decode('{"type": "subscribe", "batch_ms": 100}').batch_ms == 100
    for bad in ("5", "1001", "true", "1.5", '"100"'):
        with pytest.raises(ProtocolError) as info:
            decode(f'{{"type": "subscribe", "batch_ms": {bad}}}')
        assert info.value.code == "bad_field" and "batch_ms" in str(info.value)


def test_alerts_and_source_errors_decode_like_every_message():
    alert = protocol.Alert("CA1", "customer", "x", t=7.5, since=2.5, values={"arousal": 0.8})
    assert protocol.decode(alert.to_json(), protocol.SERVER_MESSAGES) == alert
    error = protocol.SourceError("mic", "device vanished", retry_in=1.0)
    assert protocol.decode(error.to_json(), protocol.SERVER_MESSAGES) == error
    for incomplete in ('{"type": "source_error"}', '{"type": "alert", "stream": "CA1"}'):
        with pytest.raises(ProtocolError):
            protocol.decode(incomplete, protocol.SERVER_MESSAGES)


def test_event_needs_its_identity():
    with pytest.raises(ProtocolError):
        protocol.decode('{"type": "event", "stream": "a"}', protocol.SERVER_MESSAGES)


def test_nan_is_refused_on_output():
    with pytest.raises(ValueError):
        protocol.encode({"type": "event", "valence": float("nan")})


def test_frame_bytes():
    assert protocol.Start(sample_rate=8000, format="s16le", channels=2).frame_bytes == 4
    assert protocol.Start(sample_rate=8000, format="f32le", channels=1).frame_bytes == 4
