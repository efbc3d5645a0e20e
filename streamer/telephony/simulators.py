"""Call simulators: the messages and frames Twilio, Genesys AudioHook and Asterisk AudioSocket
would send for a call with given 16 kHz tracks. Used by the tests, the benchmarks and demos."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator

import numpy as np
from emotion_monitor.streamer.audio import mulaw_encode, resample
from emotion_monitor.streamer.telephony.audiohook import RATE, VERSION
from emotion_monitor.streamer.telephony.audiosocket import KIND_HANGUP, KIND_UUID, SLIN_RATES, frame
from emotion_monitor.streamer.telephony.twilio import TWILIO_RATE


def twilio_call(
    call_sid: str,
    customer: np.ndarray | None,
    agent: np.ndarray | None = None,
    chunk_ms: int = 20,
    custom_parameters: dict[str, str] | None = None,
    stream_sid: str | None = None,
) -> Iterator[str]:
    """The JSON messages Twilio would send for a call with these 16 kHz tracks.

    Yields ``connected``, ``start``, interleaved ``media`` (inbound = customer, outbound =
    agent, ``chunk_ms`` each) and ``stop``. Both tracks are padded to the same length.
    """
    stream_sid = stream_sid or "MZ" + call_sid[2:]
    tracks = {name: a for name, a in (("inbound", customer), ("outbound", agent)) if a is not None}
    encoded = {k: mulaw_encode(resample(a, 16000, TWILIO_RATE)) for k, a in tracks.items()}
    n = max(len(v) for v in encoded.values())
    encoded = {k: v + b"\xff" * (n - len(v)) for k, v in encoded.items()}  # 0xff = mu-law zero
    seq = 1
    yield json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})
    seq += 1
    yield json.dumps(
        {
            "event": "start",
            "sequenceNumber": str(seq),
            "streamSid": stream_sid,
            "start": {
                "accountSid": "AC" + "0" * 32,
                "streamSid": stream_sid,
                "callSid": call_sid,
                "tracks": list(encoded),
                "mediaFormat": {
                    "encoding": "audio/x-mulaw",
                    "sampleRate": TWILIO_RATE,
                    "channels": 1,
                },
                "customParameters": custom_parameters or {},
            },
        }
    )
    step = TWILIO_RATE * chunk_ms // 1000
    for i, start in enumerate(range(0, n, step)):
        for name, data in encoded.items():
            seq += 1
            yield json.dumps(
                {
                    "event": "media",
                    "sequenceNumber": str(seq),
                    "streamSid": stream_sid,
                    "media": {
                        "track": name,
                        "chunk": str(i + 1),
                        "timestamp": str(start * 1000 // TWILIO_RATE),
                        "payload": base64.b64encode(data[start : start + step]).decode(),
                    },
                }
            )
    seq += 1
    yield json.dumps(
        {
            "event": "stop",
            "sequenceNumber": str(seq),
            "streamSid": stream_sid,
            "stop": {"accountSid": "AC" + "0" * 32, "callSid": call_sid},
        }
    )


def audiohook_open(
    session_id: str,
    conversation_id: str,
    channels: tuple[str, ...] = ("external", "internal"),
    seq: int = 1,
) -> dict:
    """An ``open`` message as Genesys Cloud sends it (with a mono fallback offer)."""
    return {
        "version": VERSION,
        "type": "open",
        "seq": seq,
        "serverseq": 0,
        "id": session_id,
        "position": "PT0S",
        "parameters": {
            "organizationId": "d7934305-0972-4844-938e-9060eef73d05",
            "conversationId": conversation_id,
            "participant": {
                "id": "883efee8-3d6c-4537-b500-6d7ca4b92fa0",
                "ani": "+1-555-555-1234",
                "aniName": "John Doe",
                "dnis": "+1-800-555-6789",
            },
            "media": [
                {"type": "audio", "format": "PCMU", "channels": list(channels), "rate": RATE},
                {"type": "audio", "format": "PCMU", "channels": ["external"], "rate": RATE},
            ],
            "language": "en-US",
        },
    }


def audiohook_frames(customer: np.ndarray, agent: np.ndarray, frame_ms: int = 100) -> list[bytes]:
    """Binary frames of interleaved PCMU (external, internal) from two 16 kHz tracks."""
    a = resample(customer, 16000, RATE)
    b = resample(agent, 16000, RATE)
    n = max(len(a), len(b))
    a, b = np.pad(a, (0, n - len(a))), np.pad(b, (0, n - len(b)))
    inter = np.frombuffer(mulaw_encode(np.stack([a, b], axis=1).reshape(-1)), np.uint8)
    step = RATE * frame_ms // 1000 * 2
    return [inter[i : i + step].tobytes() for i in range(0, len(inter), step)]


def audiosocket_call(
    call_id: uuid.UUID,
    samples: np.ndarray,
    kind: int = 0x10,
    frame_ms: int = 20,
    hangup: bool = True,
) -> Iterator[bytes]:
    """The frames Asterisk would send for 16 kHz ``samples``: UUID, slin frames, hangup."""
    rate = SLIN_RATES[kind]
    pcm = np.clip(np.round(resample(samples, 16000, rate) * 32767), -32768, 32767)
    data = pcm.astype("<i2").tobytes()
    step = rate * frame_ms // 1000 * 2
    yield frame(KIND_UUID, call_id.bytes)
    for start in range(0, len(data), step):
        yield frame(kind, data[start : start + step])
    if hangup:
        yield frame(KIND_HANGUP)
