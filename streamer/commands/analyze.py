"""``emotion-monitor analyze FILE``: the emotion timeline of a recording.

A file of any length is read in blocks (soundfile, or an ffmpeg pipe for m4a/aac/...), resampled
chunk by chunk and pushed through the same engine as live audio (see
:mod:`emotion_monitor.streamer.analysis`), so memory for audio stays constant. What grows is the
timeline (one small entry per hop) kept for ``--json`` and ``--plot``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from emotion_monitor.models import ModelError
from emotion_monitor.streamer.analysis import input_damage, run_blocks, too_short_message
from emotion_monitor.streamer.audio import AudioError
from emotion_monitor.streamer.commands.options import (
    add_analysis_arguments,
    add_model_arguments,
    load_inference_model,
    report_outages,
    settings_from_args,
)
from emotion_monitor.streamer.plots import plot_timeline
from emotion_monitor.streamer.sources.files import FileSource

#: Seconds of audio read and pushed per block by ``analyze``: small blocks keep the resampler's
#: temporaries small (10 s blocks cost ~250 MB more peak memory at 44.1 kHz and ran slower).
BLOCK_SECONDS = 2.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``emotion-monitor analyze``."""
    parser.add_argument("file", help="audio file (wav, flac, ogg, mp3; m4a etc. through ffmpeg)")
    add_model_arguments(parser)
    parser.add_argument(
        "--json", metavar="OUT", help="write summary and timeline as JSON ('-': stdout)"
    )
    parser.add_argument("--plot", metavar="OUT.png", help="write a timeline + circumplex plot")
    add_analysis_arguments(parser)


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
    try:
        settings = settings_from_args(args)
        # The file source replaces NaN/Inf samples before resampling (and counts them), as `run`
        # does: resampled, one NaN would smear over the filter's taps.
        source = FileSource(args.file, realtime=False, block_seconds=BLOCK_SECONDS)
        model = load_inference_model(settings, args.inference)
        report_outages(model, lambda err: print(f"warning: {err.message}", file=sys.stderr))
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
