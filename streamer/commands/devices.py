"""``emotion-monitor devices``: list the audio input devices PortAudio can see."""

from __future__ import annotations

import argparse
import json
import sys

from emotion_monitor.streamer.sources.mic import list_input_devices


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``emotion-monitor devices``."""
    p.add_argument("--json", action="store_true", help="print the list as JSON")


def main(args: argparse.Namespace) -> int:
    """Print index, name, channels, default rate and a ``*`` on the default input device."""
    try:
        devices = list_input_devices()
    except OSError as exc:  # sounddevice raises OSError when libportaudio is missing
        print(
            f"error: PortAudio is not available ({exc}); on Debian: apt install libportaudio2",
            file=sys.stderr,
        )
        return 1
    if args.json:
        print(json.dumps(devices, indent=2))
        return 0
    if not devices:
        print(
            "no input devices found (no sound card, or the sound server is not running); "
            "`emotion-monitor run` without --source will play the demo",
            file=sys.stderr,
        )
        return 0
    print(f"{'':2}{'index':>5}  {'name':<40} {'channels':>8} {'default rate':>12}  host API")
    for d in devices:
        mark = "*" if d["default"] else " "
        print(
            f"{mark:2}{d['index']:>5}  {d['name']:<40.40} {d['channels']:>8} "
            f"{d['default_rate']:>12.0f}  {d['hostapi']}"
        )
    print("* default input; use --device INDEX or --device NAME with `emotion-monitor run`")
    return 0
