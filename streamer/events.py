"""Events the engine produces: plain dataclasses that serialise to protocol-v1 JSON."""

from __future__ import annotations

import collections
import dataclasses
import math
from dataclasses import dataclass
from typing import Any

PROTOCOL_VERSION = 1

#: Circumplex sectors in the order :func:`quadrant` uses: 45 degrees each, counter-clockwise from
#: positive valence. web_dashboard/static/app.js mirrors this list (SECTORS) to draw them.
SECTORS = ("HAPPY", "EXCITED", "TENSE", "ANGRY", "SAD", "BORED", "CALM", "CONTENT")
#: Every value :func:`quadrant` returns: the eight sectors, then the central zone.
QUADRANTS = (*SECTORS, "NEUTRAL")
#: Points closer than this to the origin are NEUTRAL rather than a sector: near the origin the
#: angle, and so the sector, flips with noise. On the default model the smoothed values of neutral
#: RAVDESS speech mostly lie within 0.2 of the origin. Calm speech of the 6 test actors (calm clips
#: only): for 4 of them the mean smoothed radius is 0.30-0.46, outside the disc, but the other two
#: read close to neutral (mean radius 0.14 and 0.16) and land inside it; 0.25 keeps most neutral
#: speech in and most calm speech out, not all of it. web_dashboard/static/app.js mirrors it
#: (NEUTRAL_RADIUS) to draw the disc.
NEUTRAL_RADIUS = 0.25


def quadrant(valence: float | None, arousal: float | None) -> str | None:
    """Name the circumplex region of a (valence, arousal) point in [-1, 1]^2.

    Points closer than :data:`NEUTRAL_RADIUS` to the origin are NEUTRAL. The rest of the plane
    is cut into eight 45-degree sectors around the origin, counter-clockwise from positive
    valence (:data:`SECTORS`): HAPPY (pleasant, slightly aroused), EXCITED (pleasant, highly
    aroused), TENSE (unpleasant, highly aroused), ANGRY (unpleasant, aroused), SAD (unpleasant,
    slightly deactivated), BORED (deactivated), CALM (deactivated but pleasant), CONTENT
    (pleasant, relaxed). ``None`` for either coordinate gives ``None``.
    """
    if valence is None or arousal is None:
        return None
    if math.hypot(valence, arousal) < NEUTRAL_RADIUS:
        return "NEUTRAL"
    angle = math.degrees(math.atan2(arousal, valence)) % 360
    return SECTORS[int(angle // 45) % 8]


class SpeechTime:
    """Speech time of one track, in total, per quadrant and per label (``analyze``, ``report``).

    Feed the track's events in stream order. Each event accounts for the stream time its window
    adds beyond the previous event's window: the first window all of it, the next ones one hop
    (the flushed tail window, the audio left). Windows overlap, so counting whole windows would
    count audio several times, and counting one hop per window would miss the first window's
    ``window - hop`` seconds (a 2.4 s clip of speech would be 1.0 s of speech). Speech time is
    the stream time accounted for by speech windows; for a track that is all speech it equals the
    track's length.

    That time goes to the event's ``quadrant`` and to its smoothed label ``label_smooth``: the
    values the dashboard and ``run`` show. A model without classes has no smoothed label, so its
    window's own ``label`` (its quadrant in lower case) counts instead.
    """

    def __init__(self) -> None:
        self.total = 0.0
        self.per_quadrant: collections.Counter[str] = collections.Counter()
        self.per_label: collections.Counter[str] = collections.Counter()
        self._end: float | None = None

    def add(self, event: Any) -> None:
        """Account for one event: a protocol dict, or anything indexable by its field names (a
        SQLite row) with ``t0``, ``t1``, ``speech``, ``quadrant``, ``label_smooth``, ``label``."""
        t0, t1 = event["t0"], event["t1"]
        start = t0 if self._end is None else max(t0, self._end)
        self._end = t1 if self._end is None else max(self._end, t1)
        if not event["speech"] or t1 <= start:
            return
        self.total += t1 - start
        if event["quadrant"]:
            self.per_quadrant[event["quadrant"]] += t1 - start
        label = event["label_smooth"] or event["label"]
        if label:
            self.per_label[label] += t1 - start


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
