"""``emotion-monitor analyze FILE``: the emotion timeline of a recording, plus ``POST /predict``.

A file of any length is read in blocks (soundfile, or an ffmpeg pipe for m4a/aac/...), resampled
chunk by chunk and pushed through the same :class:`Engine` as live audio, so memory for audio stays
constant. What grows is the timeline (one small entry per hop) kept for ``--json`` and ``--plot``.

Summary conventions (shared with ``report``, see :class:`~.events.SpeechTime`): "speech time" is
the stream time of the speech windows, each window counting only the audio it adds beyond the
previous one, so a file that is all speech has as much speech time as it lasts; "time per
quadrant" and the "dominant labels" split that time by each event's ``quadrant`` and smoothed
label (``label_smooth``), the values the dashboard shows. Mean valence/arousal average the
windows' own (unsmoothed) values.

For the HTTP endpoint, :func:`decode_upload` turns uploaded bytes into 16 kHz audio within size and
duration limits and :func:`predict_response` builds the JSON answer (see its docstring).
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from emotion_monitor.streamer.audio import (
    SAMPLE_RATE,
    AudioError,
    check_file_rate,
    ffmpeg_decode_cmd,
    resample,
    to_mono,
)
from emotion_monitor.streamer.events import NEUTRAL_RADIUS, SECTORS, Event, SpeechTime, quadrant
from emotion_monitor.streamer.settings import DEVICES, Settings

#: Upload limits of POST /predict (the server may pass its own).
MAX_UPLOAD_BYTES = 50 * 1024 * 1024
MAX_UPLOAD_SECONDS = 600.0
#: Seconds of audio read and pushed per block by ``analyze``: small blocks keep the resampler's
#: temporaries small (10 s blocks cost ~250 MB more peak memory at 44.1 kHz and ran slower).
BLOCK_SECONDS = 2.0


class UploadError(ValueError):
    """An uploaded file is refused: too big, too long, empty or undecodable (readable message)."""


# -- reading audio ----------------------------------------------------------------------------


def decode_upload(
    data: bytes,
    filename: str = "upload",
    max_bytes: int = MAX_UPLOAD_BYTES,
    max_seconds: float = MAX_UPLOAD_SECONDS,
) -> np.ndarray:
    """Decode an uploaded audio file to 16 kHz mono float32, refusing what breaks the limits.

    soundfile decodes from memory; other formats (m4a, aac, webm...) go through ffmpeg via a
    temporary file, decoding at most ``max_seconds`` + 1 s so a huge file cannot exhaust memory.
    Raises :class:`UploadError` with a message fit to show the user.
    """
    import soundfile as sf

    if not data:
        raise UploadError("the uploaded file is empty")
    if len(data) > max_bytes:
        raise UploadError(
            f"the uploaded file is {len(data) / 1e6:.3g} MB; the limit is {max_bytes / 1e6:.3g} MB"
        )
    too_long = f"{filename}: longer than the limit of {max_seconds:g} s"
    try:
        f = sf.SoundFile(io.BytesIO(data))
    except Exception:  # not a format libsndfile knows: try ffmpeg
        f = None
    if f is not None:
        with f:
            try:
                check_file_rate(filename, f.samplerate)
            except AudioError as exc:
                raise UploadError(str(exc)) from None
            if f.frames / f.samplerate > max_seconds:
                raise UploadError(too_long)
            samples = resample(to_mono(f.read(dtype="float32", always_2d=True)), f.samplerate)
    else:
        samples = _ffmpeg_decode_bytes(data, filename, max_seconds + 1.0)
        if len(samples) > max_seconds * SAMPLE_RATE:
            raise UploadError(too_long)
    if not len(samples):
        raise UploadError(f"{filename}: contains no audio samples")
    return samples


def _ffmpeg_decode_bytes(data: bytes, filename: str, max_seconds: float) -> np.ndarray:
    if shutil.which("ffmpeg") is None:
        raise UploadError(f"{filename}: not a wav/flac/ogg/mp3 file and ffmpeg is not installed")
    suffix = Path(filename).suffix
    # The suffix only helps ffmpeg guess; keep it harmless.
    suffix = suffix if suffix[1:].isalnum() and len(suffix) <= 8 else ""
    with tempfile.NamedTemporaryFile(suffix=suffix) as tmp:
        tmp.write(data)
        tmp.flush()
        proc = subprocess.run(
            ffmpeg_decode_cmd(tmp.name, max_seconds), capture_output=True, check=False
        )
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        reason = lines[-1].replace(tmp.name, filename) if lines else "ffmpeg failed"
        raise UploadError(f"{filename}: cannot decode this audio ({reason})")
    return np.frombuffer(proc.stdout[: len(proc.stdout) // 4 * 4], dtype="<f4").copy()


def min_samples(settings: Settings) -> int:
    """Fewest 16 kHz samples that give at least one window: a whole window, or the shortest
    tail the engine analyses (128 ms; below that no model sees enough audio)."""
    from emotion_monitor.streamer.engine import MIN_TAIL

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
    from emotion_monitor.streamer.engine import Engine

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


def plot_timeline(timeline: list[dict], summary: dict, out: str | Path, title: str = "") -> None:
    """Valence and arousal over time beside the circumplex (classes over time for class-only
    models, beside the label distribution); written as PNG with the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    speech = [e for e in timeline if e["speech"]]
    mid = np.array([(e["t0"] + e["t1"]) / 2 for e in speech])
    has_va = any(e["valence"] is not None for e in speech)
    fig, (ax, side) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [2.2, 1]})
    if has_va:
        for key, colour in (("valence", "tab:blue"), ("arousal", "tab:red")):
            raw = np.array([e[key] for e in speech], dtype=float)
            smooth = np.array(
                [np.nan if e[key + "_smooth"] is None else e[key + "_smooth"] for e in speech],
                dtype=float,
            )
            ax.scatter(mid, raw, s=8, color=colour, alpha=0.35)
            ax.plot(mid, smooth, color=colour, label=f"{key} (smoothed)")
        ax.set_ylim(-1.05, 1.05)
        ax.set_ylabel("value")
        # Circumplex as the dashboard draws it (app.js drawCircumplex): unit circle, NEUTRAL
        # disc, the eight 45-degree sector borders from the disc out, sector names. The points
        # are the smoothed valence/arousal, the values `quadrant` and time per quadrant use, so
        # a point lies in the region it was counted in (raw values can sit elsewhere).
        t = np.linspace(0, 2 * np.pi, 200)
        side.plot(np.cos(t), np.sin(t), color="0.7", lw=1)
        side.plot(NEUTRAL_RADIUS * np.cos(t), NEUTRAL_RADIUS * np.sin(t), color="0.7", lw=0.8)
        for a in np.radians(np.arange(0, 360, 45)):  # sector borders, from the disc out
            x, y = np.cos(a), np.sin(a)
            side.plot([NEUTRAL_RADIUS * x, x], [NEUTRAL_RADIUS * y, y], color="0.7", lw=0.8)
        for i, name in enumerate(SECTORS):
            a = np.radians(22.5 + 45 * i)
            side.text(
                0.82 * np.cos(a),
                0.82 * np.sin(a),
                name.lower(),
                ha="center",
                va="center",
                fontsize=7,
                color="0.4",
            )
        smooth_va = [e for e in speech if e["valence_smooth"] is not None]
        pts = side.scatter(
            [e["valence_smooth"] for e in smooth_va],
            [e["arousal_smooth"] for e in smooth_va],
            c=[(e["t0"] + e["t1"]) / 2 for e in smooth_va],
            cmap="viridis",
            s=14,
        )
        # after the points, on a pale box, so that points near the origin do not hide it
        side.text(
            0,
            0,
            "neutral",
            ha="center",
            va="center",
            fontsize=7,
            color="0.4",
            zorder=3,
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.75},
        )
        fig.colorbar(pts, ax=side, label="time (s)")
        side.set_xlim(-1.1, 1.1)
        side.set_ylim(-1.1, 1.1)
        side.set_aspect("equal")
        side.set_xlabel("valence")
        side.set_ylabel("arousal")
        side.set_title("circumplex\n(smoothed valence/arousal)", fontsize=10)
    else:
        labels = list(summary.get("mean_class_probabilities") or {})
        for lab in labels:
            ax.plot(mid, [e["classes"][lab] for e in speech], label=lab, lw=1)
        ax.set_ylim(0, 1)
        ax.set_ylabel("probability")
        dist = summary.get("label_distribution") or {}
        side.barh(list(dist)[::-1], list(dist.values())[::-1], color="tab:purple")
        side.set_xlabel("share of speech time")
        side.set_title("dominant label")
    ax.set_xlim(0, max(summary.get("duration_s", 0.0), 1e-3))
    ax.set_xlabel("time (s)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title or "emotion timeline")
    fig.tight_layout()
    fig.savefig(str(out), dpi=100)
    plt.close(fig)


# -- command line -----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``emotion-monitor analyze``."""
    parser.add_argument("file", help="audio file (wav, flac, ogg, mp3; m4a etc. through ffmpeg)")
    parser.add_argument(
        "--model",
        default=None,
        help="model spec (default, hf:..., vit-va:..., pooled:..., onnx:..., heads:DIR from "
        "`emotion-monitor train`, or a directory); see docs/published-models.md",
    )
    # default None: a --config file's `device` holds unless the flag is given
    parser.add_argument(
        "--device", choices=DEVICES, default=None, help="auto (default), cpu or cuda"
    )
    parser.add_argument(
        "--json", metavar="OUT", help="write summary and timeline as JSON ('-': stdout)"
    )
    parser.add_argument("--plot", metavar="OUT.png", help="write a timeline + circumplex plot")
    parser.add_argument("--window", type=float, default=None, help="window length, seconds")
    parser.add_argument("--hop", type=float, default=None, help="hop between windows, seconds")
    parser.add_argument("--no-vad", action="store_true", help="analyse every window, speech or not")
    parser.add_argument("--config", help="settings TOML file (flags override it)")


def _print_summary(path: str, model_name: str, s: dict, damage: list[str]) -> None:
    print(
        f"{path}: {s['duration_s']:.1f} s, speech {s['speech_s']:.1f} s "
        f"({s['speech_windows']}/{s['windows']} windows), model {model_name}"
    )
    print("  input: " + ", ".join(damage))
    if s["mean_valence"] is not None:
        print(
            f"  mean valence {s['mean_valence']:+.3f}  mean arousal {s['mean_arousal']:+.3f}"
            "  (per-window values; `report` averages the smoothed ones)"
        )
    if s["quadrant_s"]:
        print(
            "  time per quadrant: "
            # upper case, as the protocol's quadrant values and `report` print them
            + ", ".join(f"{q} {t:.1f} s" for q, t in s["quadrant_s"].items())
        )
    if s["label_distribution"]:
        print(
            "  dominant labels: "
            + ", ".join(f"{k} {v:.0%}" for k, v in s["label_distribution"].items())
        )


def main(args: argparse.Namespace) -> int:
    """Analyse one file; prints the summary, writes JSON / plot when asked. Returns 0, or 2 on
    an unreadable file, an unusable model or bad settings (message on stderr)."""
    from emotion_monitor.models import ModelError, load_model
    from emotion_monitor.streamer.run_command import input_damage
    from emotion_monitor.streamer.sources import FileSource

    try:
        flags = dict(window=args.window, hop=args.hop, model=args.model, device=args.device)
        if args.config:
            settings = Settings.from_toml(args.config, **flags)
        else:
            settings = Settings().replace(**flags)
        if args.no_vad:
            settings = settings.replace(vad=False)
        # The file source replaces NaN/Inf samples before resampling (and counts them), as `run`
        # does: resampled, one NaN would smear over the filter's taps.
        source = FileSource(args.file, realtime=False, block_seconds=BLOCK_SECONDS)
        model = load_model(settings.model, device=settings.device)
        decoded = 0

        def counted(blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
            nonlocal decoded
            for block in blocks:
                decoded += len(block)
                yield block

        timeline, summary, stats = run_blocks(counted(source), model, settings)
    except (AudioError, ModelError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not timeline:  # say why: "no audio" hid a file shorter than the shortest window
        print(f"error: {too_short_message(args.file, decoded, settings)}", file=sys.stderr)
        return 2
    report = {
        "file": str(args.file),
        "model": model.describe(),
        "settings": settings.to_dict(),
        "summary": summary,
        "engine": stats,
        "source": source.stats,
        "timeline": timeline,
    }
    if args.json == "-":
        json.dump(report, sys.stdout, indent=1)
        print()
    else:
        _print_summary(args.file, model.name, summary, input_damage(stats, source.stats))
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    if args.plot:
        plot_timeline(timeline, summary, args.plot, title=f"{Path(args.file).name} ({model.name})")
    return 0
