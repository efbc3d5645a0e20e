"""Files and raw PCM on stdin, paced like a live stream or as fast as possible."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
from emotion_monitor.streamer.audio import (
    SAMPLE_FORMATS,
    SAMPLE_RATE,
    AudioError,
    StreamResampler,
    pcm_to_float,
)
from emotion_monitor.streamer.decode import check_audio_path, iter_file_blocks
from emotion_monitor.streamer.protocol import MAX_CHANNELS, MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from emotion_monitor.streamer.sources.base import Item, Pacer, Source

log = logging.getLogger(__name__)


def _ffprobe_duration(path: Path) -> float | None:
    """Duration of a file ffmpeg can decode; raises AudioError with ffprobe's reason if not."""
    if shutil.which("ffprobe") is None:
        raise AudioError(f"{path}: cannot decode (not a soundfile format and ffmpeg is missing)")
    probe = "ffprobe -v error -select_streams a:0 -show_entries stream=codec_type:format=duration"
    cmd = [*probe.split(), "-of", "default=nw=1", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0 or "codec_type=audio" not in proc.stdout:
        lines = proc.stderr.strip().splitlines()
        reason = lines[-1].replace(f"{path}: ", "") if lines else "no audio stream found"
        raise AudioError(f"{path}: cannot decode: not a readable audio file ({reason})")
    for line in proc.stdout.splitlines():
        if line.startswith("duration="):
            try:
                return float(line.split("=", 1)[1])
            except ValueError:
                return None
    return None


class FileSource(Source):
    """An audio file, decoded block by block and paced in real time or as fast as possible.

    wav/flac/ogg/mp3 are read by soundfile; anything else (m4a, opus in webm, ...) through an
    ffmpeg pipe. The file is checked when the source is built, so a missing or undecodable file
    raises :class:`AudioError` naming the file and the reason before any model is loaded.

    Args:
        path: the file.
        realtime: pace chunks at the speed of the audio (a live stream) or deliver at once.
        block_seconds: chunk length.
        loop: start over at the end, forever (used by the demo).
        name: stream id; defaults to the file name.
    """

    def __init__(
        self,
        path: str | Path,
        realtime: bool = True,
        block_seconds: float = 0.1,
        loop: bool = False,
        name: str | None = None,
    ):
        super().__init__()
        self.path = Path(path)
        self.realtime = realtime
        self.block_seconds = block_seconds
        self.loop = loop
        self.name = name or self.path.name
        check_audio_path(self.path)
        try:
            info = sf.info(str(self.path))
            self.duration = info.frames / info.samplerate if info.samplerate else None
            if not info.frames or not info.samplerate:
                raise AudioError(f"{self.path}: contains no audio frames")
        except AudioError:
            raise
        except Exception:  # not a soundfile format (or a broken one): let ffmpeg try or explain
            self.duration = _ffprobe_duration(self.path)
        self.stats = {"nonfinite_samples": 0}

    def describe(self) -> str:
        """``file:`` and the file's name (not its whole path)."""
        return f"file:{self.path.name}"

    def __iter__(self) -> Iterator[Item]:
        pacer = Pacer(self.realtime, self._stop)
        done = 0
        while not self.stopped:
            for chunk in iter_file_blocks(self.path, self.block_seconds, prepare=self._mono):
                if self.stopped:
                    return
                if len(chunk) == 0:
                    continue
                done += len(chunk)
                pacer.wait_until(done)
                yield chunk
            if not self.loop:
                return


# -- stdin -------------------------------------------------------------------------------------


class StdinSource(Source):
    """Raw interleaved PCM from a binary stream (stdin by default), at any rate and channel count.

    Args:
        fp: the byte stream; ``sys.stdin.buffer`` when ``None``.
        rate: sample rate of the incoming PCM, in the range ``/ingest`` accepts
            (:data:`~.protocol.MIN_SAMPLE_RATE`..:data:`~.protocol.MAX_SAMPLE_RATE`, resampled
            to 16 kHz).
        channels: interleaved channels (averaged to mono), 1..:data:`~.protocol.MAX_CHANNELS`
            like ``/ingest``.
        sample_format: ``"s16le"`` or ``"f32le"``.
        block_seconds: largest chunk handed on at once.

    Raises:
        AudioError: an unknown format, a rate or channel count out of range (at construction),
        or a stream that ends in the middle of a frame (at the end of the iteration).
    """

    def __init__(
        self,
        fp: BinaryIO | None = None,
        rate: int = SAMPLE_RATE,
        channels: int = 1,
        sample_format: str = "s16le",
        block_seconds: float = 0.1,
        name: str = "stdin",
    ):
        super().__init__()
        if sample_format not in SAMPLE_FORMATS:
            raise AudioError(
                f"stdin: unknown sample format {sample_format!r}; use one of {SAMPLE_FORMATS}"
            )
        if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
            # e.g. 1 Hz would turn 64 kB of input into hours of audio to analyse
            raise AudioError(
                f"stdin: sample rate {rate} Hz is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz"
            )
        if not 1 <= channels <= MAX_CHANNELS:
            # the limit /ingest has: more is almost surely a wrong flag (a rate, a byte count)
            raise AudioError(f"stdin: channel count {channels} is outside 1..{MAX_CHANNELS}")
        self.fp = fp
        self.rate, self.channels, self.sample_format = rate, channels, sample_format
        self.frame_bytes = (2 if sample_format == "s16le" else 4) * channels
        self.block_bytes = self.frame_bytes * max(1, int(block_seconds * rate))
        self.name = name
        self.close_timeout = 0.0  # a read blocked on an open pipe cannot be interrupted anyway
        self.stats = {"bytes": 0, "nonfinite_samples": 0}

    def __iter__(self) -> Iterator[Item]:
        if self.fp is None:
            # os.read on the descriptor returns what the pipe has (low latency) and holds no
            # Python-level lock, so a read still blocked at exit cannot hang interpreter shutdown.
            fd = sys.stdin.fileno()

            def read(n: int) -> bytes:
                return os.read(fd, n)
        else:
            read = getattr(self.fp, "read1", self.fp.read)
        resampler = StreamResampler(self.rate, SAMPLE_RATE)
        pending = b""
        checked_range = False
        while not self.stopped:
            data = read(self.block_bytes)
            if not data:
                break
            self.stats["bytes"] += len(data)
            pending += data
            whole = len(pending) - len(pending) % self.frame_bytes
            if not whole:
                continue
            frames = pcm_to_float(pending[:whole], self.sample_format, self.channels)
            pending = pending[whole:]
            if not checked_range and self.sample_format == "f32le" and len(frames) >= 256:
                checked_range = True
                self._warn_if_not_float(frames)
            yield resampler.process(self._mono(frames))
        if self.stopped:
            return
        yield resampler.flush()
        if pending:
            raise AudioError(
                f"stdin: the stream ended with {len(pending)} byte(s) that do not make a whole "
                f"{self.sample_format} frame of {self.channels} channel(s); "
                "check --format and --channels"
            )

    def _warn_if_not_float(self, frames: np.ndarray) -> None:
        # s16le read as f32le decodes to huge or tiny garbage values; say so once.
        finite = np.abs(frames[np.isfinite(frames)])
        if finite.size and np.mean((finite > 2.0) | ((finite < 1e-30) & (finite > 0))) > 0.25:
            log.warning(
                "stdin: f32le samples are mostly outside [-1, 1]; is the input s16le? "
                "(use --format s16le)"
            )


# -- microphone --------------------------------------------------------------------------------
