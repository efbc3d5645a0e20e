"""``emotion-monitor report FILE.sqlite``: per-call summaries of a recording made with
``serve --record`` (and a plot of the calls)."""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys

from emotion_monitor.streamer.plots import plot_calls
from emotion_monitor.streamer.recorder import call_timelines, summarize


def format_summary(s: dict) -> str:
    """Human-readable text of one :func:`summarize` entry."""
    lines = [
        f"call {s['stream']}  ({s['duration']:.1f} s"
        + (f", {s['meta'].get('source')}" if s["meta"].get("source") else "")
        + ")"
    ]
    for track, t in s["tracks"].items():
        lines.append(
            f"  {track}: speech {t['speech_s']:.1f} s, {t['events']} windows"
            + (f", mostly {t['label']}" if t["label"] else "")
        )
        if "valence_mean" in t:
            lines.append(
                f"    smoothed valence mean {t['valence_mean']:+.2f} "
                f"(low {t['valence_low']['value']:+.2f}"
                f" at {t['valence_low']['t']:.1f} s), arousal mean {t['arousal_mean']:+.2f} "
                f"(peak {t['arousal_peak']['value']:+.2f} at {t['arousal_peak']['t']:.1f} s)"
            )
        if t["quadrants_s"]:
            lines.append(
                "    time per quadrant: "
                + ", ".join(f"{q} {sec:.1f} s" for q, sec in t["quadrants_s"].items())
            )
    cust, agent = s["tracks"].get("customer"), s["tracks"].get("agent")
    if cust and agent and "valence_mean" in cust and "valence_mean" in agent:
        lines.append(
            f"  customer vs agent: valence {cust['valence_mean'] - agent['valence_mean']:+.2f}, "
            f"arousal {cust['arousal_mean'] - agent['arousal_mean']:+.2f}"
        )
    if s["alerts"]:
        for a in s["alerts"]:
            lines.append(
                f"  ALERT {a['name']} on {a['track']} at {a['t']:.1f} s (since {a['since']:.1f} s)"
            )
    else:
        lines.append("  no alerts")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``emotion-monitor report``."""
    parser.add_argument("recording", help="SQLite file written by 'serve --record'")
    parser.add_argument("--stream", help="only this call (stream id)")
    parser.add_argument("--plot", metavar="OUT.png", help="draw the timeline to this image")
    parser.add_argument("--json", action="store_true", help="print the summaries as JSON")


def main(args: argparse.Namespace) -> int:
    """Print the per-call summaries (and draw the plot)."""
    try:
        summaries = summarize(args.recording, args.stream)
    except FileNotFoundError as exc:
        print(f"report: {exc}", file=sys.stderr)
        return 2
    except sqlite3.Error as exc:  # not SQLite at all, or SQLite without our tables
        print(
            f"report: {args.recording}: not a recording ({exc}); report reads the SQLite file "
            "that 'serve --record FILE.sqlite' writes",
            file=sys.stderr,
        )
        return 2
    if not summaries:
        print(
            "report: no calls" + (f" with stream id {args.stream!r}" if args.stream else ""),
            file=sys.stderr,
        )
        return 1
    if args.json:
        print(json.dumps(summaries, indent=2))
    else:
        print("\n\n".join(format_summary(s) for s in summaries))
    if args.plot:
        n = plot_calls(call_timelines(args.recording, args.stream), args.plot)
        print(f"timeline of {n} call(s) written to {args.plot}", file=sys.stderr)
    return 0
