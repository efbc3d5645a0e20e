"""The analysis of a whole recording, shared by ``analyze``, ``POST /predict`` and ``report``:
the timeline, the summary and its conventions.

Summary conventions (shared with ``report``, see :class:`SpeechTime`): "speech time" is the
stream time of the speech windows, each window counting only the audio it adds beyond the
previous one, so a file that is all speech has as much speech time as it lasts; "time per
quadrant" and the "dominant labels" split that time by each event's ``quadrant`` and smoothed
label (``label_smooth``), the values the dashboard shows. Mean valence/arousal average the
windows' own (unsmoothed) values.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from typing import Any

import numpy as np
from emotion_monitor.streamer.audio import SAMPLE_RATE
from emotion_monitor.streamer.decode import UploadError
from emotion_monitor.streamer.engine import MIN_TAIL, Engine
from emotion_monitor.streamer.protocol import Event
from emotion_monitor.streamer.quadrant import quadrant
from emotion_monitor.streamer.settings import Settings


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


def min_samples(settings: Settings) -> int:
    """Fewest 16 kHz samples that give at least one window: a whole window, or the shortest
    tail the engine analyses (128 ms; below that no model sees enough audio)."""
    return min(int(round(settings.window * SAMPLE_RATE)), MIN_TAIL)


def too_short_message(name: str, n_samples: int, settings: Settings) -> str:
    """Why audio of ``n_samples`` (16 kHz) gave no window: how long it is versus the minimum."""
    if not n_samples:
        return f"{name}: contains no audio samples"
    return (
        f"{name}: too short to analyse: {n_samples / SAMPLE_RATE:.3f} s of audio, "
        f"at least {min_samples(settings) / SAMPLE_RATE:.3f} s is needed"
    )


# -- timeline and summary ---------------------------------------------------------------------


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(float(x), nd)


def timeline_entry(ev: Event) -> dict:
    """The compact, JSON-able view of one event kept in timelines."""
    return {
        "t0": _r(ev.t0, 3),
        "t1": _r(ev.t1, 3),
        "speech": ev.speech,
        "speech_prob": _r(ev.speech_prob),
        "valence": _r(ev.valence),
        "arousal": _r(ev.arousal),
        "label": ev.label,
        "confidence": _r(ev.confidence),
        "classes": None if ev.classes is None else {k: _r(v) for k, v in ev.classes.items()},
        "valence_smooth": _r(ev.valence_smooth),
        "arousal_smooth": _r(ev.arousal_smooth),
        "label_smooth": ev.label_smooth,
        "quadrant": ev.quadrant,
    }


class Summary:
    """Running totals over events (constant memory); :meth:`result` gives the summary dict."""

    def __init__(self) -> None:
        self.windows = self.speech_windows = 0
        self.duration = 0.0
        self.va_n = 0
        self.v_sum = self.a_sum = 0.0
        self.time = SpeechTime()
        self.class_sums: dict[str, float] = {}
        self.class_n = 0

    def add(self, ev: Event) -> None:
        """Account for one event (in stream order)."""
        self.windows += 1
        self.duration = max(self.duration, ev.t1)
        self.time.add(vars(ev))  # the event's own fields, not a copy
        if not ev.speech:
            return
        self.speech_windows += 1
        if ev.valence is not None and ev.arousal is not None:
            self.va_n += 1
            self.v_sum += ev.valence
            self.a_sum += ev.arousal
        if ev.classes:
            self.class_n += 1
            for k, v in ev.classes.items():
                self.class_sums[k] = self.class_sums.get(k, 0.0) + v

    def result(self) -> dict:
        """Speech time, mean valence/arousal, time per quadrant, dominant-label distribution."""
        speech_s = self.time.total
        return {
            "duration_s": round(self.duration, 3),
            "windows": self.windows,
            "speech_windows": self.speech_windows,
            "speech_s": round(speech_s, 3),
            "mean_valence": _r(self.v_sum / self.va_n) if self.va_n else None,
            "mean_arousal": _r(self.a_sum / self.va_n) if self.va_n else None,
            "quadrant_s": {q: round(t, 3) for q, t in self.time.per_quadrant.most_common()},
            "label_distribution": {
                k: _r(t / speech_s) for k, t in self.time.per_label.most_common()
            },
            "mean_class_probabilities": {
                k: _r(v / self.class_n)
                for k, v in sorted(self.class_sums.items(), key=lambda kv: -kv[1])
            }
            if self.class_n
            else None,
        }


def run_blocks(
    blocks: Iterable[np.ndarray], model, settings: Settings, stream: str = "file"
) -> tuple[list[dict], dict, dict]:
    """Push audio blocks through a fresh engine; returns (timeline, summary, engine stats)."""
    engine = Engine(model, settings)
    summary = Summary()
    timeline: list[dict] = []

    def take(events: list[Event]) -> None:
        for ev in events:
            summary.add(ev)
            timeline.append(timeline_entry(ev))

    pushed = False
    for block in blocks:
        if len(block):
            take(engine.push(stream, block))
            pushed = True
    if pushed:
        take(engine.flush(stream))
    return timeline, summary.result(), dict(engine.stats)


def predict_response(
    samples_16k: np.ndarray, model, settings: Settings, name: str = "upload"
) -> dict:
    """The JSON answer of ``POST /predict`` for one decoded upload (``name``: for messages).

    ``results`` lists ``{"label", "score"}`` by descending score: for a model with classes, the
    class probabilities averaged over the speech windows; for a valence/arousal-only model (ViT),
    the circumplex quadrants (lower-case, as the engine labels such windows) with the share of
    speech windows falling in each. ``dominant`` is ``results[0]``. ``valence``/``arousal`` are
    means over speech windows (``None`` when the model has no such output). Without any speech,
    ``results`` is empty and ``dominant``, ``valence``, ``arousal`` are ``None``: no emotion is
    invented for silence. ``timeline`` has one entry per window (see :func:`timeline_entry`).
    Raises :class:`UploadError` when the audio is too short for a single window.
    """
    samples = np.asarray(samples_16k, dtype=np.float32).reshape(-1)
    timeline, summary, _ = run_blocks([samples], model, settings, stream="predict")
    if not timeline:  # an empty answer would read as "no speech"; the audio was too short
        raise UploadError(too_short_message(name, len(samples), settings))
    if summary["mean_class_probabilities"]:
        scores = summary["mean_class_probabilities"]
    else:  # valence/arousal only: share of speech windows per quadrant of the window's own point
        points = [e for e in timeline if e["speech"] and e["valence"] is not None]
        counts: dict[str, int] = {}
        for e in points:
            q = quadrant(e["valence"], e["arousal"]).lower()
            counts[q] = counts.get(q, 0) + 1
        scores = {q: round(c / len(points), 4) for q, c in counts.items()}
    results = [{"label": k, "score": v} for k, v in sorted(scores.items(), key=lambda kv: -kv[1])]
    return {
        "results": results,
        "dominant": results[0] if results else None,
        "valence": summary["mean_valence"],
        "arousal": summary["mean_arousal"],
        "speech_s": summary["speech_s"],
        "duration_s": round(len(samples) / SAMPLE_RATE, 3),
        "model": getattr(model, "name", "model"),
        "timeline": timeline,
    }


# -- plot -------------------------------------------------------------------------------------


def input_damage(engine_stats: dict, source_stats: dict) -> list[str]:
    """What was wrong with the input, for a summary (``run`` and ``analyze``): the NaN/Inf
    samples replaced by silence (by the source before resampling, or by the engine) and the
    windows with clipped samples."""
    nonfinite = engine_stats["nonfinite_samples"] + source_stats.get("nonfinite_samples", 0)
    return [
        f"{nonfinite} NaN/Inf samples replaced by silence",
        f"{engine_stats['clipped_windows']} clipped windows",
    ]
