"""The demo: a dialogue of a calm and an agitated voice synthesized with espeak-ng."""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf
from emotion_monitor.streamer.audio import (
    SAMPLE_RATE,
    AudioError,
)
from emotion_monitor.streamer.decode import load_audio
from emotion_monitor.streamer.sources.files import FileSource

log = logging.getLogger(__name__)

DEMO_DIALOGUE: tuple[tuple[str, int, int, int], ...] = (
    ("Hello, thank you for calling. Please take your time, there is no rush at all.", 140, 35, 70),
    (
        "This is the third time I am calling! Nothing works and nobody fixes it! "
        "I want this sorted out right now!",
        210,
        80,
        110,
    ),
    ("I understand. Let us go through it together, calmly, one step at a time.", 130, 30, 60),
    ("No! I have waited for two weeks! This is completely unacceptable!", 220, 90, 110),
)


def synthesize_speech(
    text: str,
    path: str | Path,
    speed: int = 160,
    pitch: int = 50,
    amplitude: int = 100,
    voice: str = "en",
) -> Path:
    """Speak ``text`` with espeak-ng into a wav file (22.05 kHz mono) and return its path.

    ``speed`` is words per minute, ``pitch`` 0-99, ``amplitude`` 0-200.
    """
    if shutil.which("espeak-ng") is None:
        raise AudioError("speech synthesis needs espeak-ng (Debian: apt install espeak-ng)")
    path = Path(path)
    cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-a", str(amplitude)]
    cmd += ["-w", str(path), text]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0 or not path.exists():
        raise AudioError(f"espeak-ng failed: {proc.stderr.strip() or proc.returncode}")
    return path


def make_demo_dialogue(folder: str | Path, pause: float = 0.8) -> Path:
    """Synthesize :data:`DEMO_DIALOGUE` into ``folder/demo_dialogue.wav`` (16 kHz mono)."""
    folder = Path(folder)
    gap = np.zeros(int(pause * SAMPLE_RATE), np.float32)
    parts = []
    for i, (text, speed, pitch, amp) in enumerate(DEMO_DIALOGUE):
        clip = synthesize_speech(text, folder / f"line{i}.wav", speed, pitch, amp)
        parts += [load_audio(clip), gap]
    out = folder / "demo_dialogue.wav"
    sf.write(str(out), np.concatenate(parts), SAMPLE_RATE, subtype="PCM_16")
    return out


class DemoSource(FileSource):
    """The synthesized demo dialogue, generated into ``folder``; by default played in real time
    in a loop, like a live stream."""

    def __init__(self, folder: str | Path, loop: bool = True, realtime: bool = True):
        super().__init__(make_demo_dialogue(folder), realtime=realtime, loop=loop, name="demo")

    def describe(self) -> str:
        """``demo``."""
        return "demo"
