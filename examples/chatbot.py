"""A voice chatbot that adapts its tone to how the user sounds.

Two ways to get the emotion of a user's turn:

- in-process (default): the engine runs inside the bot, ``Monitor.analyze`` returns the events
  of each recorded turn;
- remote (``--server ws://host:8765``): the bot follows a live call on a running
  ``emotion-monitor serve`` (e.g. a Twilio call) and reacts to its alerts.

    python examples/chatbot.py                       # two RAVDESS clips as user turns
    python examples/chatbot.py turn1.wav turn2.wav --model default
    python examples/chatbot.py --server ws://127.0.0.1:8765 --call CA0123...
    EMOTION_MONITOR_TOKEN=... python examples/chatbot.py --server wss://host:8765 --call CA01...
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import numpy as np
from emotion_monitor.streamer.api import Monitor
from emotion_monitor.streamer.protocol import Alert, Event

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared/datasets/ravdess_speech_16k"


def choose_style(events: list[Event]) -> str:
    """Pick a reply style from a turn's speech events (smoothed valence and arousal)."""
    speech = [e for e in events if e.speech and e.valence_smooth is not None]
    if not speech:
        return "neutral (no speech heard)"
    valence = float(np.mean([e.valence_smooth for e in speech]))
    arousal = float(np.mean([e.arousal_smooth for e in speech]))
    if valence < -0.2 and arousal > 0.3:
        return f"calm and apologetic, offer a human agent (v={valence:+.2f}, a={arousal:+.2f})"
    if valence < -0.2:
        return f"warm and patient (v={valence:+.2f}, a={arousal:+.2f})"
    if arousal > 0.3:
        return f"upbeat, match the energy (v={valence:+.2f}, a={arousal:+.2f})"
    return f"friendly and concise (v={valence:+.2f}, a={arousal:+.2f})"


async def run_turns(monitor: Monitor, turns: list[np.ndarray]) -> list[str]:
    """Analyse each user turn (16 kHz mono float32) and return the chosen reply styles."""
    styles = []
    for i, samples in enumerate(turns):
        events = await monitor.analyze(f"turn-{i}", samples)
        styles.append(choose_style(events))
    return styles


async def follow_call(url: str, call: str, token: str | None = None) -> None:
    """React to a live call's alerts from a running server (stops when the call ends);
    ``token``: the server's access token, if it runs with one."""
    from emotion_monitor.streamer.client import subscribe

    async for item in subscribe(url, streams=[call], until_ended=True, token=token):
        if isinstance(item, Alert):
            print(f"[{item.t:6.1f} s] {item.name} on {item.track}: switch to a calmer script")
        elif isinstance(item, Event) and item.speech and item.track == "customer":
            print(f"[{item.t1:6.1f} s] customer sounds {item.quadrant}")


def default_turns() -> list[Path]:
    return [
        SAMPLES / "Actor_19/03-01-05-02-01-01-19.flac",  # angry
        SAMPLES / "Actor_19/03-01-03-02-01-01-19.flac",
    ]  # happy


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", help="audio files, one per user turn")
    parser.add_argument("--model", default=None, help="model spec (default: the shipped model)")
    parser.add_argument("--server", help="follow a live call on this server instead")
    parser.add_argument("--call", help="stream id of the call to follow (with --server)")
    parser.add_argument(
        "--token",
        default=os.environ.get("EMOTION_MONITOR_TOKEN"),
        help="the server's access token (default: $EMOTION_MONITOR_TOKEN)",
    )
    args = parser.parse_args(argv)
    if args.server:
        if not args.call:
            parser.error("--server needs --call")
        await follow_call(args.server, args.call, args.token)
        return 0
    from emotion_monitor.streamer.decode import load_audio

    files = [Path(f) for f in args.files] or default_turns()
    async with Monitor(model=args.model) as monitor:
        styles = await run_turns(monitor, [load_audio(f) for f in files])
    for f, style in zip(files, styles, strict=True):
        print(f"{f.name}: reply {style}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
