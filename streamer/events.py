"""Events the engine produces: plain dataclasses that serialise to protocol-v1 JSON."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

PROTOCOL_VERSION = 1

#: Circumplex quadrants, by (valence sign, arousal band). Arousal has three bands per half so that
#: the eight names of the issue cover the plane: high, mid-high, mid-low, low.
QUADRANTS = ("HAPPY", "EXCITED", "CALM", "CONTENT", "SAD", "BORED", "TENSE", "ANGRY")


def quadrant(valence: float | None, arousal: float | None) -> str | None:
    """Name the circumplex region of a (valence, arousal) point in [-1, 1]^2.

    The plane is cut into eight 45-degree sectors around the origin, counter-clockwise from
    positive valence: HAPPY (pleasant, slightly aroused), EXCITED (pleasant, highly aroused),
    TENSE (unpleasant, highly aroused), ANGRY (unpleasant, aroused), SAD (unpleasant, slightly
    deactivated), BORED (deactivated), CALM (deactivated but pleasant), CONTENT (pleasant, relaxed).
    """
    if valence is None or arousal is None:
        return None
    angle = math.degrees(math.atan2(arousal, valence)) % 360
    sectors = ("HAPPY", "EXCITED", "TENSE", "ANGRY", "SAD", "BORED", "CALM", "CONTENT")
    return sectors[int(angle // 45) % 8]


@dataclass
class Event:
    """One analysed window of one track of one stream.

    Times are seconds of stream time (samples / 16 kHz since the stream started). For a window
    without speech, ``speech`` is False and the raw emotion fields are ``None``: the engine never
    invents an emotion for silence or noise. Smoothed fields keep the last speech state.
    """

    stream: str
    track: str
    seq: int
    t0: float
    t1: float
    speech: bool
    speech_prob: float
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
    type: str = "event"

    def to_dict(self) -> dict:
        """JSON-able dict with the protocol version."""
        d = dataclasses.asdict(self)
        d["v"] = PROTOCOL_VERSION
        return d

    @classmethod
    def from_dict(cls, data: dict) -> Event:
        """Inverse of :meth:`to_dict`; unknown keys are ignored for forward compatibility."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class SourceError:
    """A source failed (e.g. the microphone vanished); the source retries with backoff."""

    stream: str
    message: str
    retry_in: float | None = None
    type: str = "source_error"

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["v"] = PROTOCOL_VERSION
        return d
